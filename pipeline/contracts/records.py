"""Kafka record values, built and read in one place (version 1 of every internal topic).

Producers call the builders, consumers the readers, so the envelope ``{"v": 1, "kind": ...}`` and the JSON
form of every record are written once. The batch builders take items that are already plain dicts (the
:class:`~pipeline.contracts.models.Reading` / :class:`~pipeline.contracts.models.KitchenEvent` shape): they run
on the hot path at hundreds of thousands of readings a second, where a pydantic model per item would cost more
than everything else (see DESIGN.md, "the hot path"). The low-rate records (alerts, annotations, acks,
deliveries, dead letters written by the worker) go through their pydantic models.

| topic | key | value |
|---|---|---|
| readings | device id of the first item | :func:`readings_value` / :func:`tick_value` |
| kitchen events | kitchen id of the first item | :func:`kitchen_events_value`, :func:`kitchen_verdicts_value`, ticks |
| alerts, annotations, acks | site | :func:`encode` of :class:`Alert` / :class:`Annotation` / :class:`Ack` |
| deliveries | message id | :func:`encode` of :class:`Delivery` |
| dead letters | device or camera id, or none | :func:`dead_letter_value` / :func:`encode` of :class:`DeadLetter` |
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pipeline import serde
from pipeline.contracts.models import BATCH_VERSION, Ack, Alert, Annotation, DeadLetter, Delivery

BatchKind = Literal["readings", "kitchen_events", "kitchen_verdicts", "rapid_tests"]
Record = Alert | Annotation | Ack | Delivery | DeadLetter

# ---------------------------------------------------------------------------------------------------------------
# Record batches: readings, kitchen events and ticks (:class:`~pipeline.contracts.models.RecordBatch`)
# ---------------------------------------------------------------------------------------------------------------


def batch_value(kind: BatchKind, items: list[dict[str, Any]]) -> bytes:
    """One record of a batch topic. Every item must belong to the partition the record is produced to."""
    return serde.dumps({"v": BATCH_VERSION, "kind": kind, "items": items})


def readings_value(items: list[dict[str, Any]]) -> bytes:
    return batch_value("readings", items)


def kitchen_events_value(items: list[dict[str, Any]]) -> bytes:
    return batch_value("kitchen_events", items)


def kitchen_verdicts_value(items: list[dict[str, Any]]) -> bytes:
    """Verdicts on hygiene alerts for the kitchen rules (:class:`~pipeline.contracts.models.KitchenVerdict`),
    on the kitchen-events topic in the kitchen's partition."""
    return batch_value("kitchen_verdicts", items)


def rapid_tests_value(items: list[dict[str, Any]]) -> bytes:
    """Rapid-test results of one site partition (contract 6, :mod:`pipeline.contracts.rapidtest`)."""
    return batch_value("rapid_tests", items)


def tick_value(now_ms: int) -> bytes:
    """A tick: the clock of the partition it is produced to (live: wall time; replay: the recording's)."""
    return serde.dumps({"v": BATCH_VERSION, "kind": "tick", "now_ms": now_ms})


class BadRecord(ValueError):
    """A record that is not a batch of the expected kind; ``code`` is the dead letter's ``reason_code``."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded batch record: ``items`` for data records, ``now_ms`` for ticks."""

    kind: Literal["readings", "kitchen_events", "kitchen_verdicts", "rapid_tests", "tick"]
    items: list[Any]
    now_ms: int = 0


def read_batch(value: bytes, expect: BatchKind, also: BatchKind | None = None) -> Batch:
    """Decode one record of a batch topic carrying ``expect`` records (or ``also`` records, or ticks), strictly.

    Raises :class:`BadRecord` (``worker.bad_record`` or ``worker.bad_tick``) with the reason; the items
    themselves are not checked here (each is checked by its consumer, so one bad item costs only itself).
    """
    try:
        batch = serde.loads(value)
    except serde.JSONDecodeError as exc:
        raise BadRecord("worker.bad_record", str(exc)) from None
    if not isinstance(batch, dict) or batch.get("v") != BATCH_VERSION:
        raise BadRecord("worker.bad_record", "not a version 1 RecordBatch")
    kind = batch.get("kind")
    if kind == "tick":
        now = batch.get("now_ms")
        if not isinstance(now, int) or isinstance(now, bool):
            raise BadRecord("worker.bad_tick", "tick without integer now_ms")
        return Batch("tick", [], now)
    if kind != expect and (also is None or kind != also):
        raise BadRecord("worker.bad_record", f"kind {kind!r} on a {expect} topic")
    items = batch.get("items")
    if not isinstance(items, list):
        raise BadRecord("worker.bad_record", "items is not a list")
    return Batch(kind, items)


def batch_items(value: bytes | Mapping[str, Any], kind: BatchKind) -> list[Any]:
    """The items of a batch record if it is one of ``kind``, else none (ticks, other kinds): for observers
    (the sink, replay's progress watch, the recorder, benchmarks) that skip what is not theirs."""
    batch = serde.loads(value) if isinstance(value, bytes | bytearray | memoryview) else value
    if not isinstance(batch, Mapping) or batch.get("kind") != kind:
        return []
    items = batch.get("items", ())
    return items if isinstance(items, list) else list(items)


# ---------------------------------------------------------------------------------------------------------------
# One event per record: alerts, annotations, acks, deliveries, dead letters
# ---------------------------------------------------------------------------------------------------------------


#: Models whose JSON is their fields as they are (no aliases, serializers or computed fields: unit-tested), so
#: their values are dumped straight from the fields. They are the worker's outputs, thousands of them in an alert
#: storm: ``model_dump(mode="json")`` then took 5.7 µs an output against 3.2 µs this way, for the same bytes (3,959
#: alerts and annotations of ``benchmarks.detection``'s readings).
PLAIN_JSON_MODELS: tuple[type[Alert | Annotation], ...] = (Alert, Annotation)


def encode(record: Record) -> bytes:
    """The value of a record (JSON of its model, enums as their values)."""
    if type(record) in PLAIN_JSON_MODELS:
        try:
            return serde.dumps_plain(record.__dict__)
        except TypeError:
            pass  # a datetime or a dataclass in the evidence: pydantic's JSON form of it, below
    return serde.dumps(record.model_dump(mode="json"))


def read_alert(value: bytes | str) -> Alert:
    """Raises ``ValueError`` (pydantic's ``ValidationError`` is one) for anything that is not an alert."""
    return Alert.model_validate_json(value)


def read_annotation(value: bytes | str) -> Annotation:
    return Annotation.model_validate_json(value)


def read_ack(value: bytes | str) -> Ack:
    return Ack.model_validate_json(value)


def read_delivery(value: bytes | str) -> Delivery:
    return Delivery.model_validate_json(value)


def read_dead_letter(value: bytes | str) -> DeadLetter:
    return DeadLetter.model_validate_json(value)


def dead_letter_value(
    *,
    source: Literal["mqtt", "hook"],
    reason_code: str,
    reason: str,
    arrived_ms: int,
    payload: bytes,
    device: str | None = None,
    camera: str | None = None,
    mqtt_topic: str | None = None,
    index: int | None = None,
    instrument: str | None = None,
) -> bytes:
    """A serialised :class:`DeadLetter`; built as a dict because it runs on the bridge's error path at flood
    rates (the same fields, in the same order, as ``encode(DeadLetter(...))``; ``instrument`` only when set:
    contract 6's refusals name the instrument)."""
    return serde.dumps(
        {
            "v": 1,
            "source": source,
            "reason_code": reason_code,
            "reason": reason,
            "arrived_ms": arrived_ms,
            "device": device,
            "camera": camera,
            "mqtt_topic": mqtt_topic,
            "index": index,
            "payload_b64": base64.b64encode(payload).decode(),
            **({"instrument": instrument} if instrument is not None else {}),
        }
    )


def mqtt_dead_letter(
    topic: str,
    payload: bytes,
    arrived_ms: int,
    reason_code: str,
    reason: str,
    *,
    device: str | None = None,
    instrument: str | None = None,
) -> bytes:
    """The dead letter of a whole MQTT message the bridge cannot route (an unknown device or instrument, a topic
    that names none), with its topic and sender (``device=`` or ``instrument=``): the refusal of the whole
    message, so no batch index."""
    refusal = (None, reason_code, reason, payload)
    sender = {"mqtt_topic": topic, "device": device, "instrument": instrument}
    (value,) = refusal_dead_letters([refusal], source="mqtt", arrived_ms=arrived_ms, **sender)
    return value


def refusal_dead_letters(
    bad: Iterable[tuple[int | None, str, str, bytes]],
    *,
    source: Literal["mqtt", "hook"],
    arrived_ms: int,
    **sender: str | None,
) -> list[bytes]:
    """One dead letter per refused part of a request ``(index, reason code, reason, bytes)``, each naming its
    sender (``camera=``, ``instrument=``, ``mqtt_topic=``): what the hook routes and the bridge's rapid-test
    path produce for the bad elements of a batch."""
    return [
        dead_letter_value(
            source=source, reason_code=code, reason=reason, arrived_ms=arrived_ms, payload=raw, index=index, **sender
        )
        for index, code, reason, raw in bad
    ]


def dead_letter_payload(letter: DeadLetter | Mapping[str, Any]) -> bytes:
    """The refused bytes a dead letter keeps."""
    b64 = letter.payload_b64 if isinstance(letter, DeadLetter) else letter["payload_b64"]
    return base64.b64decode(b64)
