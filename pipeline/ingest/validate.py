"""Device payload bytes -> (enriched readings, refusals). Pure: no I/O, no clock (``now_ms`` is passed in).

Two implementations with identical decisions:

* :func:`validate_device_payload`, the hot path: orjson plus hand-written checks, ~2-3 µs a reading;
* :func:`validate_device_payload_reference`, the same decisions through the pydantic models of
  :mod:`pipeline.schemas` (the contract's definition), ~3x slower.

``tests/unit/test_ingest_validate.py`` proves they agree (tables plus generated payloads) on acceptance, the
reason code, and the produced items. Reason codes are stable and documented in ``docs/ingest.md``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

from pydantic import ValidationError

from pipeline import serde
from pipeline.schemas import (
    MAX_DEVICE_BATCH,
    MAX_MESSAGE_BYTES,
    SEQ_MAX,
    TEMP_MAX_C,
    TEMP_MIN_C,
    DeviceBatch,
    DeviceReading,
    _parse_ts,
    to_ms,
)

# Stable reason codes (docs/ingest.md). Consumers of the dead-letter topic may switch on them.
NOT_JSON = "not_json"
WRONG_TYPE = "wrong_type"
MISSING_FIELD = "missing_field"
NOT_FINITE = "not_finite"
OUT_OF_RANGE = "out_of_range"
BAD_TIMESTAMP = "bad_timestamp"
FUTURE_TIMESTAMP = "future_timestamp"
BATCH_TOO_LARGE = "batch_too_large"
UNEXPECTED_FIELD = "unexpected_field"
UNKNOWN_DEVICE = "unknown_device"
UNKNOWN_CAMERA = "unknown_camera"
BAD_TOPIC = "bad_topic"
TOO_LARGE = "too_large"
TOO_DEEP = "too_deep"
INVALID = "invalid"

REASON_CODES = (
    NOT_JSON,
    WRONG_TYPE,
    MISSING_FIELD,
    NOT_FINITE,
    OUT_OF_RANGE,
    BAD_TIMESTAMP,
    FUTURE_TIMESTAMP,
    BATCH_TOO_LARGE,
    UNEXPECTED_FIELD,
    UNKNOWN_DEVICE,
    UNKNOWN_CAMERA,
    BAD_TOPIC,
    TOO_LARGE,
    TOO_DEEP,
    INVALID,
)

#: Readings and events are timestamped on or after this by default (IngestSettings.ts_floor): earlier is a
#: clock that was never set (Unix 0, -1), stored at 1970 it would be history nobody can use.
DEFAULT_TS_FLOOR_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
#: Deepest JSON nesting accepted (contract 1 needs 3, contract 2 needs 3). Checked on the bytes before any
#: decoder runs: Python's json (the NaN fallback) recursed into a RecursionError on a deep document.
MAX_JSON_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Refusal:
    reason_code: str
    reason: str
    #: Position inside a store-and-forward batch (None for a single reading or the whole message).
    index: int | None
    #: The refused bytes: the whole message, or the re-serialised element of a batch.
    payload: bytes


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(payload: bytes) -> int:
    """Deepest ``[``/``{`` nesting of a JSON text, strings skipped; linear, no recursion. Only called when the
    bytes hold more brackets than ``MAX_JSON_DEPTH`` (a store-and-forward batch, or something hostile)."""
    steps = (1 if b in (b"[", b"{") else -1 for b in _BRACKET.findall(_STRING.sub(b"", payload)))
    return max(accumulate(steps, initial=0))


def too_deep(payload: bytes) -> bool:
    return payload.count(b"[") + payload.count(b"{") > MAX_JSON_DEPTH and json_depth(payload) > MAX_JSON_DEPTH


def parse_json(payload: bytes) -> tuple[Any, str | None]:
    """orjson first; on failure Python's json, which also reads NaN/Infinity, so those get ``not_finite``.

    What the docs promise is refused as ``not_json`` on both paths: bytes that are not UTF-8 (encoded
    surrogates included), a UTF-8 byte order mark, and ``\\uD800``-style escapes of lone surrogates (orjson
    refuses all three; Python's json would take them)."""
    try:
        return serde.loads(payload), None
    except serde.JSONDecodeError as exc:
        try:
            text = payload.decode("utf-8")  # strict: no surrogates, unlike json.loads(bytes)
        except UnicodeDecodeError as err:
            return None, f"not JSON: not UTF-8 ({err.reason} at byte {err.start})"
        if text.startswith("\ufeff"):
            return None, "not JSON: starts with a UTF-8 byte order mark"
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return None, f"not JSON: {exc}"
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None, "not JSON: contains an escaped lone surrogate (not a Unicode character)"
        except (ValueError, RecursionError):
            pass
        return obj, None


def precheck(payload: bytes) -> Refusal | None:
    """Refusals decided on the bytes alone, before any decoder runs: size and nesting depth."""
    if len(payload) > MAX_MESSAGE_BYTES:
        limit = MAX_MESSAGE_BYTES
        reason = f"{len(payload)} bytes, at most {limit}; the dead letter keeps the first {limit}"
        return Refusal(TOO_LARGE, reason, None, payload[:MAX_MESSAGE_BYTES])
    if too_deep(payload):
        return Refusal(TOO_DEEP, f"JSON nested deeper than {MAX_JSON_DEPTH} levels", None, payload)
    return None


def element_bytes(element: Any) -> bytes:
    """A refused batch element, serialised again for its dead letter. What Python's json read (NaN, integers
    past 64 bits) only Python's json writes back."""
    try:
        return serde.dumps(element)
    except TypeError:
        return json.dumps(element).encode()


#: A refusal of part of a body: (index in the batch, or None for the whole body; reason code; reason; its bytes).
Refused = tuple[int | None, str, str, bytes]


def batch_elements(body: bytes, field: str, limit: int) -> tuple[list[tuple[int | None, Any]], list[Refused]]:
    """A body that is one JSON object or ``{field: [...]}`` (camera events, rapid-test results) -> its elements with
    their index in the batch (None: the body itself is the element), or the refusal of the whole body: not JSON,
    no non-empty array, more than ``limit`` elements, or another field next to the array. Checking each element
    is the caller's (one bad element refuses only itself)."""
    obj, err = parse_json(body)
    if err is not None:
        return [], [(None, NOT_JSON, err, body)]
    if not (isinstance(obj, dict) and field in obj):
        return [(None, obj)], []
    elements = obj[field]
    if not isinstance(elements, list) or not elements:
        return [], [(None, WRONG_TYPE, f"{field}: expected a non-empty JSON array", body)]
    if len(elements) > limit:
        return [], [(None, BATCH_TOO_LARGE, f"{field}: {len(elements)} {field}, at most {limit}", body)]
    if len(obj) > 1:
        return [], [(None, UNEXPECTED_FIELD, f"unexpected field(s) next to {field}", body)]
    return list(enumerate(elements)), []


#: The numeric fields in the model's order: (name, lowest, highest, unit in the reason, required). A required
#: one may not be missing nor null; an optional one that is null counts as absent.
_NUMBERS = (
    ("temp_c", TEMP_MIN_C, TEMP_MAX_C, " °C", True),
    ("humidity", 0.0, 100.0, "", False),
    ("battery", 0.0, 1.0, "", False),
)


_UNIX_MAX = 253_402_300_799.0  # 9999-12-31T23:59:59Z: datetime's last second


def _event_ms(value: Any) -> int:
    """The same conversion the pydantic path applies (schemas._parse_ts, then to_ms)."""
    t = type(value)
    if (t is float or t is int) and 0 <= value <= _UNIX_MAX:
        # Unix seconds, the common case, without building a datetime (1.7 µs of the bridge's ~7 µs a reading):
        # datetime.fromtimestamp rounds to whole microseconds half-to-even, timestamp() divides them back.
        frac, whole = math.modf(value)
        us = round(frac * 1e6)
        return int((int(whole) * 1_000_000 + us) / 1_000_000 * 1000)
    try:
        return to_ms(_parse_ts(value))
    except (OverflowError, OSError) as exc:
        raise ValueError(f"ts is out of range: {value!r}") from exc


def _before_floor(ts_ms: int, floor_ms: int) -> tuple[str, str]:
    floor = datetime.fromtimestamp(floor_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
    return BAD_TIMESTAMP, f"ts: before {floor} (a device clock that was never set?)"


def check_reading(
    obj: Any, now_ms: int, skew_ms: int, floor_ms: int = DEFAULT_TS_FLOOR_MS
) -> dict[str, Any] | tuple[str, str]:
    """One contract-1 reading -> its validated fields, or ``(reason_code, reason)``.

    Checks fields in the model's order and reports the first problem, like the reference does.
    """
    if type(obj) is not dict:
        return WRONG_TYPE, f"a reading must be a JSON object, got {type(obj).__name__}"
    ts = obj.get("ts", _MISSING)
    if ts is _MISSING:
        return MISSING_FIELD, "ts: field required"
    try:
        ts_ms = _event_ms(ts)
    except ValueError as exc:
        return BAD_TIMESTAMP, f"ts: {exc}"
    if ts_ms < floor_ms:
        return _before_floor(ts_ms, floor_ms)
    seq = obj.get("seq", _MISSING)
    if seq is _MISSING:
        return MISSING_FIELD, "seq: field required"
    if type(seq) is not int:
        return WRONG_TYPE, f"seq: expected an integer, got {type(seq).__name__}"
    if seq < 0:
        return OUT_OF_RANGE, f"seq: must be >= 0, got {seq}"
    if seq > SEQ_MAX:
        # Only Python's json (the NaN fallback) reads such a number; orjson refuses the whole message.
        return OUT_OF_RANGE, f"seq: must be <= {SEQ_MAX}, got {seq}"
    out: dict[str, Any] = {"seq": seq, "ts_ms": ts_ms}
    for name, lo, hi, unit, required in _NUMBERS:
        v: Any = obj.get(name)
        if v is None:
            if not required:
                continue
            if name not in obj:
                return MISSING_FIELD, f"{name}: field required"
        t = type(v)
        if t is not float and t is not int:
            return WRONG_TYPE, f"{name}: expected a number, got {t.__name__}"
        if t is float and not math.isfinite(v):
            return NOT_FINITE, f"{name}: must be finite, got {v}"
        if not lo <= v <= hi:
            return OUT_OF_RANGE, f"{name}: {v} is outside {lo:g}..{hi:g}{unit}"
        out[name] = float(v)
    for name in ("door_open", "defrost"):
        v = obj.get(name)
        if v is None:
            continue
        if type(v) is not bool:
            return WRONG_TYPE, f"{name}: expected true or false, got {type(v).__name__}"
        out[name] = v
    if ts_ms > now_ms + skew_ms:
        return FUTURE_TIMESTAMP, f"ts: {ts_ms - now_ms} ms in the future (allowed skew {skew_ms} ms)"
    return out


_MISSING: Any = object()


def validate_device_payload(
    payload: bytes, base: dict[str, Any], now_ms: int, skew_ms: int, floor_ms: int = DEFAULT_TS_FLOOR_MS
) -> tuple[list[dict[str, Any]], list[Refusal]]:
    """A contract-1 MQTT payload (one reading or ``{"readings": [...]}``) -> (items, refusals).

    ``base`` is the registry's enrichment plus ``received_ms``; every item is ``{**base, **fields}``, ready
    for the readings topic (:class:`pipeline.schemas.Reading`). One bad element of a batch refuses only itself.
    """
    if (early := precheck(payload)) is not None:
        return [], [early]
    obj, err = parse_json(payload)
    if err is not None:
        return [], [Refusal(NOT_JSON, err, None, payload)]
    if type(obj) is dict and "readings" in obj:
        elements = obj["readings"]
        if type(elements) is not list:
            return [], [Refusal(WRONG_TYPE, "readings: expected a JSON array", None, payload)]
        if len(elements) > MAX_DEVICE_BATCH:
            reason = f"readings: {len(elements)} readings, at most {MAX_DEVICE_BATCH} in one message"
            return [], [Refusal(BATCH_TOO_LARGE, reason, None, payload)]
        if len(obj) > 1:
            extra = sorted(k for k in obj if k != "readings")
            return [], [Refusal(UNEXPECTED_FIELD, f"unexpected field(s) next to readings: {extra}", None, payload)]
        items: list[dict[str, Any]] = []
        refusals: list[Refusal] = []
        for i, element in enumerate(elements):
            r = check_reading(element, now_ms, skew_ms, floor_ms)
            if type(r) is dict:
                items.append({**base, **r})
            else:
                code, reason = r  # type: ignore[misc]
                refusals.append(Refusal(code, reason, i, element_bytes(element)))
        return items, refusals
    r = check_reading(obj, now_ms, skew_ms, floor_ms)
    if type(r) is dict:
        return [{**base, **r}], []
    code, reason = r  # type: ignore[misc]
    return [], [Refusal(code, reason, None, payload)]


# ---------------------------------------------------------------------------------------------------------------
# The reference: the same decisions through pydantic
# ---------------------------------------------------------------------------------------------------------------

_TYPE_CODES = {
    "missing": MISSING_FIELD,
    "finite_number": NOT_FINITE,
    "greater_than_equal": OUT_OF_RANGE,
    "less_than_equal": OUT_OF_RANGE,
    "greater_than": OUT_OF_RANGE,
    "less_than": OUT_OF_RANGE,
    "too_long": BATCH_TOO_LARGE,
    "too_short": MISSING_FIELD,
    "extra_forbidden": UNEXPECTED_FIELD,
}


def reason_code_for(err: Any) -> str:
    """Map one pydantic error (``ValidationError.errors()[i]``) to a stable reason code."""
    kind = err["type"]
    if kind in _TYPE_CODES:
        return _TYPE_CODES[kind]
    if kind == "value_error" and err["loc"] and err["loc"][-1] == "ts":
        return BAD_TIMESTAMP
    if kind.endswith(("_type", "_parsing")) or kind in ("enum", "literal_error", "string_pattern_mismatch"):
        return WRONG_TYPE
    if kind.startswith(("datetime", "timestamp")):
        return BAD_TIMESTAMP
    return INVALID


def describe(err: Any) -> str:
    """One pydantic error as a reason: ``<field path>: <message>``."""
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])


def check_reading_reference(
    obj: Any, now_ms: int, skew_ms: int, floor_ms: int = DEFAULT_TS_FLOOR_MS
) -> dict[str, Any] | tuple[str, str]:
    try:
        model = DeviceReading.model_validate(obj)
        ts_ms = to_ms(model.ts)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["loc"] and first["loc"][0] != "ts" and isinstance(obj, dict) and "ts" in obj:
            # The model reports fields in its own order; the floor is a ts problem, reported first like ts's.
            floor = _floor_first(obj["ts"], floor_ms)
            if floor is not None:
                return floor
        return reason_code_for(first), describe(first)
    except (OverflowError, OSError) as exc:
        return BAD_TIMESTAMP, f"ts: {exc}"
    if ts_ms < floor_ms:
        return _before_floor(ts_ms, floor_ms)
    if ts_ms > now_ms + skew_ms:
        return FUTURE_TIMESTAMP, f"ts: {ts_ms - now_ms} ms in the future (allowed skew {skew_ms} ms)"
    fields = model.model_dump(exclude_none=True, exclude={"ts"})
    return {"seq": fields.pop("seq"), "ts_ms": ts_ms, **fields}


def _floor_first(ts: Any, floor_ms: int) -> tuple[str, str] | None:
    try:
        ts_ms = to_ms(_parse_ts(ts))
    except (ValueError, OverflowError, OSError):
        return None
    return _before_floor(ts_ms, floor_ms) if ts_ms < floor_ms else None


def validate_device_payload_reference(
    payload: bytes, base: dict[str, Any], now_ms: int, skew_ms: int, floor_ms: int = DEFAULT_TS_FLOOR_MS
) -> tuple[list[dict[str, Any]], list[Refusal]]:
    if (early := precheck(payload)) is not None:
        return [], [early]
    obj, err = parse_json(payload)
    if err is not None:
        return [], [Refusal(NOT_JSON, err, None, payload)]
    if isinstance(obj, dict) and "readings" in obj:
        try:
            batch = DeviceBatch.model_validate(obj)
        except ValidationError as exc:
            first = exc.errors()[0]
            return [], [Refusal(reason_code_for(first), describe(first), None, payload)]
        items: list[dict[str, Any]] = []
        refusals: list[Refusal] = []
        for i, element in enumerate(batch.readings):
            r = check_reading_reference(element, now_ms, skew_ms, floor_ms)
            if isinstance(r, dict):
                items.append({**base, **r})
            else:
                refusals.append(Refusal(r[0], r[1], i, element_bytes(element)))
        return items, refusals
    r = check_reading_reference(obj, now_ms, skew_ms, floor_ms)
    if isinstance(r, dict):
        return [{**base, **r}], []
    return [], [Refusal(r[0], r[1], None, payload)]
