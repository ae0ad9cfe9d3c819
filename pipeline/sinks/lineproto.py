"""The one place that turns Larder's Kafka records into InfluxDB line protocol (schema in docs/alerts.md).

Measurements:

* ``reading`` -- tags ``site, asset, device, profile``; fields ``temp_c, humidity, battery, door_open, defrost,
  seq, delay_ms``; time = the reading's own ``ts_ms`` plus ``seq mod 1,000,000`` nanoseconds.
* ``alert`` -- one point per lifecycle transition; tags ``site, rule, severity, state, subject``; fields
  ``alert_id, step, age_s, by, role, via, note, evidence``; time = the transition's ``at_ms``.
* ``annotation`` -- tags ``site, subject, kind``; fields ``end_ms, duration_s, detail``; time = ``start_ms``.
* ``delivery`` -- one point per ledger record (planned, each attempt, delivered/failed); tags ``site, rule,
  severity, role, channel, kind, status``; fields ``message_id, recipient, alerts, attempt, http_status,
  latency_ms, error``; time = ``at_ms``.

Why every point is idempotent: InfluxDB keeps one value per (series, timestamp, field), so writing a point again
overwrites it. Readings are unique per (device, seq), not per ``ts_ms``: a device may send two readings stamped
with the same millisecond (different seq, different values), which one point per millisecond merged silently
(4,719 accepted readings became 3,132 points, issue 27). So a reading's time carries its ``seq`` below the
millisecond: still the reading's own millisecond, distinct per seq (unless two seqs of one device in one ms differ
by a multiple of 1,000,000), and the same reading (a QoS 1 duplicate, a retried batch) always lands on the same
nanosecond. Kitchen events likewise carry a sub-millisecond offset from their camera and event id. Alert,
annotation and delivery points of one series may share a millisecond (two alerts of a site opened by the same
reading, a message to three people), so their timestamps carry a deterministic sub-millisecond offset derived
from what makes them unique (alert id + state + step, message id + record kind + attempt): distinct records
never collide, the same record always lands on the same nanosecond.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline import serde
from pipeline.schemas import Alert, Annotation, Delivery

NS_PER_MS = 1_000_000


def _tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ").replace("\n", " ")


def _str_field(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _field(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _str_field(value)
    return _str_field(serde.dumps(value).decode())


def line(measurement: str, tags: Mapping[str, str | None], fields: Mapping[str, Any], ts: int) -> str | None:
    """One line; empty tags are left out, ``None`` fields are left out, and a point without fields is ``None``."""
    tag_part = "".join(f",{k}={_tag(v)}" for k, v in sorted(tags.items()) if v)
    rendered = [(k, _field(v)) for k, v in fields.items()]
    field_part = ",".join(f"{k}={v}" for k, v in rendered if v is not None)
    if not field_part:
        return None
    return f"{_tag(measurement)}{tag_part} {field_part} {ts}"


def record_line(measurement: str, tags: Mapping[str, str | None], fields: Mapping[str, Any], ts: int) -> str:
    """:func:`line` for a record that always has a field (its id): the point of every Kafka record written."""
    out = line(measurement, tags, fields, ts)
    assert out is not None, f"a {measurement} record without fields"
    return out


def sub_ms(ms: int, *discriminator: object) -> int:
    """``ms`` in nanoseconds plus a stable offset below one millisecond, unique per discriminator."""
    digest = hashlib.blake2b("|".join(map(str, discriminator)).encode(), digest_size=8).digest()
    return ms * NS_PER_MS + int.from_bytes(digest, "big") % NS_PER_MS


# -- readings and kitchen events: nanoseconds, the sub-millisecond part from what makes each unique ----------


@functools.lru_cache(maxsize=65_536)
def _reading_series(site: str | None, asset: str | None, device: str | None, profile: str | None) -> str:
    """``reading,<tags>`` for one device: devices repeat, so the escaping is done once per series."""
    tags = (("asset", asset), ("device", device), ("profile", profile), ("site", site))
    return "reading" + "".join(f",{k}={_tag(v)}" for k, v in tags if v)


def reading_ns(ts_ms: int, seq: Any) -> int:
    """A reading's point time: its millisecond, plus its ``seq`` (mod 1,000,000) in nanoseconds."""
    sub = seq % NS_PER_MS if isinstance(seq, int) and not isinstance(seq, bool) else 0
    return ts_ms * NS_PER_MS + sub


def reading_line(item: Mapping[str, Any]) -> str | None:
    """A Reading item of a RecordBatch (a dict, as decoded from Kafka), timestamp in **nanoseconds**.

    The hot path of the sink (every reading passes here), so it builds the line directly instead of through
    :func:`line`; the output is the same (tests compare them).
    """
    get = item.get
    ts = int(item["ts_ms"])
    parts = []
    for name in ("temp_c", "humidity", "battery"):
        v = get(name)
        if isinstance(v, int | float) and not isinstance(v, bool):
            parts.append(f"{name}={float(v)!r}")
    for name in ("door_open", "defrost"):
        v = get(name)
        if isinstance(v, bool):
            parts.append(f"{name}={'true' if v else 'false'}")
    seq = get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool):
        parts.append(f"seq={seq}i")
    received = get("received_ms")
    if isinstance(received, int) and not isinstance(received, bool):
        parts.append(f"delay_ms={received - ts}i")
    if not parts:
        return None
    series = _reading_series(get("site"), get("asset"), get("device"), get("profile"))
    return f"{series} {','.join(parts)} {reading_ns(ts, seq)}"


def reading_line_generic(item: Mapping[str, Any]) -> str | None:
    """The reference form of :func:`reading_line`, through :func:`line` (used by the tests)."""
    received = item.get("received_ms")
    ts = int(item["ts_ms"])
    return line(
        "reading",
        {
            "site": item.get("site"),
            "asset": item.get("asset"),
            "device": item.get("device"),
            "profile": item.get("profile"),
        },
        {
            "temp_c": _float(item.get("temp_c")),
            "humidity": _float(item.get("humidity")),
            "battery": _float(item.get("battery")),
            "door_open": item.get("door_open"),
            "defrost": item.get("defrost"),
            "seq": _int(item.get("seq")),
            "delay_ms": int(received) - ts if isinstance(received, int) and not isinstance(received, bool) else None,
        },
        reading_ns(ts, item.get("seq")),
    )


def kitchen_event_line(item: Mapping[str, Any]) -> str | None:
    """A KitchenEvent item (nanoseconds: two events of one camera and type in one ms stay two points)."""
    return line(
        "kitchen_event",
        {
            "site": item.get("site"),
            "kitchen": item.get("kitchen"),
            "camera": item.get("camera"),
            "type": item.get("type"),
        },
        {
            "event_id": item.get("event_id"),
            "zone": item.get("zone"),
            "confidence": _float(item.get("confidence")),
            "count": _int(item.get("count")),
        },
        sub_ms(int(item["ts_ms"]), item.get("camera"), item.get("event_id")),
    )


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


# -- everything else: the sub-millisecond discriminator from what makes each record unique ------------------


def alert_line(alert: Alert) -> str:
    ev = alert.evidence
    step = ev.get("step") if isinstance(ev.get("step"), int) else None
    opened_ms = ev.get("opened_ms")
    age_s = (alert.at_ms - opened_ms) / 1000 if isinstance(opened_ms, int) else None
    return record_line(
        "alert",
        {
            "site": alert.site,
            "rule": alert.rule,
            "severity": alert.severity.value,
            "state": alert.state.value,
            "subject": alert.subject,
        },
        {
            "alert_id": alert.alert_id,
            "step": step,
            "age_s": age_s,
            "by": ev.get("by") if alert.state.value == "acknowledged" else None,
            "role": ev.get("role") if alert.state.value == "acknowledged" else None,
            "via": ev.get("via") if alert.state.value == "acknowledged" else None,
            "note": ev.get("note") if alert.state.value == "acknowledged" else None,
            "evidence": serde.dumps(ev).decode(),
        },
        sub_ms(alert.at_ms, alert.alert_id, alert.state.value, step),
    )


def annotation_line(a: Annotation) -> str:
    return record_line(
        "annotation",
        {"site": a.site, "subject": a.subject, "kind": a.kind},
        {
            "end_ms": a.end_ms,
            "duration_s": (a.end_ms - a.start_ms) / 1000,
            "detail": serde.dumps(a.detail).decode(),
        },
        sub_ms(a.start_ms, a.kind, a.subject, a.end_ms),
    )


def delivery_line(d: Delivery) -> str:
    return record_line(
        "delivery",
        {
            "site": d.site,
            "rule": d.rule,
            "severity": d.severity,
            "role": d.role,
            "channel": d.channel or (d.channels[0] if d.channels else ""),
            "kind": d.kind,
            "status": d.status,
        },
        {
            "message_id": d.message_id,
            "recipient": d.recipient,
            "alerts": len(d.alert_ids) if d.kind == "planned" else None,
            "alert_ids": ",".join(d.alert_ids) if d.alert_ids else None,
            "attempt": d.attempt,
            "http_status": d.http_status,
            "latency_ms": d.latency_ms,
            "error": d.error,
        },
        sub_ms(d.at_ms, d.message_id, d.kind, d.attempt, d.channel),
    )


def batch_lines(value: Mapping[str, Any]) -> Iterable[str]:
    """Lines for one RecordBatch record of the readings or kitchen-events topic; ticks give none."""
    kind = value.get("kind")
    make = reading_line if kind == "readings" else kitchen_event_line if kind == "kitchen_events" else None
    if make is None:
        return
    for item in value.get("items", ()):
        out = make(item)
        if out is not None:
            yield out
