"""The one way the pipeline's processes make a Kafka producer.

Idempotent with acks=all everywhere: a retried send never duplicates within a producer session, and an ack
means every in-sync replica has the record, so a process may acknowledge its own input (an MQTT PUBACK, a
202, a committed offset) once the future resolves. Callers tune batching only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.settings import Settings

log = logging.getLogger(__name__)

#: Largest record batch a producer builds; the broker's default message.max.bytes is ~1 MB.
MAX_BATCH_BYTES = 1_000_000


def durable_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka.bootstrap_servers,
        "acks": "all",
        "enable_idempotence": True,
        # Callers hand over batches they already made (bridge, hooks, table changelogs): waiting only adds latency.
        "linger_ms": 0,
        "max_batch_size": MAX_BATCH_BYTES,
        "max_request_size": 4 * MAX_BATCH_BYTES,
        "request_timeout_ms": 30_000,
    }
    return AIOKafkaProducer(**(options | overrides))


async def until_kafka_takes(send: Callable[[], Awaitable[object]], what: str) -> None:
    """Run ``send`` (produce and await the acks) again, with back-off, until Kafka has taken everything.

    For records whose input is already acknowledged or whose effect is already in memory (an MQTT tick to
    PUBACK, a worker's outputs, a delivery's ledger record): giving up would lose them. A retry may duplicate
    records Kafka took in the failed round; their consumers de-duplicate.
    """
    delay = 0.5
    while True:
        try:
            await send()
            return
        except KafkaError as exc:
            log.warning("Kafka did not take %s (%s); sending again in %.1f s", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
