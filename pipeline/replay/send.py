"""Drive contract-3 lines through the real device path, paced, with the replay clock.

* MQTT lines are published QoS 1 by one paho client per device, logged in with that device's own
  credentials (the broker's ACL lets a device publish only as itself), connected lazily on first use.
* Hook lines are POSTed with contract-2 headers and an HMAC-SHA256 signature; ``202`` means durably in Kafka.
* The replay clock: every ``tick_every_s`` of recording time, and at the end, a ``tick`` record goes into
  every partition of the readings and kitchen-events topics -- but only after every reading sent before that
  instant is in Kafka (a consumer of those topics and of the dead-letter topic checks off each (device, seq)).
  So in every partition the ticks sit between the same readings whatever the speed, and the worker's timers
  fire at the same points of the stream: identical alerts at 1x and at max speed.
  Silence alerts (offline, gap) follow arrivals, so they are decided by the clock alone: a live worker ticking
  every second decides a silence within a second of it falling due, and a replay ticking every 10 s would miss
  one that ended before the next tick. So the replay clock also ticks at each silence decision the recording
  reaches (``silences``: per device, the delays after the newest event time it sent, from
  :func:`pipeline.detectors.liveness.silence_decisions`; :class:`SilenceTicks`) unless a tick already covered it.

Pacing: ``speed`` maps recording seconds to wall seconds; ``None`` means as fast as the path takes.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import paho.mqtt.client as mqtt

from pipeline import serde
from pipeline.contracts import records
from pipeline.contracts.models import MQTT_READINGS_TOPIC, ts_to_ms
from pipeline.contracts.replay import Line
from pipeline.settings import Settings
from pipeline.topics import Topics


class SendError(RuntimeError):
    """The path refused something it should have taken (bad credentials, hook 401, Kafka never got it)."""


@dataclass
class SendStats:
    mqtt_messages: int = 0
    readings_sent: int = 0
    hook_requests: int = 0
    events_sent: int = 0
    readings_in_kafka: int = 0
    dead_letters: int = 0
    ticks: int = 0
    connections: int = 0
    hook_refusals: int = 0
    #: Contract-6 results accepted by the hooks (202), and requests refused with a 400 (dead-lettered).
    rapid_tests_sent: int = 0
    rapid_test_refusals: int = 0
    sim_ms: int = 0
    started: float = field(default_factory=time.monotonic)
    wall_s: float = 0.0
    waits_for_kafka_s: float = 0.0


def sign(secret: str, body: bytes, ts: int) -> str:
    """Contract 2: ``sha256=<hex HMAC-SHA256(camera secret, "<timestamp>.<raw body>")>``."""
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


class MqttPool:
    """One QoS-1 paho client per device, each logged in as that device; created on first publish."""

    def __init__(self, settings: Settings, secrets: dict[str, str]) -> None:
        self.settings = settings
        self.secrets = secrets
        self.clients: dict[str, mqtt.Client] = {}
        self.outstanding: list[mqtt.MQTTMessageInfo] = []
        self._lock = threading.Lock()
        self.run = uuid.uuid4().hex[:6]

    def _connect(self, device: str) -> mqtt.Client:
        secret = self.secrets.get(device)
        if secret is None:
            raise SendError(f"no secret for device {device}: it is not in the site configuration")
        m = self.settings.mqtt
        last: str = ""
        for _ in range(40):  # a SIGHUP'd password file is reloaded asynchronously; retry for ~4 s
            c = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=f"sim-{device}-{self.run}",
                clean_session=True,
                protocol=mqtt.MQTTv311,
            )
            c.username_pw_set(device, secret)
            c.max_inflight_messages_set(1000)
            c.max_queued_messages_set(0)
            connected = threading.Event()
            result: list[Any] = []
            c.on_connect = _connack(result, connected)
            try:
                c.connect(m.host, m.port, keepalive=60)
            except OSError as exc:
                raise SendError(f"cannot reach the MQTT broker at {m.host}:{m.port}: {exc}") from None
            c.loop_start()
            connected.wait(5)
            if result and not result[0].is_failure:
                sock = c.socket()
                if isinstance(sock, socket.socket):
                    # Small QoS-1 publishes back to back otherwise wait on Nagle + delayed ACK (~40 ms each).
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return c
            last = str(result[0]) if result else "no CONNACK"
            c.loop_stop()
            c.disconnect()
            time.sleep(0.1)
        raise SendError(f"the broker refused device {device}: {last} (is it registered? see larder devices)")

    def publish(self, device: str, payload: bytes) -> None:
        c = self.clients.get(device)
        if c is None:
            c = self.clients[device] = self._connect(device)
        info = c.publish(MQTT_READINGS_TOPIC.format(device=device), payload, qos=1)
        self.outstanding.append(info)
        if len(self.outstanding) >= 5000:
            self.outstanding = [i for i in self.outstanding if not i.is_published()]

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until the broker has acknowledged (PUBACK) everything published so far."""
        deadline = time.monotonic() + timeout
        while self.outstanding:
            self.outstanding = [i for i in self.outstanding if not i.is_published()]
            if not self.outstanding:
                break
            if time.monotonic() > deadline:
                raise SendError(f"{len(self.outstanding)} MQTT publishes not acknowledged within {timeout} s")
            await asyncio.sleep(0.002)

    def close(self) -> None:
        self.outstanding = [i for i in self.outstanding if not i.is_published()]
        for c in self.clients.values():
            c.disconnect()
            c.loop_stop()
        self.clients.clear()


def _connack(result: list[Any], done: threading.Event) -> Callable[..., None]:
    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        result.append(rc)
        done.set()

    return on_connect


def _device_items(payload: Any) -> list[Any]:
    """The readings of a device payload, as the bridge reads it: one reading, or a store-and-forward batch."""
    items = payload.get("readings") if isinstance(payload, dict) and "readings" in payload else [payload]
    return items if isinstance(items, list) else []


def _newest_ts(payload: Any) -> int | None:
    """The latest event time a device payload carries (None if none is readable: the bridge refuses those)."""
    best: int | None = None
    for it in _device_items(payload):
        try:
            t = ts_to_ms(it["ts"])
        except (KeyError, TypeError, ValueError):
            continue
        if best is None or t > best:
            best = t
    return best


class SilenceTicks:
    """The replay clock's extra ticks: one at each device's silence decision the recording reaches (module
    docstring), unless a tick at or after it was sent first. ``delays``: per device, how long after the newest
    event time it has sent a tick decides each silence alert (``silence_decisions``)."""

    def __init__(self, delays: dict[str, tuple[int, ...]]) -> None:
        self.delays = delays
        self.last_tick = -1
        #: (decision time, device, the device's message count then): stale once the device sent again.
        self._decisions: list[tuple[int, str, int]] = []
        self._messages: dict[str, int] = {}
        self._newest: dict[str, int] = {}

    def heard(self, device: str, at_ms: int, payload: Any) -> None:
        """A message of ``device`` sent at ``at_ms`` (recording time)."""
        delays = self.delays.get(device)
        if not delays:
            return
        n = self._messages[device] = self._messages.get(device, 0) + 1
        # The detector counts a silence from the newest event time it has seen, which can be later than the
        # arrival (a logger clock ahead, or a live run publishing just before its readings' times: seen, 346 ms).
        newest = max(at_ms, _newest_ts(payload) or at_ms, self._newest.get(device, at_ms))
        self._newest[device] = newest
        for delay in delays:
            heapq.heappush(self._decisions, (newest + delay, device, n))

    def ticked(self, now_ms: int) -> None:
        self.last_tick = max(self.last_tick, now_ms)

    def due(self, scheduled: int | None, until: int) -> int | None:
        """The earliest tick owed at or before ``until``: the regular ``scheduled`` one or a silence decision."""
        heap = self._decisions
        while heap and (heap[0][2] != self._messages[heap[0][1]] or heap[0][0] <= self.last_tick):
            heapq.heappop(heap)  # the device spoke again, or a tick at or after the decision covered it
        owed = [t for t in (scheduled, heap[0][0] if heap else None) if t is not None and t <= until]
        return min(owed) if owed else None


def _reading_keys(device: str, payload: Any) -> list[tuple[str, int]]:
    """The (device, seq) pairs a device payload carries (what the bridge will put into Kafka or dead-letter)."""
    out = []
    for it in _device_items(payload):
        if isinstance(it, dict) and isinstance(it.get("seq"), int):
            out.append((device, it["seq"]))
    return out


class KafkaWatch:
    """Consumes the readings and dead-letter topics from their current end, checking off (device, seq)."""

    def __init__(self, settings: Settings, topics: Topics) -> None:
        self.settings = settings
        self.topics = topics
        self.seen: set[tuple[str, int]] = set()
        self.pending: set[tuple[str, int]] = set()
        self.readings = 0
        self.dead = 0
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers, enable_auto_commit=False, group_id=None
        )
        await self.consumer.start()
        parts = []
        for t in (self.topics.readings, self.topics.deadletter):
            ps = self.consumer.partitions_for_topic(t) or set()
            if not ps:
                await self.consumer._client.force_metadata_update()
                ps = self.consumer.partitions_for_topic(t) or set()
            if not ps:
                raise SendError(f"topic {t} does not exist; is the pipeline set up (larder stack up)?")
            parts += [TopicPartition(t, p) for p in ps]
        self.consumer.assign(parts)
        await self.consumer.seek_to_end(*parts)
        for tp in parts:  # resolve the end offsets now, before anything is sent
            await self.consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, recs in batch.items():
                for r in recs:
                    if r.value is None:
                        continue
                    if tp.topic == self.topics.readings:
                        self._on_batch(r.value)
                    else:
                        self._on_dead(r.value)
            if batch:
                self._changed.set()

    def _on_batch(self, value: bytes) -> None:
        for it in records.batch_items(value, "readings"):
            key = (it["device"], it["seq"])
            self.readings += 1
            self.seen.add(key)
            self.pending.discard(key)

    def _on_dead(self, value: bytes) -> None:
        dl = serde.loads(value)
        if dl.get("source") != "mqtt" or not dl.get("device"):
            return
        self.dead += 1
        try:
            payload = serde.loads(records.dead_letter_payload(dl))
        except Exception:
            payload = None
        keys = _reading_keys(dl["device"], payload) if payload is not None else []
        if not keys:
            # A message the bridge could not read at all: nothing to check off by key; drop what was pending
            # for that device once this arrives (its readings will never come).
            keys = [k for k in self.pending if k[0] == dl["device"]]
        for k in keys:
            self.seen.add(k)
            self.pending.discard(k)

    def expect(self, keys: Iterable[tuple[str, int]]) -> None:
        for k in keys:
            if k not in self.seen:
                self.pending.add(k)

    async def drained(self, timeout: float, stall: float = 20.0) -> None:
        """Wait until every expected reading is in Kafka; fail if nothing arrives for ``stall`` seconds."""
        start = last_progress = time.monotonic()
        size = len(self.pending)
        while self.pending:
            self._changed.clear()
            with _suppress_timeout():
                await asyncio.wait_for(self._changed.wait(), 0.5)
            if self._task is not None and self._task.done():
                self._task.result()
            now = time.monotonic()
            if len(self.pending) < size:
                size, last_progress = len(self.pending), now
            if now - last_progress > stall or now - start > timeout:
                sample = sorted(self.pending)[:5]
                raise SendError(
                    f"{len(self.pending)} readings never reached {self.topics.readings} (e.g. {sample}); "
                    "is `larder bridge` running with this site file and topic prefix?"
                )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with _suppress_cancel():
                await self._task
        await self.consumer.stop()


class _suppress_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        return et is not None and issubclass(et, asyncio.TimeoutError | TimeoutError)


class _suppress_cancel:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        return et is not None and issubclass(et, asyncio.CancelledError)


Progress = Callable[[SendStats], None]


async def drive(
    settings: Settings,
    topics: Topics,
    lines: Iterable[Line],
    *,
    device_secrets: dict[str, str],
    camera_secrets: dict[str, str],
    hooks_url: str,
    speed: float | None = None,
    ticks: bool = True,
    tick_every_s: float = 10.0,
    on_progress: Progress | None = None,
    progress_every_s: float = 0.25,
    instrument_secrets: dict[str, str] | None = None,
    silences: dict[str, tuple[int, ...]] | None = None,
) -> SendStats:
    """Send ``lines`` (in ``at`` order) through MQTT and the hook, ticking the replay clock; returns counts.
    ``silences``: per device, how long after its last message the clock decides a silence (module docstring)."""
    from pipeline.producer import durable_producer

    stats = SendStats()
    pool = MqttPool(settings, device_secrets)
    watch = KafkaWatch(settings, topics)
    producer = durable_producer(settings)
    http = httpx.AsyncClient(base_url=hooks_url, timeout=30.0)
    await watch.start()
    await producer.start()
    tick_targets: list[tuple[str, int]] = []
    for t in (topics.readings, topics.kitchen_events, topics.rapid_tests):
        for p in sorted(await producer.partitions_for(t)):
            tick_targets.append((t, p))
    tick_ms = int(tick_every_s * 1000)
    wall0 = time.monotonic()
    sim0: int | None = None
    next_tick: int | None = None
    last_progress = 0.0
    sent_since_tick = False
    silence = SilenceTicks(silences or {})

    async def tick(now_ms: int) -> None:
        nonlocal sent_since_tick
        silence.ticked(now_ms)
        if sent_since_tick:
            # Seeing the readings in Kafka is what orders the tick after them; waiting for the broker's PUBACKs
            # first would only add latency (with Mosquitto's default Nagle, ~40 ms per burst).
            t0 = time.monotonic()
            await watch.drained(timeout=600)
            stats.waits_for_kafka_s += time.monotonic() - t0
            sent_since_tick = False
        value = records.tick_value(now_ms)
        futs = [await producer.send(t, value, partition=p) for t, p in tick_targets]
        await asyncio.gather(*futs)
        stats.ticks += 1

    def report(force: bool = False) -> None:
        nonlocal last_progress
        now = time.monotonic()
        if force or (on_progress is not None and now - last_progress >= progress_every_s):
            last_progress = now
            stats.readings_in_kafka = watch.readings
            stats.dead_letters = watch.dead
            stats.connections = len(pool.clients)
            stats.wall_s = now - wall0
            if on_progress is not None:
                on_progress(stats)

    try:
        for line in lines:
            if sim0 is None:
                sim0 = line.at_ms
                next_tick = (line.at_ms // tick_ms + 1) * tick_ms
            assert next_tick is not None
            # Ticks due before this line (the tick schedule depends on the recording only, never on speed).
            while ticks and (due := silence.due(next_tick, line.at_ms)) is not None:
                await _pace(speed, wall0, sim0, due)
                await tick(due)
                while next_tick <= due:
                    next_tick += tick_ms
                report()
            await _pace(speed, wall0, sim0, line.at_ms)
            stats.sim_ms = line.at_ms - sim0
            if line.kind == "mqtt":
                silence.heard(line.source, line.at_ms, line.body)
            if line.kind == "mqtt":
                keys = _reading_keys(line.source, line.body)
                watch.expect(keys)
                pool.publish(line.source, serde.dumps(line.body))
                stats.mqtt_messages += 1
                stats.readings_sent += len(keys)
                sent_since_tick = True
            elif line.kind == "hook":
                await _post_hook(http, line, camera_secrets, stats)
            elif line.kind == "rapid_test":
                await _post_rapid_test(http, line, instrument_secrets or {}, stats)
            elif ticks:
                await tick(line.at_ms)
            report()
        await pool.flush()
        await watch.drained(timeout=600)
        report(force=True)
    finally:
        pool.close()
        await http.aclose()
        await producer.stop()
        await watch.stop()
    stats.wall_s = time.monotonic() - wall0
    return stats


async def _post_signed(
    http: httpx.AsyncClient, path: str, sender_header: str, kind: str, line: Line, secrets: dict[str, str]
) -> httpx.Response:
    """One request signed like contract 2 with the sender's secret (``sender_header`` names the sender: camera
    or instrument), retried on a transport error or a 5xx (the hooks restarting, Kafka not confirming yet); a
    401 is a :class:`SendError` (wrong secrets). Returns the last answer."""
    secret = secrets.get(line.source)
    if secret is None:
        raise SendError(f"no secret for {kind} {line.source}: it is not in the site configuration")
    body = serde.dumps(line.body)
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json",
        sender_header: line.source,
        "X-Larder-Timestamp": str(ts),
        "X-Larder-Signature": sign(secret, body, ts),
    }
    for attempt in range(5):
        try:
            resp = await http.post(path, content=body, headers=headers)
        except httpx.TransportError as exc:
            if attempt == 4:
                raise SendError(f"cannot reach the hook at {http.base_url}: {exc}") from None
            await asyncio.sleep(0.2 * (attempt + 1))
            continue
        if resp.status_code in (500, 502, 503, 504) and attempt < 4:
            await asyncio.sleep(0.2 * (attempt + 1))
            continue
        break
    if resp.status_code == 401:
        raise SendError(f"the hook refused {kind} {line.source}'s signature (401): {resp.text[:200]}")
    return resp


async def _post_hook(http: httpx.AsyncClient, line: Line, secrets: dict[str, str], stats: SendStats) -> None:
    resp = await _post_signed(http, "/v1/kitchen/events", "X-Larder-Camera", "camera", line, secrets)
    stats.hook_requests += 1
    n = len(line.body.get("events", [])) if isinstance(line.body, dict) and "events" in line.body else 1
    if resp.status_code == 202:
        stats.events_sent += n
    else:
        # 400 means the hook dead-lettered a malformed body: part of what a recording may hold, not our error.
        stats.hook_refusals += 1


async def _post_rapid_test(http: httpx.AsyncClient, line: Line, secrets: dict[str, str], stats: SendStats) -> None:
    """One contract-6 request, signed with the instrument's secret; 202 only once the results are in Kafka."""
    from pipeline.contracts.rapidtest import RAPID_TEST_PATH

    resp = await _post_signed(http, RAPID_TEST_PATH, "X-Larder-Instrument", "instrument", line, secrets)
    if resp.status_code == 202:
        stats.rapid_tests_sent += int(resp.json().get("accepted", 0))
    else:
        stats.rapid_test_refusals += 1


async def _pace(speed: float | None, wall0: float, sim0: int, at_ms: int) -> None:
    if speed is None:
        return
    due = wall0 + (at_ms - sim0) / 1000 / speed
    delay = due - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
