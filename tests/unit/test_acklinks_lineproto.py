"""Ack-link tokens (forged, expired, malformed) and line protocol (escaping, idempotent timestamps)."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.alerts import acklinks
from pipeline.contracts import records
from pipeline.schemas import Alert, AlertState, Delivery, Severity
from pipeline.sinks import lineproto

KEY = "k" * 32
MID = "m0123456789abcdef"


def test_token_roundtrip_and_length() -> None:
    token = acklinks.issue(KEY, MID, 2_000_000_000)
    assert len(token) == 32 and "=" not in token
    claims = acklinks.verify(KEY, token, 1_999_999_999)
    assert claims.message_id == MID and claims.expires_s == 2_000_000_000


def test_expired_token_is_refused() -> None:
    token = acklinks.issue(KEY, MID, 1_000)
    with pytest.raises(acklinks.InvalidToken) as err:
        acklinks.verify(KEY, token, 1_000)
    assert err.value.reason is acklinks.TokenError.EXPIRED


@pytest.mark.parametrize("tamper", ["other-key", "flip-expiry", "flip-message"])
def test_forged_token_is_refused(tamper: str) -> None:
    token = acklinks.issue(KEY, MID, 2_000_000_000)
    if tamper == "other-key":
        token = acklinks.issue("x" * 32, MID, 2_000_000_000)
    else:
        import base64

        raw = bytearray(base64.urlsafe_b64decode(token + "=="))
        raw[9 if tamper == "flip-expiry" else 0] ^= 0x01
        token = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(acklinks.InvalidToken) as err:
        acklinks.verify(KEY, token, 1_000)
    assert err.value.reason is acklinks.TokenError.FORGED


@pytest.mark.parametrize("token", ["", "abc", "!!!!", "A" * 200])
def test_malformed_token_is_refused(token: str) -> None:
    with pytest.raises(acklinks.InvalidToken):
        acklinks.verify(KEY, token, 0)


def test_reading_line_escapes_and_carries_seq_below_the_millisecond() -> None:
    item = {
        "device": "dev 1,a=b",
        "site": "S1",
        "asset": "cold room",
        "profile": "chilled",
        "seq": 7,
        "ts_ms": 1_700_000_000_123,
        "temp_c": 3,
        "humidity": None,
        "door_open": False,
        "received_ms": 1_700_000_000_200,
    }
    out = lineproto.reading_line(item)
    assert out == (
        r"reading,asset=cold\ room,device=dev\ 1\,a\=b,profile=chilled,site=S1 "
        "temp_c=3.0,door_open=false,seq=7i,delay_ms=77i 1700000000123000007"
    )


def test_same_millisecond_readings_are_distinct_points_and_a_duplicate_is_the_same_point() -> None:
    """Issue 27, finding 7: one point per (series, ms) merged readings of one device stamped in one ms."""
    base = {"device": "d", "site": "S", "asset": "a", "profile": "p", "ts_ms": 1_700_000_000_123}
    times = [lineproto.reading_line({**base, "seq": seq, "temp_c": 3.0 + seq})[-19:] for seq in range(1000)]  # type: ignore[index]
    assert len(set(times)) == 1000 and all(t.startswith("1700000000123") for t in times)
    again = lineproto.reading_line({**base, "seq": 5, "temp_c": 8.0})
    assert again == lineproto.reading_line({**base, "seq": 5, "temp_c": 8.0}), "a QoS 1 duplicate overwrites"


def test_string_fields_escape_quotes_and_newlines() -> None:
    out = lineproto.line("m", {"t": "x"}, {"note": 'said "ok"\nthen left\\'}, 5)
    assert out == 'm,t=x note="said \\"ok\\"\\nthen left\\\\" 5'
    assert lineproto.line("m", {}, {"a": None}, 5) is None


def _alert(state: AlertState, step: int | None = None) -> Alert:
    return Alert(
        alert_id="al-1",
        rule="coldchain.high",
        severity=Severity.WARNING,
        site="S1",
        subject="d1",
        state=state,
        opened_at="2026-11-23T02:00:00.000Z",
        at_ms=1_800_000_000_000,
        evidence={"step": step, "opened_ms": 1_800_000_000_000} if step is not None else {},
    )


def test_alert_points_are_stable_and_distinct_within_one_millisecond() -> None:
    a, b = _alert(AlertState.OPEN), _alert(AlertState.ESCALATED, 1)
    ta, tb = (int(lineproto.alert_line(x).rsplit(" ", 1)[1]) for x in (a, b))
    assert ta // 1_000_000 == tb // 1_000_000 == 1_800_000_000_000
    assert ta != tb
    assert lineproto.alert_line(a) == lineproto.alert_line(a), "a rewrite lands on the same point"


def test_delivery_attempts_do_not_collide() -> None:
    base = Delivery(kind="attempt", message_id="m1", at_ms=5, recipient="rcp-1", channel="sms", status="retry")
    lines = {lineproto.delivery_line(base.model_copy(update={"attempt": n})) for n in range(1, 50)}
    stamps = {ln.rsplit(" ", 1)[1] for ln in lines}
    assert len(stamps) == 49


@pytest.mark.parametrize(
    "item",
    [
        {"device": "d", "site": "S", "asset": "a", "profile": "p", "seq": 1, "ts_ms": 5, "temp_c": -3.25},
        {"device": "d x", "site": "S=1", "ts_ms": 5, "temp_c": 4, "battery": 0.5, "defrost": True, "received_ms": 9},
        {"device": "d", "ts_ms": 5, "humidity": 61, "door_open": False, "seq": True, "received_ms": False},
        {"device": "d", "ts_ms": 5},
    ],
)
def test_fast_reading_line_equals_the_generic_builder(item: dict) -> None:  # type: ignore[type-arg]
    assert lineproto.reading_line(item) == lineproto.reading_line_generic(item)


async def test_the_sink_skips_any_shape_of_bad_record_and_writes_the_rest(tmp_path: Any) -> None:
    """The batch format is a contract other producers write to: a record of the wrong shape is skipped and
    counted, never a crash (the sink would read it again after every restart and stop all topics)."""
    import asyncio

    from aiokafka import TopicPartition

    from pipeline import serde
    from pipeline.settings import load_settings
    from pipeline.sinks.influx import InfluxSink
    from pipeline.topics import Topics

    topics = Topics(prefix="t", partitions=1)
    sink = InfluxSink(load_settings(state_dir=tmp_path), topics)
    written: list[str] = []

    async def fake_write(chunk: list[str], precision: str, stop: asyncio.Event) -> bool:
        written.extend(chunk)
        return True

    sink._write_chunk = fake_write  # type: ignore[method-assign]
    good = {"device": "d1", "site": "S1", "asset": "a1", "profile": "chilled", "seq": 1, "ts_ms": 1, "temp_c": 3.5}
    bad = [
        [],
        "x",
        {"v": 1, "kind": "readings", "items": [1]},
        {"v": 1, "kind": "readings", "items": [{**good, "device": 7}]},
    ]
    values = [serde.dumps(b) for b in bad] + [records.readings_value([good])]

    class Rec:
        def __init__(self, offset: int, value: bytes) -> None:
            self.offset, self.value = offset, value

    polled = {TopicPartition(topics.readings, 0): [Rec(i, v) for i, v in enumerate(values)]}
    assert await sink._handle(polled, asyncio.Event()) is True
    assert sink.stats.skipped == len(bad) and len(written) == 1 and written[0].startswith("reading")
