"""Prometheus metrics of the bridge and the hooks (prometheus-client; names documented in docs/ingest.md).

Counters are bumped once per linger tick with the tick's totals, not once per message: a labelled
``inc()`` takes a lock, which would cost more than validating a reading.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACCEPTED = Counter("larder_ingest_accepted_total", "Readings/events accepted into Kafka", ["source"])
DEAD_LETTERED = Counter(
    "larder_ingest_deadlettered_total", "Messages or elements sent to the dead-letter topic", ["source", "reason"]
)
DUPLICATES = Counter(
    "larder_ingest_duplicates_total",
    "Redeliveries seen: MQTT messages with the DUP flag (bridge), replayed event ids (hooks)",
    ["source"],
)
BATCH_SIZE = Histogram(
    "larder_ingest_batch_items",
    "Items in one Kafka record (RecordBatch)",
    ["source"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000),
)
PRODUCE_SECONDS = Histogram(
    "larder_ingest_produce_seconds",
    "From handing a tick's records to the producer until Kafka acknowledged all of them (acks=all)",
    ["source"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
)
INFLIGHT = Gauge("larder_ingest_inflight_messages", "MQTT messages received and not yet acknowledged to the broker")
HOOK_REQUESTS = Counter("larder_hooks_requests_total", "Hook requests by HTTP status", ["status"])
