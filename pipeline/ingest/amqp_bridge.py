"""The bridge for the clustered MQTT tier: RabbitMQ's quorum queue -> the same validated Kafka record batches.

Devices keep speaking MQTT 3.1.1 QoS 1, to any node of a RabbitMQ 3.10 cluster with the MQTT plugin
(``pipeline.stack.rabbitmq``). The plugin publishes each message to ``amq.topic`` with the routing key
``larder.v1.devices.<id>.readings`` and PUBACKs it once the quorum queue ``larder.readings`` has it on a
majority of nodes. Bridges consume that queue as competing consumers over AMQP 0-9-1 and acknowledge a message
only after Kafka acknowledged the record batch that holds it: a bridge killed with ``kill -9`` loses nothing
(RabbitMQ redelivers what it had not acknowledged), a node killed with ``kill -9`` loses nothing that was
PUBACKed (the other replicas hold it).

Everything between receipt and acknowledgement is :class:`pipeline.ingest.bridge.Bridge`'s own code, not a
copy: validation, enrichment, per-partition batching, the idempotent ``acks=all`` producer, dead letters and
retries. This class replaces only the MQTT side: deliveries go into the bridge's pending list as
``(mqtt topic, payload, mid, 1, redelivered)`` and the bridge's acknowledgement call lands in :class:`_Acker`,
which turns finished delivery tags into one cumulative ``basic.ack(multiple=True)`` per contiguous run.

Back-pressure: ``basic.qos(prefetch_count)`` (``ingest.max_inflight``, capped at AMQP's 65,535) bounds the
messages a bridge holds unacknowledged, as ``max_inflight`` does for Mosquitto. RabbitMQ does not implement
``prefetch_size``, so ``max_inflight_bytes`` is not enforced here: with store-and-forward uploads of up to
512 KiB, lower the prefetch (``LARDER_INGEST__MAX_INFLIGHT``).

    python -m pipeline.ingest.amqp_bridge [--server 127.0.0.1:54893 ...] [--instance 2]

Not part of ``larder bridge``: Mosquitto is the default broker (docs/ingest.md, "MQTT tier scale-out").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiormq
from aiormq.abc import DeliveredMessage

from pipeline.ingest import amqp_topology
from pipeline.ingest.bridge import Bridge, run_until_signalled
from pipeline.ingest.registry import ReloadingRegistry
from pipeline.producer import durable_producer
from pipeline.settings import Settings, load_settings
from pipeline.topics import Topics

log = logging.getLogger(__name__)

_RK_PREFIX = "larder.v1.devices."
_RK_SUFFIX = ".readings"


def mqtt_topic(routing_key: str) -> str:
    """The MQTT topic a routing key came from (the plugin maps ``/`` to ``.``). A device id may itself contain
    dots, so the id is what lies between the fixed prefix and suffix; anything else is returned unchanged and
    is dead-lettered as ``bad_topic`` by the bridge."""
    if routing_key.startswith(_RK_PREFIX) and routing_key.endswith(_RK_SUFFIX):
        device = routing_key[len(_RK_PREFIX) : -len(_RK_SUFFIX)]
        if device:
            return f"larder/v1/devices/{device}/readings"
    return routing_key


@dataclass
class _ChannelAcks:
    """Delivery tags of one channel that Kafka has, acknowledged cumulatively in order.

    Ticks can finish out of order; ``basic.ack(tag, multiple=True)`` acknowledges every tag up to ``tag``, so
    it is sent only up to the highest tag below which every delivery is done."""

    channel: aiormq.abc.AbstractChannel
    acked_to: int = 0
    done: set[int] = field(default_factory=set)

    def advance(self) -> int | None:
        top = self.acked_to
        while top + 1 in self.done:
            top += 1
            self.done.discard(top)
        if top == self.acked_to:
            return None
        self.acked_to = top
        return top


class _Acker:
    """What the bridge's ``ack_many`` sees as its MQTT client: ``ack(mid, qos)`` per finished message."""

    def __init__(self, bridge: AmqpBridge) -> None:
        self.bridge = bridge

    def ack(self, mid: int, qos: int) -> None:
        self.bridge._ack(mid)


class AmqpBridge(Bridge):
    def __init__(
        self,
        settings: Settings,
        registry: ReloadingRegistry,
        urls: list[str],
        topics: Topics | None = None,
        *,
        instance: str | None = None,
        queue: str = amqp_topology.QUEUE,
    ) -> None:
        if not urls:
            raise ValueError("no AMQP server to consume from")
        super().__init__(settings, registry, topics, instance=instance)
        self.urls = urls
        self.queue = queue
        self.prefetch = min(self.max_inflight, 65_535)
        self._mid = 0
        self._deliveries: dict[int, tuple[_ChannelAcks, int]] = {}
        self._flush_due: set[int] = set()  # id()s of channels with finished tags not yet acknowledged
        self._channels: dict[int, _ChannelAcks] = {}
        self._ack_tasks: set[asyncio.Task[None]] = set()
        self.server: str | None = None  # host:port of the node consumed from now
        self._conn: aiormq.abc.AbstractConnection | None = None  # kept open after stop until the last acks

    def _make_client(self) -> Any:
        return _Acker(self)

    # -- deliveries in, acknowledgements out ---------------------------------------------------------------------

    def _on_delivery(self, acks: _ChannelAcks, message: DeliveredMessage) -> None:
        self._last_arrival = time.monotonic()
        self._mid += 1
        mid = self._mid
        tag = message.delivery_tag
        assert tag is not None
        self._deliveries[mid] = (acks, tag)
        body = message.body
        publish = (mqtt_topic(message.routing_key or ""), body, mid, 1, bool(message.redelivered))
        with self._cond:
            if not self._pending:
                self._arrived.set()
            self._pending.append(publish)
            self._pending_bytes += len(body)
            self._inflight += 1
            self._inflight_bytes += len(body)

    def _ack(self, mid: int) -> None:
        entry = self._deliveries.pop(mid, None)
        if entry is None:
            return
        acks, tag = entry
        acks.done.add(tag)
        key = id(acks)
        if key not in self._flush_due:
            self._flush_due.add(key)
            asyncio.get_running_loop().call_soon(self._flush, acks)

    def _flush(self, acks: _ChannelAcks) -> None:
        self._flush_due.discard(id(acks))
        top = acks.advance()
        if top is None or acks.channel.is_closed:
            return  # a closed channel's messages are redelivered to whoever consumes next: duplicates, not losses
        task = asyncio.create_task(self._send_ack(acks.channel, top))
        self._ack_tasks.add(task)
        task.add_done_callback(self._ack_tasks.discard)

    @staticmethod
    async def _send_ack(channel: aiormq.abc.AbstractChannel, tag: int) -> None:
        try:
            await channel.basic_ack(tag, multiple=True)
        except Exception as exc:  # the channel closed under us: RabbitMQ requeues, the worker de-duplicates
            log.warning("could not acknowledge up to delivery %d (%s); RabbitMQ will redeliver", tag, exc)

    def _consumer_for(self, acks: _ChannelAcks) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        async def on_message(message: DeliveredMessage) -> None:
            self._on_delivery(acks, message)

        return on_message

    # -- the connection ------------------------------------------------------------------------------------------

    async def _consume(self, stop: asyncio.Event) -> None:
        """Consume from the first server that answers; on a lost connection, the next one (round robin)."""
        i = 0
        while not stop.is_set():
            url = self.urls[i % len(self.urls)]
            where = url.rsplit("@", 1)[-1]
            i += 1
            conn: aiormq.abc.AbstractConnection | None = None
            try:
                conn = await aiormq.connect(url)
                channel = await conn.channel()
                await channel.basic_qos(prefetch_count=self.prefetch)
                acks = _ChannelAcks(channel)
                self._channels[id(acks)] = acks
                await channel.basic_consume(
                    self.queue, self._consumer_for(acks), no_ack=False, consumer_tag=self.client_id
                )
                self.server = where
                self._connected.set()
                log.info("connected to amqp://%s as %s (queue %s)", where, self.client_id, self.queue)
                closing = asyncio.ensure_future(conn.closing)
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({closing, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if stop.is_set():
                    self._conn = conn
                    return
                log.warning("AMQP connection to %s lost; unacknowledged messages go back to the queue", where)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot consume from amqp://%s: %s", where, exc)
                await asyncio.sleep(1.0)
            finally:
                self._connected.clear()
                self.server = None
            if conn is not None and not conn.is_closed and not stop.is_set():
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _run(self, stop: asyncio.Event, on_progress: Callable[[Bridge], None] | None) -> None:
        self.producer = durable_producer(self.settings)
        await self.producer.start()
        consumer_stop = asyncio.Event()
        consumer: asyncio.Task[None] | None = None
        try:
            await self._find_partitions()
            consumer = asyncio.create_task(self._consume(consumer_stop))
            await self._pump(stop, on_progress)  # the MQTT bridge's loop: only the hand-in differs
            # Stop taking deliveries, hand what was received to Kafka, acknowledge it, then close.
            consumer_stop.set()
            await consumer
            await self.drain()
            if self._ack_tasks:
                await asyncio.wait(set(self._ack_tasks), timeout=10)
        finally:
            self._stopping = True
            if consumer is not None and not consumer.done():
                consumer.cancel()
                with contextlib.suppress(BaseException):
                    await consumer
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close()
            await self.producer.stop()


def urls_for(settings: Settings, servers: list[str]) -> list[str]:
    """AMQP URLs for ``host:port`` servers, as the bridge user (the password never goes on a command line)."""
    m = settings.mqtt
    assert m.bridge_password is not None, "load settings with load_settings()"
    user, pw = quote(m.bridge_user, safe=""), quote(m.bridge_password.get_secret_value(), safe="")
    return [f"amqp://{user}:{pw}@{s}/{amqp_topology.VHOST}" for s in servers]


async def serve(settings: Settings, servers: list[str], *, instance: str | None = None) -> AmqpBridge:
    """Run one AMQP bridge until SIGINT/SIGTERM; SIGHUP re-reads the site configuration."""
    registry = ReloadingRegistry(settings.site_config)
    return await run_until_signalled(AmqpBridge(settings, registry, urls_for(settings, servers), instance=instance))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.ingest.amqp_bridge",
        description="Forward readings from RabbitMQ's quorum queue (devices publish over MQTT to the cluster) to "
        "Kafka, acknowledging each message only after Kafka has it. Settings as `larder bridge` "
        "(LARDER_INGEST__*, --sites via LARDER_SITE_CONFIG); the user is LARDER_MQTT__BRIDGE_USER.",
    )
    ap.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="an AMQP listener of the cluster; repeat for failover, tried in order (default: every node of the "
        "local cluster of pipeline.stack.rabbitmq)",
    )
    ap.add_argument("--instance", default=None, help="consumer tag suffix (larder-bridge-<instance>)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    servers = args.server
    if not servers:
        servers = amqp_topology.default_servers(settings)
    if not settings.site_config.exists():
        sys.exit(f"site file {settings.site_config} not found (set LARDER_SITE_CONFIG)")
    bridge = asyncio.run(serve(settings, servers, instance=args.instance))
    log.info("stopped: %d readings in Kafka, %d dead letters", bridge.accepted, bridge.dead_lettered)


if __name__ == "__main__":
    main()
