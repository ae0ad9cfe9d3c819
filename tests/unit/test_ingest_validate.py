"""The bridge's hand-written validation decides exactly like the pydantic contract models."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import serde
from pipeline.contracts import records
from pipeline.ingest.validate import (
    REASON_CODES,
    validate_device_payload,
    validate_device_payload_reference,
)
from pipeline.schemas import Reading, RecordBatch

NOW_MS = 1_795_340_000_000  # 2026-11-22T09:33Z
SKEW_MS = 300_000
BASE = {"device": "dev-1", "site": "S1", "asset": "a1", "profile": "chilled", "received_ms": NOW_MS}

GOOD = {"ts": "2026-11-22T08:00:00Z", "seq": 17, "temp_c": 3.4, "humidity": 61.0, "battery": 0.82}


def both(payload: bytes) -> tuple[Any, Any]:
    """Both implementations' decisions: the items, and each refusal's (code, index, bytes).

    Only the human-readable ``reason`` text may differ between them.
    """
    out = []
    for impl in (validate_device_payload, validate_device_payload_reference):
        items, refusals = impl(payload, BASE, NOW_MS, SKEW_MS)
        assert all(r.reason for r in refusals), "every refusal says why"
        out.append((items, [(r.reason_code, r.index, r.payload) for r in refusals]))
    return out[0], out[1]


def j(value: Any) -> bytes:
    return orjson.dumps(value)


CASES: list[tuple[str, bytes, str | None]] = [
    ("valid", j(GOOD), None),
    ("valid unix seconds", j({"ts": 1_795_290_000, "seq": 0, "temp_c": -20}), None),
    ("valid with flags", j({**GOOD, "door_open": True, "defrost": False}), None),
    ("extra fields ignored", j({**GOOD, "firmware": "1.2"}), None),
    ("not json", b"{nope", "not_json"),
    ("empty", b"", "not_json"),
    ("not utf-8", b"\xff\xfe", "not_json"),
    ("array", b"[1,2]", "wrong_type"),
    ("string", b'"hello"', "wrong_type"),
    ("missing ts", j({"seq": 1, "temp_c": 3.0}), "missing_field"),
    ("missing seq", j({"ts": 1_795_290_000, "temp_c": 3.0}), "missing_field"),
    ("missing temp", j({"ts": 1_795_290_000, "seq": 1}), "missing_field"),
    ("seq string", j({**GOOD, "seq": "17"}), "wrong_type"),
    ("seq float", j({**GOOD, "seq": 17.0}), "wrong_type"),
    ("seq bool", j({**GOOD, "seq": True}), "wrong_type"),
    ("seq negative", j({**GOOD, "seq": -1}), "out_of_range"),
    # Python's json (the fallback for NaN) reads integers of any size; past 64 bits nothing downstream could.
    ("seq past 64 bits", b'{"ts": 1795290000, "seq": 99999999999999999999999, "temp_c": 3, "x": NaN}', "out_of_range"),
    ("seq 2**63 - 1 ok", b'{"ts": 1795290000, "seq": 9223372036854775807, "temp_c": 3}', None),
    ("temp string", j({**GOOD, "temp_c": "3.4"}), "wrong_type"),
    ("temp bool", j({**GOOD, "temp_c": True}), "wrong_type"),
    ("temp null", j({**GOOD, "temp_c": None}), "wrong_type"),
    ("temp NaN", b'{"ts": 1795290000, "seq": 1, "temp_c": NaN}', "not_finite"),
    ("temp Infinity", b'{"ts": 1795290000, "seq": 1, "temp_c": Infinity}', "not_finite"),
    ("temp 1e999", b'{"ts": 1795290000, "seq": 1, "temp_c": 1e999}', "not_finite"),
    ("temp too hot", j({**GOOD, "temp_c": 85.1}), "out_of_range"),
    ("temp too cold", j({**GOOD, "temp_c": -80.5}), "out_of_range"),
    ("humidity over 100", j({**GOOD, "humidity": 101}), "out_of_range"),
    ("battery over 1", j({**GOOD, "battery": 1.5}), "out_of_range"),
    ("battery string", j({**GOOD, "battery": "full"}), "wrong_type"),
    ("door string", j({**GOOD, "door_open": "yes"}), "wrong_type"),
    ("door int", j({**GOOD, "door_open": 1}), "wrong_type"),
    ("ts zoneless", j({**GOOD, "ts": "2026-11-22T08:00:00"}), "bad_timestamp"),
    ("ts garbage", j({**GOOD, "ts": "yesterday"}), "bad_timestamp"),
    ("ts bool", j({**GOOD, "ts": True}), "bad_timestamp"),
    ("ts huge", j({**GOOD, "ts": 1e20}), "bad_timestamp"),
    ("ts object", j({**GOOD, "ts": {}}), "bad_timestamp"),
    ("ts future", j({**GOOD, "ts": NOW_MS / 1000 + 301}), "future_timestamp"),
    ("ts slightly future ok", j({**GOOD, "ts": NOW_MS / 1000 + 299}), None),
    ("batch too large", j({"readings": [GOOD] * 1001}), "batch_too_large"),
    ("batch not a list", j({"readings": {"a": 1}}), "wrong_type"),
    ("batch with extra field", j({"readings": [GOOD], "x": 1}), "unexpected_field"),
    # Issue 27, finding 6: what was accepted and should not have been.
    ("ts -1 (1969)", j({**GOOD, "ts": -1}), "bad_timestamp"),
    ("ts 0 (clock never set)", j({**GOOD, "ts": 0}), "bad_timestamp"),
    ("ts 1999 RFC 3339", j({**GOOD, "ts": "1999-12-31T23:59:59Z"}), "bad_timestamp"),
    ("ts below floor reported before a bad seq", j({**GOOD, "ts": 5, "seq": "x"}), "bad_timestamp"),
    ("ts 2000-01-01 ok", j({**GOOD, "ts": 946_684_800}), None),
    ("utf-8 BOM", b"\xef\xbb\xbf" + j(GOOD), "not_json"),
    ("utf-8 BOM with NaN (python json path)", b'\xef\xbb\xbf{"ts": 1795290000, "seq": 1, "temp_c": NaN}', "not_json"),
    ("encoded surrogate (CESU-8)", b'{"ts": 1795290000, "seq": 1, "temp_c": 3, "x": "\xed\xa0\x80"}', "not_json"),
    ("escaped lone surrogate", b'{"ts": 1795290000, "seq": 1, "temp_c": 3, "x": "\\ud800"}', "not_json"),
    ("escaped lone surrogate with NaN", b'{"ts": 1795290000, "seq": 1, "temp_c": NaN, "x": "\\udfff"}', "not_json"),
    ("escaped surrogate pair ok", b'{"ts": 1795290000, "seq": 1, "temp_c": 3, "x": "\\ud83d\\ude00"}', None),
    ("nested 100000 deep", b"[" * 100_000 + b"]" * 100_000, "too_deep"),
    ("nested objects 5000 deep", b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "too_deep"),
    ("nested in a field", j({**GOOD, "x": orjson.loads(b"[" * 33 + b"1" + b"]" * 33)}), "too_deep"),
    ("brackets inside strings do not count", j({**GOOD, "x": "[" * 100}), None),
]


@pytest.mark.parametrize(("name", "payload", "code"), CASES, ids=[c[0] for c in CASES])
def test_table_both_implementations(name: str, payload: bytes, code: str | None) -> None:
    fast, ref = both(payload)
    assert fast == ref, name
    items, refusals = fast
    if code is None:
        assert len(items) == 1 and refusals == []
    else:
        assert items == [] and [r[0] for r in refusals] == [code]
        assert refusals[0][2] == payload, "the dead letter keeps the original bytes"
        assert code in REASON_CODES
        assert code in REASON_CODES


def test_one_bad_reading_in_a_batch_refuses_only_itself() -> None:
    readings: list[object] = [{**GOOD, "seq": i} for i in range(5)]
    readings[2] = {**GOOD, "seq": 2, "temp_c": 999}
    readings[4] = "garbage"
    fast, ref = both(j({"readings": readings}))
    assert fast == ref
    items, refusals = fast
    assert [i["seq"] for i in items] == [0, 1, 3]
    assert [(r[1], r[0]) for r in refusals] == [(2, "out_of_range"), (4, "wrong_type")]
    assert serde.loads(refusals[0][2])["temp_c"] == 999


def test_a_batch_element_only_python_json_reads_is_dead_lettered_as_json() -> None:
    """orjson refuses NaN and integers past 64 bits; the fallback reads them, and the refused element is
    written back by Python's json, not lost to an encoding error (which would stop the bridge)."""
    payload = b'{"readings": [{"ts": 1795290000, "seq": 99999999999999999999999, "x": NaN}, ' + j(GOOD) + b"]}"
    fast, ref = both(payload)
    assert fast == ref
    items, refusals = fast
    assert len(items) == 1 and [(r[0], r[1]) for r in refusals] == [("out_of_range", 0)]
    assert refusals[0][2] == b'{"ts": 1795290000, "seq": 99999999999999999999999, "x": NaN}'
    records.readings_value(items)  # the accepted one encodes


def test_items_are_readings_in_a_record_batch() -> None:
    items, _ = validate_device_payload(j({**GOOD, "door_open": True, "temp_c": 4}), BASE, NOW_MS, SKEW_MS)
    batch = RecordBatch.model_validate_json(records.readings_value(items))
    reading = Reading.model_validate(batch.items[0])
    assert (reading.site, reading.asset, reading.profile) == ("S1", "a1", "chilled")
    assert reading.ts_ms == 1_795_334_400_000 and reading.temp_c == 4.0 and reading.door_open is True
    assert isinstance(items[0]["temp_c"], float)


# Generated payloads: valid, borderline and wrong values for every field, present or absent.
_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5,
)
_NUMBERS = (
    st.integers(-200, 200) | st.floats(-200, 200, allow_nan=False) | st.sampled_from([-80, 85, -80.0, 85.0, 0, 1, 100])
)
_TS = (
    st.integers(0, 2_000_000_000)
    | st.floats(0, 2e9, allow_nan=False)
    | st.sampled_from(["2026-11-22T08:00:00Z", "2026-11-22T08:00:00+08:00", "2026-11-22T08:00:00", "x", ""])
    | st.sampled_from([NOW_MS / 1000 + 299.9, NOW_MS / 1000 + 300.0, NOW_MS / 1000 + 300.002, 1e15, -1e15])
)
_MAYBE = st.just(_MISSING := object())


def _field(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(values, _ANY_JSON, _MAYBE)


@st.composite
def readings(draw: st.DrawFn) -> Any:
    fields = {
        "ts": draw(_field(_TS)),
        "seq": draw(_field(st.integers(-5, 2**40))),
        "temp_c": draw(_field(_NUMBERS)),
        "humidity": draw(_field(_NUMBERS)),
        "battery": draw(_field(st.floats(-1, 2, allow_nan=False) | st.integers(-1, 2))),
        "door_open": draw(_field(st.booleans())),
        "defrost": draw(_field(st.booleans())),
    }
    return {k: v for k, v in fields.items() if v is not _MISSING}


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(readings(), _ANY_JSON))
def test_fast_path_agrees_with_pydantic(reading: Any) -> None:
    fast, ref = both(j(reading))
    assert fast == ref


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(readings(), _ANY_JSON), max_size=8))
def test_batches_agree_with_pydantic(elements: list[Any]) -> None:
    fast, ref = both(j({"readings": elements}))
    assert fast == ref


def test_non_finite_floats_from_lenient_json_agree() -> None:
    for token in ("NaN", "-Infinity", "Infinity"):
        for field in ("temp_c", "humidity", "battery"):
            payload = f'{{"ts": 1795290000, "seq": 1, "temp_c": 3, "{field}": {token}}}'.encode()
            fast, ref = both(payload)
            assert fast == ref
            assert fast[1][0][0] == "not_finite", (field, token)
    assert math.isfinite(3.0)


_HALF_US = [1_795_290_000 + k / 1e6 + 0.5e-6 for k in range(0, 1_000_000, 99_991)]
_EDGES = [0, 0.0, 1e-7, 0.9999995, 1_795_289_999.9999995, 253_402_300_799, 253_402_300_799.9, 5e-324]


@settings(max_examples=3000, deadline=None)
@given(st.floats(-1e12, 1e12, allow_nan=False) | st.integers(-(10**12), 10**12) | st.sampled_from(_HALF_US + _EDGES))
def test_unix_seconds_convert_like_the_datetime_path(ts: float) -> None:
    """The bridge converts numeric ``ts`` without a datetime; the ms (or the refusal) must be the model's."""
    from pipeline.ingest.validate import _event_ms
    from pipeline.schemas import _parse_ts, to_ms

    try:
        expected: int | str = to_ms(_parse_ts(ts))
    except (ValueError, OverflowError, OSError):
        expected = "refused"
    try:
        got: int | str = _event_ms(ts)
    except ValueError:
        got = "refused"
    assert got == expected


def test_an_oversize_payload_is_refused_as_too_large_keeping_its_first_bytes() -> None:
    """Issue 27, finding 6: a 600 KiB message made Mosquitto disconnect the device, which resent it for ever.
    The broker now lets it through to the bridge, which refuses it here (before decoding it)."""
    from pipeline.schemas import MAX_MESSAGE_BYTES

    payload = j({**GOOD, "x": "y" * (600 * 1024)})
    fast, ref = both(payload)
    assert fast == ref
    assert fast[0] == [] and [(code, index) for code, index, _ in fast[1]] == [("too_large", None)]
    assert fast[1][0][2] == payload[:MAX_MESSAGE_BYTES]


def test_depth_is_measured_without_recursion() -> None:
    from pipeline.ingest.validate import MAX_JSON_DEPTH, json_depth

    assert json_depth(b'{"readings": [{"ts": 1, "x": "[[[["}]}') == 3
    assert json_depth(b"[" * 50_000) == 50_000
    batch = j({"readings": [GOOD] * 1000})  # 2,001 brackets but 3 deep: the store-and-forward batch passes
    assert json_depth(batch) == 3 < MAX_JSON_DEPTH
    fast, ref = both(batch)
    assert fast == ref and len(fast[0]) == 1000


def test_the_largest_refused_message_fits_a_kafka_record(tmp_path: Any) -> None:
    """Mosquitto refuses payloads over twice MAX_MESSAGE_BYTES, the bridge refuses those over MAX_MESSAGE_BYTES
    and keeps only their first MAX_MESSAGE_BYTES (aiohttp refuses hook bodies over it), so the biggest dead
    letter, the bytes in base64 with their envelope, stays under Kafka's default message.max.bytes: a refused
    message can always be kept (a bigger one would be retried for ever, blocking its bridge)."""
    from pipeline.contracts.records import dead_letter_value as dead_letter
    from pipeline.schemas import MAX_HOOK_BODY, MAX_MESSAGE_BYTES
    from pipeline.settings import load_settings
    from pipeline.stack import mosquitto

    letter = dead_letter(
        source="mqtt", reason_code="not_json", reason="x" * 500, arrived_ms=NOW_MS, payload=b"\xff" * MAX_MESSAGE_BYTES,
        device="d" * 64, mqtt_topic="larder/v1/devices/" + "d" * 64 + "/readings",
    )  # fmt: skip
    assert len(letter) < 1_000_000 and MAX_HOOK_BODY <= MAX_MESSAGE_BYTES
    conf = mosquitto.render_conf(load_settings(state_dir=tmp_path), passwd=tmp_path, acl=tmp_path, data=tmp_path)
    # The broker lets a payload over the validation limit through (the bridge dead-letters it as too_large)
    # instead of disconnecting the device, which would send it again for ever.
    assert f"message_size_limit {2 * MAX_MESSAGE_BYTES}\n" in conf
    assert f"max_packet_size {2 * MAX_MESSAGE_BYTES + 64 * 1024}\n" in conf
