"""The replay clock ticks at each silence decision a live clock would have hit (pipeline.replay.send)."""

from __future__ import annotations

from pipeline.contracts.models import ms_to_iso
from pipeline.replay.send import SilenceTicks

S = 1000
#: offline hold 7.5 s + lateness 6 s, gap 15 min + lateness 6 s (the record-replay test's logger).
DELAYS = (13_500, 906_000)


def reading(ts: int, seq: int) -> dict[str, object]:
    return {"ts": ms_to_iso(ts), "seq": seq, "temp_c": 3.0}


def drain(clock: SilenceTicks, scheduled: int | None, until: int) -> list[int]:
    """The ticks a replay would send up to ``until`` with one regular tick at ``scheduled``."""
    sent = []
    while (due := clock.due(scheduled, until)) is not None:
        clock.ticked(due)
        sent.append(due)
        if scheduled is not None and scheduled <= due:
            scheduled = None
    return sent


def test_a_silence_between_two_coarse_ticks_gets_a_tick_at_its_decision() -> None:
    clock = SilenceTicks({"cr2": DELAYS})
    # Published 346 ms before its event time (seen in CI): the decision counts from the event time.
    clock.heard("cr2", 11 * S - 346, reading(11 * S, 3))
    # Regular ticks at 10 s and 20 s; the logger is back at 31 s: a 10 s grid has no tick in [24.5, 31).
    assert drain(clock, 20 * S, 20 * S) == [20 * S]
    assert drain(clock, 30 * S, 31 * S) == [24_500, 30 * S]


def test_a_device_that_spoke_again_owes_no_tick() -> None:
    clock = SilenceTicks({"cr1": DELAYS})
    clock.heard("cr1", 0, reading(0, 1))
    clock.heard("cr1", 5 * S, reading(5 * S, 2))
    assert drain(clock, None, 12 * S) == []
    assert drain(clock, None, 19 * S) == [18_500], "only the decision of its newest message"


def test_a_regular_tick_at_or_after_the_decision_covers_it() -> None:
    clock = SilenceTicks({"cr1": DELAYS})
    clock.heard("cr1", 0, reading(0, 1))
    assert drain(clock, 20 * S, 25 * S) == [13_500, 20 * S]
    clock2 = SilenceTicks({"cr1": DELAYS})
    clock2.heard("cr1", 0, reading(0, 1))
    clock2.ticked(14 * S)  # e.g. the end line's tick
    assert drain(clock2, None, 25 * S) == []


def test_an_old_upload_does_not_move_the_newest_event_time_back() -> None:
    clock = SilenceTicks({"cr1": DELAYS})
    clock.heard("cr1", 60 * S, reading(60 * S, 10))
    clock.heard("cr1", 61 * S, {"readings": [reading(1 * S, 1), reading(2 * S, 2)]})
    assert drain(clock, None, 80 * S) == [74_500]


def test_devices_without_delays_are_ignored() -> None:
    clock = SilenceTicks({})
    clock.heard("cam", 0, {"event_id": "e1"})
    assert drain(clock, None, 10**9) == []
