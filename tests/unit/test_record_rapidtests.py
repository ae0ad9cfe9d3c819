"""`larder record` captures rapid-test requests (contract 6): what the hook put on the rapid-tests topic (and what
it refused, from the dead-letter topic) comes back as contract-3 ``rapid_test`` lines whose bodies validate to
the very items the hook produced, so a replay sends the same results (and the same refusals) again."""

from __future__ import annotations

import io
from typing import Any

from pipeline import serde
from pipeline.contracts import records
from pipeline.contracts.rapidtest import enrich, validate_results
from pipeline.contracts.replay import Line
from pipeline.replay.record import Recorder
from pipeline.settings import Settings
from pipeline.testing import rapid_test_body
from pipeline.topics import Topics

T = Topics("unit", 4)
RECEIVED = 1_795_300_000_000


def result(rid: str, **extra: Any) -> dict[str, Any]:
    """A contract-6 body; ``r2`` also says what was done with the food."""
    body = rapid_test_body(rid, **{"stall": "A07", **extra})
    return body | ({"disposition": {"action": "destroyed", "quantity_kg": 3}} if rid == "r2" else {})


def hook_items(body: bytes, instrument: str, received_ms: int) -> list[dict[str, Any]]:
    """What the hook produces for a request body (the contract's own validation and enrichment)."""
    ok, bad = validate_results(body, received_ms, 300_000)
    assert not bad
    return [
        enrich(r, instrument=instrument, instrument_type="enzyme_inhibition", site="M1", received_ms=received_ms)
        for _, r in ok
    ]


def hook_refusals(bad: list[tuple[int | None, str, str, bytes]], instrument: str, received_ms: int) -> list[bytes]:
    """The dead letters the hook produces for the refused parts ``(index, reason code, reason, bytes)`` of a
    request."""
    return records.refusal_dead_letters(bad, source="hook", arrived_ms=received_ms, instrument=instrument)


def test_rapid_test_requests_and_refusals_are_recorded_as_replayable_lines() -> None:
    one = serde.dumps(result("r1"))
    batch = serde.dumps({"results": [result("r2", stage="recheck"), result("r3", result="negative", value=10.5)]})
    items_one = hook_items(one, "rt-1", RECEIVED)
    items_batch = hook_items(batch, "rt-2", RECEIVED + 5_000)
    out = io.BytesIO()
    rec = Recorder(Settings(), T, out)
    # The hook writes one record per request; a record may hold several requests' results too.
    rec._dispatch(T.rapid_tests, records.rapid_tests_value(items_one + items_batch))
    refused = b'{"result_id": "r4", "tested_at": "yesterday"}'
    # A whole request refused, then one refused element of an accepted batch: its accepted siblings already
    # stand for the request.
    dead = [
        *hook_refusals([(None, "bad_timestamp", "tested_at: invalid", refused)], "rt-1", RECEIVED + 9_000),
        *hook_refusals([(2, "missing_field", "x", b"{}")], "rt-2", RECEIVED + 5_000),
    ]
    for value in dead:
        rec._dispatch(T.deadletter, value)
    rec.flush(None)
    lines = [Line.parse(x) for x in out.getvalue().splitlines()]
    assert [(x.at_ms, x.kind, x.source) for x in lines] == [
        (RECEIVED, "rapid_test", "rt-1"),
        (RECEIVED + 5_000, "rapid_test", "rt-2"),
        (RECEIVED + 9_000, "rapid_test", "rt-1"),
    ]
    assert rec.stats.rapid_tests == 3 and rec.stats.hooks == 0
    # Sent again, each recorded body yields exactly the items the hook made of the original request.
    assert hook_items(serde.dumps(lines[0].body), "rt-1", RECEIVED) == items_one
    assert (
        "results" in lines[1].body and hook_items(serde.dumps(lines[1].body), "rt-2", RECEIVED + 5_000) == items_batch
    )
    # The refused request is recorded as it was sent, so a replay is refused the same way.
    assert lines[2].body == serde.loads(refused)
