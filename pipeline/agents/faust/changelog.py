"""Table writes in bulk: a partition's changed states go into the table's local store and, as one Kafka record
batch, onto the table's changelog partition.

Why not ``table[key] = value``: Faust sends one changelog message per key through its ProducerBuffer (a
FutureMessage, a queue hop, one aiokafka ``send`` and, with nothing else queued, one produce request each), then
records the persisted offset in RocksDB once per message. py-spy put that path at ~40% of the worker's CPU
under load, more than the detectors (``BENCHMARKS.md``, Detection). Here a flush of N states costs N local
store writes, N appends to one record batch (aiokafka's C batch builder) and one produce request.

The records are exactly the ones Faust would have written (same topic, key, value, and partition: tables are
co-partitioned with their source, ``pipeline.agents.core.Runner`` refuses an item of another partition), so
Faust's recovery and standby replicas read them as their own; the persisted offset is recorded once per batch.

Durability order is the caller's (``pipeline.agents.faust.app``): :meth:`TableWriter.write` hands the batch to the
producer, :meth:`TableWriter.settle` waits until Kafka has it, and only then are the records that changed those
states acknowledged (committable). A batch Kafka refuses is sent again until it is accepted: the same
key/value pairs, so a repeat is harmless on a compacted changelog.

The local store is written at :meth:`TableWriter.settle`, batch by batch in the order they were sent, once Kafka
has each: it only ever holds a prefix of the changelog, up to the persisted offset recorded with it. Written
when the batch was handed over (as Faust's ``table[key] = value`` does), a worker killed before Kafka had it
restarted with that batch in its files and not in the changelog; Faust's recovery then applied the changelog
records past the persisted offset (older, acknowledged batches) over it, and the table came back as a mix of
two moments: some subjects older than the partition's clock (:func:`~pipeline.agents.core.clock_key`) written
with the newer batch. The records read again after the restart were processed at that clock instead of their
own times: alerts opened and resolved at one shared time, others never raised (one CI run of the kill -9
test during store-and-forward re-runs, 2026-12-06: 256 alert events missing, 44 unexpected).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from time import perf_counter
from typing import Any

import rocksdict
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faust.types import TP

from pipeline.agents.core import Stats
from pipeline.partitioner import partition_for
from pipeline.producer import MAX_BATCH_BYTES, durable_producer
from pipeline.settings import Settings

log = logging.getLogger(__name__)

#: ``(topic, partition, [(key, value), ...])`` -> a future resolving to the offset of the *last* record sent.
SendBatch = Callable[[str, int, list[tuple[bytes, bytes]]], Awaitable["asyncio.Future[int]"]]
#: Runs the local store write in the context it needs (the RocksDB store files a write under the current
#: event's partition).
StoreContext = Callable[[], contextlib.AbstractContextManager[Any]]


class KafkaBatches:
    """The worker's own idempotent ``acks=all`` producer: changelog writes and outputs as aiokafka record batches
    (Faust's ``Topic.send`` costs ~100 µs a message, aiokafka's ``send`` ~15 µs, an append to a batch far less)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        await self._ensure()

    async def _ensure(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                producer = durable_producer(self._settings)
                await producer.start()
                self._producer = producer
            return self._producer

    async def send_one(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        """One record, partitioned by its key (Kafka's default partitioner); the future resolves on Kafka's ack."""
        producer = await self._ensure()
        return await producer.send(topic, value, key=key)

    async def send_keyed(self, topic: str, records: list[tuple[bytes, bytes]]) -> list[asyncio.Future[int]]:
        """Keyed records in one record batch per partition, each to the partition :meth:`send_one` would pick
        (Kafka's default partitioner), in order within a partition; a future per batch, as :meth:`send`.
        An append to a batch instead of a ``send`` a record: an alert storm is thousands of outputs."""
        producer = await self._ensure()
        partitions = len(await producer.partitions_for(topic))
        groups: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in records:
            groups.setdefault(partition_for(key.decode(), partitions), []).append((key, value))
        return [await self.send(topic, partition, pairs) for partition, pairs in groups.items()]

    async def send_to(self, topic: str, partition: int, value: bytes) -> asyncio.Future[Any]:
        """One keyless record to an explicit partition (the live clock's ticks), not awaited by the caller."""
        producer = await self._ensure()
        future = await producer.send(topic, value, partition=partition)
        future.add_done_callback(_quiet)
        return future

    async def send(self, topic: str, partition: int, records: list[tuple[bytes, bytes]]) -> asyncio.Future[int]:
        producer = await self._ensure()
        sent: list[tuple[asyncio.Future[Any], int]] = []
        batch = producer.create_batch()
        count = 0
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                sent.append((await producer.send_batch(batch, topic, partition=partition), count))
                batch, count = producer.create_batch(), 0
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a {len(value)}-byte state does not fit in a {MAX_BATCH_BYTES}-byte batch")
            count += 1
        if count:
            sent.append((await producer.send_batch(batch, topic, partition=partition), count))
        return asyncio.ensure_future(_last_offset(sent))

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


async def _last_offset(sent: list[tuple[asyncio.Future[Any], int]]) -> int:
    metas = await asyncio.gather(*(f for f, _ in sent))
    return int(metas[-1].offset) + sent[-1][1] - 1


class TableWriter:
    """Bulk writes into one Faust table: the changelog in one record batch now, the local store once Kafka has
    it (:meth:`settle`)."""

    def __init__(
        self,
        table: Any,
        send: SendBatch,
        *,
        retry_s: float = 0.5,
        stats: Stats | None = None,
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        """``stats``: where the time spent writing goes (``busy_store_seconds``, by ``clock``), if anywhere."""
        self.table = table
        self._send = send
        self._retry_s = retry_s
        self._stats = stats
        self._clock = clock
        #: partition -> batches handed to the producer and not yet settled: (records, future of the last one's
        #: offset, the context their local store write needs).
        self._inflight: dict[int, list[tuple[list[tuple[bytes, bytes]], asyncio.Future[int], StoreContext]]] = {}

    @contextlib.contextmanager
    def _storing(self) -> Iterator[None]:
        """The time spent inside counts as writing states (``busy_store_seconds``), if anything counts it."""
        start = self._clock()
        try:
            yield
        finally:
            if self._stats is not None:
                self._stats.busy_store_seconds += self._clock() - start

    @property
    def topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    async def write(self, partition: int, records: list[tuple[bytes, bytes]], context: StoreContext) -> None:
        """Send ``records`` (key, state bytes) of ``partition`` to the changelog; :meth:`settle` writes them to the
        local store once Kafka has them."""
        if not records:
            return
        with self._storing():
            # Hands the batch to the producer: it suspends only when the producer's buffer is full.
            future = await self._send(self.topic, partition, records)
        self._inflight.setdefault(partition, []).append((records, future, context))

    def settled(self, partition: int) -> bool:
        """Whether Kafka has acknowledged every batch written for ``partition`` (a failed one: False)."""
        return all(
            future.done() and not future.cancelled() and future.exception() is None
            for _records, future, _context in self._inflight.get(partition, [])
        )

    async def settle(self, partition: int) -> None:
        """Return once Kafka has every batch written for ``partition``; write each to the local store as it is
        known to be there, in order, and then record the persisted offset (see the module's docstring)."""
        inflight = self._inflight.pop(partition, [])
        last = -1
        for records, future, context in inflight:
            delay = self._retry_s
            while True:
                try:
                    last = max(last, await future)
                    break
                except KafkaError as exc:
                    log.warning("changelog batch for partition %d not acknowledged (%s); resending", partition, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    with contextlib.suppress(KafkaError):
                        future = await self._send(self.topic, partition, records)
            with self._storing():
                put_all(self.table.data, partition, records, context)
        if last >= 0:
            # Recovery resumes from here instead of re-reading the whole changelog partition.
            self.table.data.set_persisted_offset(TP(self.topic, partition), last)

    def drop(self, partitions: list[int]) -> None:
        """Forget revoked partitions' unsettled batches (their records were never acked: they are re-read)."""
        for p in partitions:
            for _records, future, _context in self._inflight.pop(p, []):
                future.add_done_callback(_quiet)


def put_all(store: Any, partition: int, records: list[tuple[bytes, bytes]], context: StoreContext) -> None:
    """Write ``records`` into the table's local ``store`` for ``partition``.

    Faust's RocksDB store puts one key at a time, each looking up the current event (for its partition) and the
    partition's database: ~6 % of the worker's CPU in py-spy at 10,000 devices. A RocksDB write batch per flush
    is one call, as Faust itself does when it applies a changelog batch at recovery (``apply_changelog_batch``,
    the same write batch). The keys and values are raw bytes (the tables' serializers are
    ``raw``), so nothing is encoded on the way. Other stores (the in-memory one of tests) go key by key."""
    if not getattr(store, "use_rocksdict", False):
        with context():
            for key, value in records:
                store[key] = value
        return
    batch = rocksdict.WriteBatch(raw_mode=True)
    for key, value in records:
        batch.put(key, value)
    store._db_for_partition(partition).write(batch)
    # Faust's key -> partition index is a 1,000-entry cache its reads fill on a miss (a key's partition never
    # changes: tables are co-partitioned with their source); recovery does not fill it either.


def _quiet(future: asyncio.Future[int]) -> None:
    # Nobody awaits a dropped batch; retrieve its exception so asyncio does not report it as lost.
    if not future.cancelled():
        future.exception()
