"""The InfluxDB sink against the real Kafka and InfluxDB: schema, and no loss or duplicates across an outage."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.contracts import records
from pipeline.partitioner import partition_for
from pipeline.schemas import Annotation, Delivery
from pipeline.settings import Settings
from pipeline.sinks.influx import InfluxSink
from pipeline.stack import influx
from pipeline.stack.process import read_pid, stop_pid, wait_until
from pipeline.testing import batch_records, eventually, reading_item
from pipeline.topics import Topics
from tests.alerts_support import Service, flux, make_alert, notify_settings, produce

#: The issue asks for InfluxDB to be stopped for 2 minutes; the default run stops it for a shorter time (CI
#: time) with the very same mechanism (SIGTERM to the stack's influxd by its pid file, start it again).
#: LARDER_TEST_INFLUX_OUTAGE_S=120 runs the full-length version.
INFLUX_OUTAGE_S = float(os.environ.get("LARDER_TEST_INFLUX_OUTAGE_S", "20"))

# exclusive: the outage test stops the shared InfluxDB, which every other module's test would see.
pytestmark = [pytest.mark.integration, pytest.mark.exclusive, pytest.mark.timeout(240 + 2 * INFLUX_OUTAGE_S)]
T0 = 1_795_000_000_000  # 2026-11-18, any fixed event time


def _batches(devices: int, per_device: int, size: int, partitions: int) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, RecordBatch value) records holding devices x per_device readings."""
    items = [
        reading_item(
            f"dev-{d:04d}",
            seq,
            T0 + seq * 60_000,
            2.0 + (seq % 50) / 10,
            site=f"S{d % 7}",
            asset=f"a{d}",
            received_ms=T0 + seq * 60_000 + 150,
        )
        for seq in range(per_device)
        for d in range(devices)
    ]
    return batch_records(items, partitions, per_record=size)


def _influx_down(settings: Settings) -> None:
    pid = read_pid(influx.paths(settings)["pid"])
    assert pid is not None, "this stack's influxd is not running"
    stop_pid(pid)
    assert not influx.healthy(settings)


def _influx_up(settings: Settings) -> None:
    if not influx.healthy(settings):
        influx.start(settings)
        assert wait_until(lambda: influx.healthy(settings), timeout=60), "influxd did not come back"


def _count(settings: Settings, bucket: str, field: str, fn: str = "count") -> float:
    rows = flux(
        settings,
        f'from(bucket: "{bucket}") |> range(start: 2026-01-01T00:00:00Z, stop: 2028-01-01T00:00:00Z)'
        f' |> filter(fn: (r) => r._measurement == "reading" and r._field == "{field}")'
        f" |> group() |> {fn}()",
    )
    return float(rows[0]["_value"]) if rows else 0.0


@pytest.mark.parametrize("outage_s", [INFLUX_OUTAGE_S])
async def test_influx_outage_during_a_flood_loses_nothing_and_duplicates_nothing(
    live_stack: Settings, topics: Topics, influx_bucket: str, outage_s: float
) -> None:
    settings = notify_settings(live_stack, sink_batch=5_000, backoff_s=0.5, backoff_max_s=4.0)
    devices, per_device = 200, 300
    total = devices * per_device
    records = _batches(devices, per_device, 500, topics.partitions)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    sink = InfluxSink(settings, topics, bucket=influx_bucket, group_id=f"sink-{topics.prefix}")
    svc = await Service(sink.run).started()
    try:

        async def flood() -> None:
            for part, key, value in records:
                await producer.send(topics.readings, value, key=key, partition=part)
                await asyncio.sleep(0.04)  # a flood over ~5 s, so the outage cuts through it
            await producer.flush()

        flooding = asyncio.create_task(flood())
        await eventually(lambda: sink.stats.points > 0, 30, "the first points in InfluxDB")
        await asyncio.to_thread(_influx_down, settings)
        down_at = time.monotonic()
        written_when_down = sink.stats.points
        assert written_when_down < total / 2, "the outage must cut through the flood"
        await flooding
        await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
        assert sink.stats.points - written_when_down <= settings.notify.sink_batch, "nothing lands while it is down"
        assert sink.stats.retries > 0, "the sink kept retrying"
        await asyncio.to_thread(_influx_up, settings)
        await eventually(lambda: sink.stats.points >= total, 90, f"{total} points written")
        await asyncio.sleep(1.0)
    finally:
        await producer.stop()
        await asyncio.to_thread(_influx_up, settings)
        stats = await svc.close()

    assert _count(settings, influx_bucket, "temp_c") == total, "every reading is in InfluxDB once"
    assert _count(settings, influx_bucket, "seq", "sum") == devices * sum(range(per_device))
    assert stats.points >= total and stats.skipped == 0
    # Offsets were committed only for what InfluxDB acknowledged, and now everything is acknowledged.
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=f"sink-{topics.prefix}")
    await consumer.start()
    try:
        tps = [TopicPartition(topics.readings, p) for p in range(topics.partitions)]
        ends = await consumer.end_offsets(tps)
        committed = {tp: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()
    assert committed == ends


async def test_alerts_annotations_deliveries_land_with_their_tags(
    live_stack: Settings, topics: Topics, influx_bucket: str
) -> None:
    a = make_alert("S1", "dev-7")
    ann = Annotation(kind="gap", site="S1", subject="dev-7", start_ms=a.at_ms - 600_000, end_ms=a.at_ms - 60_000)
    d = Delivery(
        kind="attempt",
        message_id="m0123456789abcdef",
        at_ms=a.at_ms + 1000,
        recipient="rcp-1",
        role="operator",
        site="S1",
        rule=a.rule,
        severity="warning",
        channel="sms",
        status="retry",
        http_status=500,
        latency_ms=12.5,
        attempt=1,
    )
    await produce(live_stack, topics.alerts, [("S1", a)])
    await produce(live_stack, topics.annotations, [("S1", ann)])
    await produce(live_stack, topics.deliveries, [(d.message_id, d)])
    await produce(live_stack, topics.alerts, [("S1", {"not": "an alert"})])  # skipped, does not block
    await produce(live_stack, topics.alerts, [("S1", a)])  # a duplicate record: the same point
    sink = InfluxSink(live_stack, topics, bucket=influx_bucket, group_id=f"sink-{topics.prefix}")
    svc = await Service(sink.run).started()
    await eventually(lambda: sink.stats.records >= 5, 30, "records consumed")
    await eventually(lambda: sink.stats.points >= 4, 10, "points written")
    stats = await svc.close()
    assert stats.skipped == 1
    q = f'from(bucket: "{influx_bucket}") |> range(start: 2020-01-01T00:00:00Z, stop: 2030-01-01T00:00:00Z)'
    alerts = flux(live_stack, q + ' |> filter(fn: (r) => r._measurement == "alert" and r._field == "alert_id")')
    assert [(r["_value"], r["site"], r["rule"], r["state"], r["severity"], r["subject"]) for r in alerts] == [
        (a.alert_id, "S1", a.rule, "open", "warning", "dev-7")
    ]
    gaps = flux(live_stack, q + ' |> filter(fn: (r) => r._measurement == "annotation" and r._field == "duration_s")')
    assert [(r["kind"], r["_value"]) for r in gaps] == [("gap", 540.0)]
    lat = flux(live_stack, q + ' |> filter(fn: (r) => r._measurement == "delivery" and r._field == "latency_ms")')
    assert [(r["channel"], r["role"], r["status"], r["kind"], r["_value"]) for r in lat] == [
        ("sms", "operator", "retry", "attempt", 12.5)
    ]


async def test_same_millisecond_readings_are_never_merged(
    live_stack: Settings, topics: Topics, influx_bucket: str
) -> None:
    """Issue 27, finding 7: readings of one device stamped in one millisecond (different seq and values) were one
    point in InfluxDB. Now each is its own point, in its own millisecond; the same batch sent twice (a retry)
    still leaves one point per reading."""
    dev = "dev-same-ms"
    items = [
        {"device": dev, "site": "S1", "asset": "a1", "profile": "chilled", "seq": seq, "ts_ms": T0 + seq // 10,
         "temp_c": 2.0 + seq / 100, "received_ms": T0 + 500}
        for seq in range(100)
    ]  # fmt: skip  # 10 readings in each of 10 milliseconds
    value = records.readings_value(items)
    part = partition_for(dev, topics.partitions)
    producer = AIOKafkaProducer(bootstrap_servers=live_stack.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for _ in range(2):
            await producer.send_and_wait(topics.readings, value, key=dev.encode(), partition=part)
    finally:
        await producer.stop()
    sink = InfluxSink(live_stack, topics, bucket=influx_bucket, group_id=f"sink-{topics.prefix}")
    svc = await Service(sink.run).started()
    await eventually(lambda: sink.stats.points >= 200, 30, "both copies written")
    await svc.close()
    rows = flux(
        live_stack,
        f'from(bucket: "{influx_bucket}") |> range(start: 2026-01-01T00:00:00Z, stop: 2028-01-01T00:00:00Z)'
        ' |> filter(fn: (r) => r._measurement == "reading" and r._field == "temp_c")',
    )
    assert len(rows) == 100, f"{len(rows)} points for 100 readings"
    assert sorted(round(r["_value"], 2) for r in rows) == [round(2.0 + s / 100, 2) for s in range(100)]
