"""`larder bridge`: MQTT (contract 1) -> validated, enriched record batches on Kafka, or the dead-letter topic.

How a reading travels, and why nothing is lost when any process dies:

1. paho's network thread receives QoS 1 messages (manual ack: the broker keeps them as unacknowledged) and
   appends every ``(topic, payload, mid, qos, dup)`` it decoded from one socket read to a list, under one
   lock (:mod:`pipeline.ingest.mqttclient`). That is all it does with them.
2. The first message into an empty list wakes the asyncio side, which waits ``linger_ms`` for more (an idle
   bridge does not poll) and then swaps the whole list out in one step, validates each payload
   (:mod:`pipeline.ingest.validate`), enriches it from the registry, and groups readings by their partition,
   ``murmur2(device) mod partitions``. Each group becomes one Kafka record (``RecordBatch``) produced to its
   explicit partition by an idempotent ``acks=all`` producer; refusals become dead letters.
3. Once Kafka acknowledged every record of a tick, the tick's messages are acknowledged to the broker
   (``client.ack(mid, qos)``). A crash before that point makes the broker redeliver them to the persistent
   session: duplicates are possible (the worker de-duplicates by (device, seq)), losses are not.

The broker does not bound a manual-ack client's unacknowledged messages, so the bridge does: past
``max_inflight`` messages or ``max_inflight_bytes`` of payload (an upload carries up to 1,000 readings) the
paho thread waits in its callback, which stops it reading the socket (TCP back-pressure); the bounds are
exceeded by at most one socket read's worth of messages (256 KiB).

Retiring an instance (``retire=True``, ``larder bridge --retire``): a bridge keeps its persistent session when
it stops, so that it finds its queue when it restarts; an instance that will not come back would keep
collecting its share of every reading. Retiring logs in as the instance, unsubscribes (the broker routes
nothing new to it), forwards what its session had queued through the same path as above until nothing has
arrived for ``idle_s`` and every reading is acknowledged, then drops the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import struct
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.contracts.models import MQTT_READINGS_TOPIC, topic_id
from pipeline.contracts.records import dead_letter_value as dead_letter
from pipeline.contracts.records import mqtt_dead_letter, readings_value
from pipeline.ingest import metrics, rapidmqtt
from pipeline.ingest.mqttclient import BufferedClient, Publish
from pipeline.ingest.registry import ReloadingRegistry
from pipeline.ingest.validate import BAD_TOPIC, INVALID, UNKNOWN_DEVICE, Refusal, validate_device_payload
from pipeline.partitioner import partition_for
from pipeline.producer import durable_producer, until_kafka_takes
from pipeline.settings import Settings
from pipeline.topics import Topics

log = logging.getLogger(__name__)

SUBSCRIPTION = MQTT_READINGS_TOPIC.format(device="+")


def device_of(topic: str) -> str | None:
    return topic_id(MQTT_READINGS_TOPIC, topic)


_PUBACK = struct.Struct("!BBH")


def ack_many(client: mqtt.Client, mids: list[int]) -> None:
    """PUBACK many QoS 1 messages with one queued write.

    ``client.ack(mid, 1)`` queues one 4-byte packet and wakes paho's thread through its socket pair, per
    message: a syscall and a thread hand-off each. PUBACKs are plain concatenable frames on the wire, so the
    whole tick's acks go out as one buffer. Falls back to ``ack()`` if paho's internals ever change.
    """
    if not mids:
        return
    queue = getattr(client, "_packet_queue", None)
    if queue is None:
        for mid in mids:
            client.ack(mid, 1)
        return
    packet = b"".join(_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids)
    queue(mqtt.PUBACK, packet, 0, 1)


@dataclass
class _Record:
    topic: str
    key: bytes
    value: bytes
    partition: int
    items: int
    source_kind: str  # "readings", "rapid_tests" or "deadletter"


class Bridge:
    def __init__(
        self,
        settings: Settings,
        registry: ReloadingRegistry,
        topics: Topics | None = None,
        *,
        instance: str | None = None,
        group: str | None = None,
        retire: bool = False,
        idle_s: float = 3.0,
    ) -> None:
        ing = settings.ingest
        self.settings = settings
        self.registry = registry
        self.topics = topics or Topics(prefix=settings.topic_prefix, partitions=settings.readings_partitions)
        self.instance = instance or ing.bridge_instance
        # Each instance logs in as its own user, and the broker makes the user the client id
        # (use_username_as_clientid): no device and no other instance can take this session over.
        self.user, self._password = settings.mqtt.bridge_login(self.instance)
        self.client_id = self.user
        # The group is a secret derived from the bridge master secret: a member of it takes its turn of every
        # reading, and Mosquitto drops a turn it may not read (a device that joined), so none may guess it.
        self.group = group or ing.bridge_group or settings.mqtt.shared_group()
        # Default: a plain subscription. Shared (several bridges split the load) is opt-in: Mosquitto 2.0.11
        # drops what is routed to a shared member whose session was restored from disk and has not reconnected
        # yet, i.e. readings are lost across a broker restart (docs/ingest.md).
        self.subscription = f"$share/{self.group}/{SUBSCRIPTION}" if ing.bridge_shared else SUBSCRIPTION
        # Contract 6 over MQTT: rapid-test instruments publish their results as themselves (pipeline.ingest.rapidmqtt).
        self.instrument_subscription = (
            f"$share/{self.group}/{rapidmqtt.SUBSCRIPTION}" if ing.bridge_shared else rapidmqtt.SUBSCRIPTION
        )
        self.linger_s = ing.linger_ms / 1000
        self.max_inflight = ing.max_inflight
        self.max_inflight_bytes = ing.max_inflight_bytes
        self.max_items = ing.max_batch_items
        self.skew_ms = int(ing.future_skew_s * 1000)
        self.floor_ms = int(ing.ts_floor.timestamp() * 1000)
        self.retire = retire
        self.idle_s = idle_s
        self.retired = False  # set once the queue is drained and the session dropped
        self.session_present: bool | None = None  # what the broker said at the first CONNACK
        self.refused: str | None = None  # the first login was refused: the bridge stops with this reason
        self._unsubscribed = threading.Event()
        self._last_arrival = time.monotonic()
        self._cond = threading.Condition()
        self._pending: list[Publish] = []
        self._inflight = 0
        self._inflight_bytes = 0
        self._pending_bytes = 0  # payload bytes of ``_pending``, handed to the tick that takes them
        self._stopping = False
        self._connected = threading.Event()
        self._arrived = asyncio.Event()  # set from paho's thread (call_soon_threadsafe) when _pending fills
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.dead_lettered = 0
        self.partitions = 0
        self.producer: AIOKafkaProducer | None = None
        self.client = self._make_client()

    # -- the paho side (network thread) ------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        # paho with chunked socket reads and QoS 1 PUBLISHes handed over a socket read at a time
        # (pipeline.ingest.mqttclient): same protocol code, fewer syscalls, one lock per read.
        c = BufferedClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,  # a persistent session: the broker queues readings while the bridge is away
            protocol=mqtt.MQTTv311,
            manual_ack=True,
            on_publishes=self._on_publishes,
        )
        c.username_pw_set(self.user, self._password)
        c.max_inflight_messages_set(1000)
        c.reconnect_delay_set(min_delay=1, max_delay=2)  # be back before the backlog grows
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_unsubscribe = self._on_unsubscribe
        return c

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.error(
                "MQTT connect refused for %s: %s (is this instance registered? `larder devices add-bridge %s`)",
                self.user,
                rc,
                self.instance,
            )
            if self.session_present is None:  # never logged in: fail fast rather than knock forever
                self.refused = str(rc)
                if self._loop is not None:
                    self._loop.call_soon_threadsafe(self._arrived.set)
            return
        if self.session_present is None:
            self.session_present = bool(flags.session_present)
        if self.retire:
            # The session's subscription outlives the connection; dropping it here means the broker queues
            # nothing new for this instance, while what it queued already is still delivered. Both filters:
            # an instance retired with the other --shared/--exclusive flag than it ran with still stops.
            filters = (self.subscription, SUBSCRIPTION, self.instrument_subscription, rapidmqtt.SUBSCRIPTION)
            client.unsubscribe(list(dict.fromkeys(filters)))
        else:
            client.subscribe([(self.subscription, 1), (self.instrument_subscription, 1)])
        self._connected.set()
        log.info(
            "connected to mqtt://%s:%s as %s (session present: %s)",
            self.settings.mqtt.host,
            self.settings.mqtt.port,
            self.client_id,
            flags.session_present,
        )

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self._connected.clear()
        if not self._stopping:
            log.warning("MQTT connection lost (%s); reconnecting, the broker keeps the session", rc)

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
        self._unsubscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # The odd message paho parses itself (the first of a read, or one split across reads).
        self._on_publishes([(msg.topic, bytes(msg.payload), msg.mid, msg.qos, msg.dup)])

    def _on_publishes(self, batch: list[Publish]) -> None:
        self._last_arrival = time.monotonic()
        with self._cond:
            if not self._pending and self._loop is not None:
                self._loop.call_soon_threadsafe(self._arrived.set)
            n_bytes = sum(len(p[1]) for p in batch)
            self._pending.extend(batch)
            self._pending_bytes += n_bytes
            self._inflight += len(batch)
            self._inflight_bytes += n_bytes
            # Back-pressure: holding paho's thread here stops it reading the socket.
            while (
                self._inflight >= self.max_inflight or self._inflight_bytes >= self.max_inflight_bytes
            ) and not self._stopping:
                self._cond.wait(0.5)

    # -- the asyncio side --------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, on_progress: Callable[[Bridge], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()

        async def wake_on_stop() -> None:
            await stop.wait()
            self._arrived.set()

        waker = asyncio.create_task(wake_on_stop())
        try:
            await self._run(stop, on_progress)
        finally:
            waker.cancel()

    async def _run(self, stop: asyncio.Event, on_progress: Callable[[Bridge], None] | None) -> None:
        self.producer = durable_producer(self.settings)
        await self.producer.start()
        try:
            await self._find_partitions()
            m = self.settings.mqtt
            self.client.connect_async(m.host, m.port, keepalive=30)
            self.client.loop_start()
            await self._pump(stop, on_progress)
            await self.drain()
        finally:
            self._stopping = True
            with self._cond:
                self._cond.notify_all()
            self.client.disconnect()
            self.client.loop_stop()
            await self.producer.stop()
        if self.retire and not stop.is_set():
            forget_session(self.settings, self.instance)
            self.retired = True

    async def _find_partitions(self) -> None:
        """The readings topic's partition count (batches go to explicit partitions); it must exist already."""
        assert self.producer is not None
        parts = await self.producer.partitions_for(self.topics.readings)
        if not parts:
            raise RuntimeError(f"topic {self.topics.readings} does not exist; run `larder stack up`")
        self.partitions = len(parts)

    async def _pump(self, stop: asyncio.Event, on_progress: Callable[[Bridge], None] | None) -> None:
        """The main loop, whatever hands in the messages (MQTT here, AMQP in :mod:`pipeline.ingest.amqp_bridge`):
        asleep until a message arrives (or the once-a-second chores are due), then linger for more and
        :meth:`tick`; reload the registry once a second, report progress every 10 s. Returns on ``stop``, or
        once a retiring bridge has drained its queue."""
        last_reload = last_progress = time.monotonic()
        while not stop.is_set():
            if self.refused is not None:
                m = self.settings.mqtt
                raise RuntimeError(
                    f"mqtt://{m.host}:{m.port} refused the login of bridge instance {self.instance} "
                    f"(user {self.user}): {self.refused}. Register it: `larder devices add-bridge {self.instance}`"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), 1.0)
            self._arrived.clear()
            if self._pending and not stop.is_set():
                await asyncio.sleep(self.linger_s)
            await self.tick()
            now = time.monotonic()
            if now - last_reload >= 1.0:
                last_reload = now
                self.registry.reload()
            if on_progress and now - last_progress >= 10.0:
                last_progress = now
                on_progress(self)
            if self.retire and self._drained(now):
                break

    def _drained(self, now: float) -> bool:
        """Retiring: unsubscribed, nothing arrived for ``idle_s``, nothing waiting for Kafka or the broker."""
        return (
            self._unsubscribed.is_set()
            and now - self._last_arrival >= self.idle_s
            and not self._pending
            and not self._tasks
            and self._inflight == 0
        )

    async def drain(self, timeout: float = 30.0) -> None:
        """Produce what is pending and wait for Kafka to acknowledge everything in flight."""
        await self.tick()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    @property
    def inflight(self) -> int:
        return self._inflight

    async def tick(self) -> None:
        with self._cond:
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            n_bytes, self._pending_bytes = self._pending_bytes, 0
        now = int(time.time() * 1000)
        reg = self.registry.current
        groups: dict[int, list[dict[str, Any]]] = {}
        records: list[_Record] = []
        reasons: Tally[str] = Tally()
        dups = 0
        rechecked = False
        dl_topic = self.topics.deadletter
        for topic, payload, _mid, _qos, dup in batch:
            if dup:
                dups += 1
            if rapidmqtt.is_instrument_topic(topic):
                outs, codes = rapidmqtt.records_for(
                    topic, payload, reg, now, self.skew_ms, self.partitions, self.topics
                )
                records.extend(_Record(*o) for o in outs)
                for code in codes:
                    reasons[code] += 1
                continue
            device = device_of(topic)
            info = reg.devices.get(device) if device is not None else None
            if info is None and device is not None and not rechecked:
                # A device added a moment ago may publish before the next poll: look at the file once now.
                rechecked = True
                if self.registry.reload():
                    reg = self.registry.current
                    info = reg.devices.get(device)
            if info is None:
                code = BAD_TOPIC if device is None else UNKNOWN_DEVICE
                reason = (
                    f"device {device} is not in the site configuration"
                    if device is not None
                    else f"not a readings topic: {topic}"
                )
                value = mqtt_dead_letter(topic, payload, now, code, reason, device=device)
                records.append(_Record(dl_topic, (device or "").encode(), value, 0, 1, "deadletter"))
                reasons[code] += 1
                continue
            base: dict[str, Any] = {**info.base, "received_ms": now}
            try:
                items, refusals = validate_device_payload(payload, base, now, self.skew_ms, self.floor_ms)
            except Exception as exc:  # a validator bug must neither stop the bridge nor lose the message
                log.exception("could not validate a message from %s", device)
                items, refusals = [], [Refusal(INVALID, f"could not be validated: {exc!r}", None, payload)]
            if items:
                p = partition_for(device, self.partitions)  # type: ignore[arg-type]
                group = groups.get(p)
                if group is None:
                    groups[p] = items
                else:
                    group.extend(items)
            for r in refusals:
                value = dead_letter(
                    source="mqtt",
                    reason_code=r.reason_code,
                    reason=r.reason,
                    arrived_ms=now,
                    payload=r.payload,
                    device=device,
                    mqtt_topic=topic,
                    index=r.index,
                )
                records.append(_Record(dl_topic, device.encode(), value, 0, 1, "deadletter"))  # type: ignore[union-attr]
                reasons[r.reason_code] += 1
        n_items = 0
        for p, items in groups.items():
            for i in range(0, len(items), self.max_items):
                chunk = items[i : i + self.max_items]
                value = readings_value(chunk)
                records.append(
                    _Record(self.topics.readings, chunk[0]["device"].encode(), value, p, len(chunk), "readings")
                )
                metrics.BATCH_SIZE.labels("mqtt").observe(len(chunk))
                n_items += len(chunk)
        acks = [(mid, qos) for _t, _p, mid, qos, _d in batch]
        metrics.INFLIGHT.set(self._inflight)  # also while Kafka stalls, when nothing completes
        futures: list[asyncio.Future[Any]] | None
        try:
            futures = await self._send(records)
        except KafkaError as exc:  # e.g. a batch not drained in time while Kafka is away: _complete retries
            log.warning("Kafka did not take a batch (%s)", exc)
            futures = None
        task = asyncio.create_task(
            self._complete(records, futures, acks, n_bytes, n_items, reasons, time.perf_counter())
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if dups:
            metrics.DUPLICATES.labels("mqtt").inc(dups)

    async def _send(self, records: list[_Record]) -> list[asyncio.Future[Any]]:
        assert self.producer is not None
        return [await self.producer.send(r.topic, r.value, key=r.key, partition=r.partition) for r in records]

    async def _complete(
        self,
        records: list[_Record],
        futures: list[asyncio.Future[Any]] | None,
        acks: list[tuple[int, int]],
        n_bytes: int,
        n_items: int,
        reasons: Tally[str],
        t0: float,
    ) -> None:
        """Acknowledge a tick's messages to the broker once Kafka has every record of it; until then, send the
        whole tick again (duplicates possible, losses not: the broker redelivers whatever is unacknowledged)."""
        first = futures

        async def send_all() -> None:
            nonlocal first
            sent = first if first is not None else await self._send(records)
            first = None  # a retry sends the whole tick again
            await asyncio.gather(*sent)

        await until_kafka_takes(send_all, f"a batch of {len(records)} record(s)")
        metrics.PRODUCE_SECONDS.labels("mqtt").observe(time.perf_counter() - t0)
        ack_many(self.client, [mid for mid, qos in acks if qos == 1])
        with self._cond:
            self._inflight -= len(acks)
            self._inflight_bytes -= n_bytes
            self._cond.notify_all()
        metrics.INFLIGHT.set(self._inflight)
        self.accepted += n_items
        metrics.ACCEPTED.labels("mqtt").inc(n_items)
        for code, n in reasons.items():
            self.dead_lettered += n
            metrics.DEAD_LETTERED.labels("mqtt", code).inc(n)


def forget_session(settings: Settings, instance: str, timeout: float = 10.0) -> None:
    """Drop bridge ``instance``'s persistent session: one login as the instance with a clean session (MQTT
    3.1.1) discards it, with its subscription and anything still queued for it. Raises ``RuntimeError`` if the
    broker refuses."""
    m = settings.mqtt
    user, password = m.bridge_login(instance)
    client_id = user  # the broker binds the client id to the user anyway
    done = threading.Event()
    refused: list[str] = []

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            refused.append(str(rc))
        done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.username_pw_set(user, password)
    c.on_connect = on_connect
    try:
        c.connect(m.host, m.port, keepalive=10)
    except OSError as exc:
        raise RuntimeError(f"cannot reach mqtt://{m.host}:{m.port} to drop the session of {client_id}: {exc}") from exc
    c.loop_start()
    try:
        if not done.wait(timeout) or refused:
            why = refused[0] if refused else f"no CONNACK within {timeout:g} s"
            raise RuntimeError(f"the broker did not drop the session of {client_id}: {why}")
    finally:
        c.disconnect()
        c.loop_stop()


B = TypeVar("B", bound=Bridge)


async def serve(settings: Settings, *, on_progress: Callable[[Bridge], None] | None = None, **kwargs: Any) -> Bridge:
    """Run one bridge until SIGINT/SIGTERM (or, retiring, until its queue is drained); SIGHUP re-reads the site
    configuration."""
    registry = ReloadingRegistry(settings.site_config)
    return await run_until_signalled(Bridge(settings, registry, **kwargs), on_progress)


async def run_until_signalled(bridge: B, on_progress: Callable[[Bridge], None] | None = None) -> B:
    """Serve ``bridge`` (MQTT or AMQP) with its metrics endpoint until SIGINT/SIGTERM; SIGHUP re-reads the site
    configuration at once instead of at the next poll."""
    from prometheus_client import start_http_server

    port = bridge.settings.ingest.bridge_metrics_port
    if port:
        start_http_server(port, addr="127.0.0.1")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: bridge.registry.reload(force=True))
    await bridge.run(stop, on_progress)
    return bridge
