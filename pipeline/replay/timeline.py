"""The alert timeline: read the alerts topic (contract 4 lifecycle events) and print it as JSONL.

A timeline is complete once the worker has processed everything that was sent: :func:`wait_processed` waits
until the worker's consumer group (``<prefix>-worker``) has committed the end offsets of the readings and
kitchen-events topics, then :func:`read_alerts` reads the alerts topic up to its end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from pipeline import serde
from pipeline.contracts import records
from pipeline.contracts.models import Alert, ms_to_iso
from pipeline.settings import Settings
from pipeline.topics import Topics


def worker_group(topics: Topics) -> str:
    return f"{topics.prefix}-worker"


async def _end_offsets(settings: Settings, names: Iterable[str]) -> dict[Any, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False)
    await c.start()
    try:
        parts = [TopicPartition(n, p) for n in names for p in sorted(c.partitions_for_topic(n) or ())]
        if not parts:
            await c._client.force_metadata_update()
            parts = [TopicPartition(n, p) for n in names for p in sorted(c.partitions_for_topic(n) or ())]
        return dict(await c.end_offsets(parts)) if parts else {}
    finally:
        await c.stop()


async def wait_processed(settings: Settings, topics: Topics, *, timeout: float = 120.0) -> float:
    """Wait until the worker group has committed every record now in its source topics; returns seconds waited."""
    from aiokafka.admin import AIOKafkaAdminClient

    t0 = time.monotonic()
    ends = await _end_offsets(settings, (topics.readings, topics.kitchen_events, topics.rapid_tests))
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        while True:
            committed = await admin.list_consumer_group_offsets(worker_group(topics))
            behind = {tp: end for tp, end in ends.items() if (committed.get(tp).offset if tp in committed else 0) < end}
            if not behind:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                where = ", ".join(
                    f"{tp.topic}[{tp.partition}] committed {committed[tp].offset if tp in committed else '-'} of {end}"
                    for tp, end in sorted(behind.items())
                )
                raise TimeoutError(
                    f"the worker ({worker_group(topics)}) has not processed {len(behind)} partitions within "
                    f"{timeout:.0f} s ({where}); is `larder worker` running with --clock replay?"
                )
            await asyncio.sleep(0.3)
    finally:
        await admin.close()


async def read_alerts(settings: Settings, topics: Topics, *, settle_s: float = 1.0) -> list[Alert]:
    """Every alert event on the alerts topic, from the beginning to its end (after ``settle_s`` for in-flight)."""
    from aiokafka import AIOKafkaConsumer

    await asyncio.sleep(settle_s)
    ends = await _end_offsets(settings, (topics.alerts,))
    out: list[Alert] = []
    if not any(ends.values()):
        return out
    c = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await c.start()
    try:
        c.assign(list(ends))
        await c.seek_to_beginning(*ends)
        done = {tp for tp, end in ends.items() if end == 0}
        deadline = time.monotonic() + 60
        while len(done) < len(ends) and time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=500)
            for tp, recs in batch.items():
                for r in recs:
                    if r.offset < ends[tp] and r.value is not None:
                        out.append(records.read_alert(r.value))
                    if r.offset + 1 >= ends[tp]:
                        done.add(tp)
    finally:
        await c.stop()
    return sort_alerts(out)


def sort_alerts(alerts: Iterable[Alert]) -> list[Alert]:
    order = {"open": 0, "escalated": 1, "acknowledged": 2, "resolved": 3}
    return sorted(alerts, key=lambda a: (a.at_ms, a.alert_id, order.get(a.state.value, 9)))


def timeline_record(a: Alert) -> dict[str, Any]:
    """One timeline line: when the transition happened (event time), then the contract-4 record."""
    return {"at": ms_to_iso(a.at_ms), **a.record()}


def timeline_jsonl(alerts: Iterable[Alert]) -> bytes:
    return b"".join(serde.dumps(timeline_record(a)) + b"\n" for a in sort_alerts(alerts))


def identity(alerts: Iterable[Alert]) -> list[tuple[str, str, str, int, str, str | None]]:
    """What two runs must agree on: ids, rules, transitions and their event times."""
    return [(a.alert_id, a.rule, a.state.value, a.at_ms, a.opened_at, a.resolved_at) for a in sort_alerts(alerts)]
