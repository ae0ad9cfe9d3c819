"""Reading whole topics: the notifier and the ack API rebuild their state by folding topics from the start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from pipeline.settings import Settings

Offsets = dict[TopicPartition, int]


async def _partitions(consumer: AIOKafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    tps: list[TopicPartition] = []
    for topic in topics:
        parts = consumer.partitions_for_topic(topic)
        for _ in range(50):
            if parts:
                break
            await consumer._client.force_metadata_update()  # no public call refreshes a group-less consumer
            await asyncio.sleep(0.1)
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise RuntimeError(f"topic {topic} does not exist; run `larder stack up` (it creates topics)")
        tps.extend(TopicPartition(topic, p) for p in sorted(parts))
    return tps


def make_consumer(settings: Settings) -> AIOKafkaConsumer:
    """A group-less consumer: these readers own no offsets, they always fold from the start."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def read_to_end(settings: Settings, topics: list[str], handle: Callable[[ConsumerRecord], None]) -> Offsets:
    """Feed every record now in ``topics`` to ``handle`` in partition order; returns the end offsets reached."""
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topics)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends: Offsets = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batch.items():
                for rec in records:
                    if rec.offset < ends[tp]:
                        handle(rec)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return ends
    finally:
        await consumer.stop()


async def tail(
    settings: Settings, topics: list[str], start: Offsets, stop: asyncio.Event, timeout_ms: int = 500
) -> AsyncIterator[list[ConsumerRecord]]:
    """Records from ``start`` (end offsets of :func:`read_to_end`) on; yields a (maybe empty) list per poll."""
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topics)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start.get(tp, 0))
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=timeout_ms)
            yield [rec for records in batch.values() for rec in records]
    finally:
        await consumer.stop()
