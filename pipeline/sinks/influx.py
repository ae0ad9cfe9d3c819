"""`larder sink`: everything on Kafka lands in InfluxDB exactly once per point, and nothing is lost.

One consumer group reads the readings, kitchen-events, alerts, annotations and deliveries topics. Each poll
becomes line protocol (:mod:`pipeline.sinks.lineproto`), is written in batches of ``notify.sink_batch`` points
(gzip optional) and **only then** are the Kafka offsets committed. While InfluxDB is away the sink keeps
retrying the same batch with capped exponential backoff and reads nothing new: an outage is back-pressure
(consumer lag), never loss. After a crash, the batch that was written but not committed is read and written
again, which is harmless because a point with the same series and timestamp overwrites itself.

A record that cannot be decoded is logged and skipped (with a count), never retried forever: it would block its
partition. A point InfluxDB refuses as malformed (HTTP 400, e.g. a field type conflict) is dropped the same way.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.rest import ApiException
from influxdb_client.service.write_service import WriteService

from pipeline import serde
from pipeline.console import records as console_records
from pipeline.contracts import records
from pipeline.settings import Settings
from pipeline.sinks import lineproto
from pipeline.topics import Topics

log = logging.getLogger("larder.sink")


@dataclass
class SinkStats:
    points: int = 0
    records: int = 0
    batches: int = 0
    retries: int = 0
    skipped: int = 0
    dropped_points: int = 0
    last_error: str = ""
    started: float = field(default_factory=time.monotonic)


class InfluxWriter:
    """Blocking v2 writes of ready line protocol, used from a worker thread; retries are the caller's business.

    Straight through the client's generated ``WriteService`` rather than ``write_api``: the lines are already
    line protocol, so the write API's per-line type dispatch and its gzip at zlib's level 9 are pure cost
    (3.4 µs a line here, against 0.45 µs at level 1 for 8x instead of 10.5x smaller bodies).
    """

    def __init__(self, settings: Settings, bucket: str | None = None) -> None:
        i = settings.influx
        self.bucket = bucket or i.bucket
        self._org = i.org
        self._gzip = settings.notify.sink_gzip
        self._client = InfluxDBClient(
            url=i.base_url,
            token=i.token_value(),
            org=i.org,
            timeout=30_000,
            retries=False,  # our loop retries, with backoff and without giving up
        )
        self._service = WriteService(self._client.api_client)

    def write(self, lines: list[str], precision: str) -> None:
        body = "\n".join(lines).encode()
        extra = {}
        if self._gzip:
            body = gzip.compress(body, compresslevel=1)
            extra["content_encoding"] = "gzip"
        self._service.post_write(
            org=self._org,
            bucket=self.bucket,
            body=body,
            precision=precision,
            content_type="text/plain; charset=utf-8",
            **extra,
        )

    def close(self) -> None:
        self._client.close()


def _permanent(exc: BaseException) -> bool:
    """400 = InfluxDB parsed the batch and refused points (type conflict, bad line): retrying cannot help."""
    return isinstance(exc, ApiException) and exc.status == 400


class InfluxSink:
    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        *,
        bucket: str | None = None,
        group_id: str = "larder-sink",
        progress: Callable[[SinkStats], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.writer = InfluxWriter(settings, bucket)
        self.group_id = group_id
        self.stats = SinkStats()
        self._progress = progress
        self._n = settings.notify
        #: Chunks written at once; 2 keeps both cores busy (our decoding, InfluxDB's parsing) on a small box.
        self.concurrency = 2
        #: Kafka records per poll: readings records hold hundreds of readings, so this bounds memory per poll.
        self.max_records = 200

    def _lines(self, topic: str, value: bytes) -> tuple[list[str], list[str]]:
        """(millisecond lines, nanosecond lines) for one Kafka record."""
        t = self.topics
        if topic in (t.readings, t.kitchen_events):
            # nanoseconds: readings of one device in the same millisecond stay apart (lineproto)
            return [], list(lineproto.batch_lines(serde.loads(value)))
        if topic == t.alerts:
            return [], [lineproto.alert_line(records.read_alert(value))]
        if topic == t.annotations:
            return [], [lineproto.annotation_line(records.read_annotation(value))]
        if topic == t.deliveries:
            return [], [lineproto.delivery_line(records.read_delivery(value))]
        return [], console_records.sink_lines(t, topic, serde.loads(value)) or []

    async def _write_chunk(self, chunk: list[str], precision: str, stop: asyncio.Event) -> bool:
        """Write one chunk, retrying until InfluxDB takes it. False if stopped first."""
        delay = self._n.backoff_s
        while True:
            try:
                await asyncio.to_thread(self.writer.write, chunk, precision)
                self.stats.points += len(chunk)
                self.stats.batches += 1
                return True
            except Exception as exc:
                if _permanent(exc):
                    self.stats.dropped_points += len(chunk)
                    log.error("InfluxDB refused %d points as malformed: %s", len(chunk), str(exc)[:300])
                    return True
                self.stats.retries += 1
                self.stats.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.warning("InfluxDB write failed (%s); retrying in %.1f s", self.stats.last_error, delay)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                    return False
                except TimeoutError:
                    pass
                delay = min(delay * 2, self._n.backoff_max_s)

    async def _handle(self, polled: dict[TopicPartition, list[Any]], stop: asyncio.Event) -> bool:
        """Lines for one poll, written in chunks; True once InfluxDB acknowledged every chunk.

        Up to ``concurrency`` chunks are in flight (each in a thread) while the next chunk's lines are built, so
        decoding here overlaps InfluxDB's parsing there. Order between chunks does not matter: every point is
        keyed by series and time.
        """
        size = self._n.sink_batch
        slots = asyncio.Semaphore(self.concurrency)
        tasks: list[asyncio.Task[bool]] = []

        async def write(chunk: list[str], precision: str) -> bool:
            try:
                return await self._write_chunk(chunk, precision, stop)
            finally:
                slots.release()

        async def submit(chunk: list[str], precision: str) -> None:
            await slots.acquire()
            tasks.append(asyncio.create_task(write(chunk, precision)))
            await asyncio.sleep(0)  # let the write start its thread before building more lines

        ms_lines: list[str] = []
        ns_lines: list[str] = []
        for tp, recs in polled.items():
            for rec in recs:
                self.stats.records += 1
                if rec.value is None:
                    continue
                try:
                    a, b = self._lines(tp.topic, rec.value)
                except Exception as exc:  # any shape of bad record: skipping it must not stop every topic
                    self.stats.skipped += 1
                    log.error(
                        "skipping undecodable record %s@%d: %s: %s", tp, rec.offset, type(exc).__name__, str(exc)[:200]
                    )
                    continue
                ms_lines.extend(a)
                ns_lines.extend(b)
                if len(ms_lines) >= size:
                    await submit(ms_lines[:size], WritePrecision.MS)
                    ms_lines = ms_lines[size:]
                if len(ns_lines) >= size:
                    await submit(ns_lines[:size], WritePrecision.NS)
                    ns_lines = ns_lines[size:]
        for lines, precision in ((ms_lines, WritePrecision.MS), (ns_lines, WritePrecision.NS)):
            for start in range(0, len(lines), size):
                await submit(lines[start : start + size], precision)
        results = await asyncio.gather(*tasks)
        return all(results)

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> SinkStats:
        t = self.topics
        consumer = AIOKafkaConsumer(
            t.readings,
            t.kitchen_events,
            t.alerts,
            t.annotations,
            t.deliveries,
            t.acks,
            t.audit,
            t.verdicts,
            t.resolutions,
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # While InfluxDB is down the sink does not poll; without this the group would evict it after 5 min
            # and another member would re-read the same batch (harmless, but pointless churn).
            max_poll_interval_ms=24 * 3600 * 1000,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            # InfluxDB's cost per write request is large next to its cost per point: at a few thousand readings
            # a second, polling as fast as possible writes a few hundred points a time. Let the broker gather
            # ~256 KiB (~2,000 readings) or wait sink_linger_ms, whichever first.
            fetch_min_bytes=256 * 1024,
            fetch_max_wait_ms=self._n.sink_linger_ms,
        )
        await consumer.start()
        if ready is not None:
            ready.set()
        last_report = time.monotonic()
        try:
            while not stop.is_set():
                polled = await consumer.getmany(timeout_ms=500, max_records=self.max_records)
                if polled and not await self._handle(polled, stop):
                    break  # stopped while InfluxDB was refusing: these offsets stay uncommitted
                if polled:
                    try:
                        await consumer.commit({tp: recs[-1].offset + 1 for tp, recs in polled.items()})
                    except CommitFailedError as exc:
                        # A rebalance took the partitions away; their new owner re-writes the same points.
                        log.warning("offset commit refused after rebalance: %s", exc)
                if self._progress and time.monotonic() - last_report > 5:
                    last_report = time.monotonic()
                    self._progress(self.stats)
        finally:
            await consumer.stop()
            self.writer.close()
        return self.stats
