"""Kafka's default partitioner for a key, so every client (Java, librdkafka's murmur2_random, aiokafka, ours)
finds a device's or kitchen's partition: ``murmur2(key) & 0x7fffffff mod partitions``."""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=1 << 18)
def partition_for(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
