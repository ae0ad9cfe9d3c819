"""Contract 6 over MQTT: an instrument publishes the same body as ``POST /v1/rapid-tests`` (one result or
``{"results": [...]}``) to ``larder/v1/instruments/<instrument-id>/results`` as its own MQTT user (the ACL lets it
publish there only). The bridge hands such messages here: the results become one ``rapid_tests`` record for the
instrument's site (the same items the hook produces), the malformed ones dead letters with their reason.

No signature: the broker authenticated the instrument (password) and the ACL pinned the topic to its user name.
No de-dup here: QoS 1 redeliveries reach Kafka again and the worker drops them by (instrument, result_id).
"""

from __future__ import annotations

from typing import Any

from pipeline.contracts.models import topic_id
from pipeline.contracts.rapidtest import KIND, MQTT_RESULTS_TOPIC, enrich, validate_results
from pipeline.contracts.records import mqtt_dead_letter, rapid_tests_value, refusal_dead_letters
from pipeline.ingest.registry import Registry
from pipeline.ingest.validate import BAD_TOPIC
from pipeline.partitioner import partition_for
from pipeline.topics import Topics

PREFIX, _, SUFFIX = MQTT_RESULTS_TOPIC.partition("{instrument}")
SUBSCRIPTION = f"{PREFIX}+{SUFFIX}"
UNKNOWN_INSTRUMENT = "unknown_instrument"

#: (topic, key, value, partition, items, kind): the fields of the bridge's Kafka record.
Out = tuple[str, bytes, bytes, int, int, str]


def is_instrument_topic(topic: str) -> bool:
    return topic.startswith(PREFIX)


def instrument_of(topic: str) -> str | None:
    return topic_id(MQTT_RESULTS_TOPIC, topic)


def records_for(
    topic: str, payload: bytes, reg: Registry, now_ms: int, skew_ms: int, partitions: int, topics: Topics
) -> tuple[list[Out], list[str]]:
    """One MQTT message -> (Kafka records, reason codes of what was dead-lettered)."""
    instrument = instrument_of(topic)
    info = reg.instruments.get(instrument) if instrument is not None else None
    dl = topics.deadletter
    if info is None:
        code = BAD_TOPIC if instrument is None else UNKNOWN_INSTRUMENT
        reason = f"instrument {instrument} is not in the site configuration" if instrument else f"bad topic {topic}"
        value = mqtt_dead_letter(topic, payload, now_ms, code, reason, instrument=instrument)
        return [(dl, (instrument or "").encode(), value, 0, 1, "deadletter")], [code]
    assert instrument is not None
    ok, bad = validate_results(payload, now_ms, skew_ms)
    out: list[Out] = []
    items: list[dict[str, Any]] = [
        enrich(r, instrument=instrument, instrument_type=info.type, site=info.site, received_ms=now_ms) for _, r in ok
    ]
    if items:
        value = rapid_tests_value(items)
        out.append(
            (topics.rapid_tests, info.site.encode(), value, partition_for(info.site, partitions), len(items), KIND)
        )
    for value in refusal_dead_letters(bad, source="mqtt", arrived_ms=now_ms, mqtt_topic=topic, instrument=instrument):
        out.append((dl, instrument.encode(), value, 0, 1, "deadletter"))
    return out, [code for _, code, _, _ in bad]
