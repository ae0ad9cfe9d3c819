"""rapidtest.* rules: positive -> recheck or escalation, negative recheck resolves, lab-confirmed is critical,
results of a sample linked, de-duplication, lateness, determinism, state round trip."""

from __future__ import annotations

import random
from typing import Any

from pipeline.contracts import rules as R
from pipeline.detectors.rapidtest import RapidTestDetector, RapidTestState
from pipeline.schemas import Alert, AlertState, Severity, alert_id
from pipeline.testing import rapid_test_item

from . import helpers
from .helpers import as_alert

T0 = 1_795_334_400_000  # 2026-11-22T08:00:00Z
M = 60_000


def res(minute: float, rid: str, sample: str, result: str, stage: str = "initial", **extra: Any) -> dict[str, Any]:
    return rapid_test_item(T0 + round(minute * M), rid, sample, result, stage, **extra)


class Run(helpers.Run):
    det: RapidTestDetector
    state: RapidTestState

    def __init__(self, recheck_min: float = 240, lateness_min: float = 5) -> None:
        super().__init__(RapidTestDetector("S01", recheck_min, lateness_min), T0)

    def alerts(self) -> list[tuple[str, str, str, int]]:
        """(rule, severity, state, minute of at_ms) of every alert output."""
        return [
            (a.rule, a.severity.value, a.state.value, (a.at_ms - T0) // M) for a in self.out if isinstance(a, Alert)
        ]


def test_positive_without_recheck_escalates_after_the_configured_time() -> None:
    r = Run(recheck_min=120)
    r.item(res(10, "r1", "smp-1", "positive"))
    r.tick(60)
    assert r.alerts() == [(R.RAPIDTEST_POSITIVE, "warning", "open", 10)]
    r.tick(130)  # deadline 130 not yet past the frontier (130 - 5 min lateness)
    assert len(r.alerts()) == 1
    assert r.det.wake_ms(r.state) == T0 + 130 * M + 1 + 5 * M
    r.tick(136)
    assert r.alerts()[1:] == [(R.RAPIDTEST_RECHECK_OVERDUE, "critical", "open", 130)]
    overdue = as_alert(r.out[-1])
    assert overdue.evidence["positive_alert_id"] == as_alert(r.out[0]).alert_id
    assert overdue.alert_id == alert_id(R.RAPIDTEST_RECHECK_OVERDUE, "S01/smp-1", T0 + 130 * M)
    # Nothing more however long it stays unanswered, and a wake time of None: no timer left.
    r.tick(2000)
    assert len(r.alerts()) == 2 and r.det.wake_ms(r.state) is None
    # A recheck, however late, answers the escalation; a negative one resolves the positive too.
    r.item(res(300, "r2", "smp-1", "negative", "recheck"))
    r.tick(2000)
    assert r.alerts()[2:] == [
        (R.RAPIDTEST_POSITIVE, "warning", "resolved", 300),
        (R.RAPIDTEST_RECHECK_OVERDUE, "critical", "resolved", 300),
    ]
    assert r.state.samples == ()


def test_default_recheck_window_is_four_hours() -> None:
    r = Run()
    r.item(res(0, "r1", "smp-1", "suspect"))
    r.tick(239 + 5)
    assert len(r.alerts()) == 1
    r.tick(241 + 5)
    assert r.alerts()[-1] == (R.RAPIDTEST_RECHECK_OVERDUE, "critical", "open", 240)


def test_negative_recheck_in_time_resolves_without_escalation() -> None:
    r = Run()
    r.item(res(10, "r1", "smp-1", "positive"))
    r.item(res(70, "r2", "smp-1", "negative", "recheck"))
    r.tick(600)
    assert r.alerts() == [
        (R.RAPIDTEST_POSITIVE, "warning", "open", 10),
        (R.RAPIDTEST_POSITIVE, "warning", "resolved", 70),
    ]
    resolved = as_alert(r.out[1])
    assert resolved.alert_id == as_alert(r.out[0]).alert_id
    assert resolved.evidence["reason"] == "recheck_negative"
    assert resolved.evidence["results"] == ["r1", "r2"]  # results of the same sample linked


def test_recheck_exactly_at_the_deadline_is_in_time() -> None:
    r = Run(recheck_min=60)
    r.item(res(0, "r1", "smp-1", "positive"))
    r.item(res(60, "r2", "smp-1", "negative", "recheck"))
    r.tick(600)
    assert [a[0] for a in r.alerts()] == [R.RAPIDTEST_POSITIVE, R.RAPIDTEST_POSITIVE]


def test_recheck_arriving_after_another_samples_later_result_is_still_in_time() -> None:
    # The recheck of smp-1 (at 59) arrives after a result of smp-2 at 62: within the allowed lateness it is
    # applied in event-time order, before smp-1's deadline (60) fires.
    r = Run(recheck_min=60, lateness_min=5)
    r.item(res(0, "r1", "smp-1", "positive"))
    r.item(res(62, "r2", "smp-2", "negative"))
    r.item(res(59, "r3", "smp-1", "negative", "recheck"))
    r.tick(600)
    assert [a[0] for a in r.alerts()] == [R.RAPIDTEST_POSITIVE, R.RAPIDTEST_POSITIVE]


def test_lab_confirmed_positive_is_critical_and_supersedes_the_warning() -> None:
    r = Run()
    r.item(res(10, "r1", "smp-1", "positive"))
    r.item(res(100, "r2", "smp-1", "positive", "lab_confirmed"))
    r.tick(2000)
    assert r.alerts() == [
        (R.RAPIDTEST_POSITIVE, "warning", "open", 10),
        (R.RAPIDTEST_CONFIRMED, "critical", "open", 100),
        (R.RAPIDTEST_POSITIVE, "warning", "resolved", 100),
    ]
    assert as_alert(r.out[2]).evidence["reason"] == "lab_confirmed"
    # Only a disposition closes a confirmed positive; a later negative *rapid* recheck does not.
    r.item(res(200, "r3", "smp-1", "negative", "recheck"))
    assert r.alerts()[3:] == []
    r.item(
        res(210, "r4", "smp-1", "positive", "lab_confirmed", disposition={"action": "destroyed", "quantity_kg": 12.5})
    )
    r.tick(3000)
    assert r.alerts()[3:] == [(R.RAPIDTEST_CONFIRMED, "critical", "resolved", 210)]
    assert as_alert(r.out[-1]).evidence["disposition"] == {"action": "destroyed", "quantity_kg": 12.5}
    assert as_alert(r.out[-1]).evidence["results"] == ["r1", "r2", "r3", "r4"]


def test_first_result_lab_confirmed_opens_only_the_critical_alert() -> None:
    r = Run()
    r.item(res(10, "r1", "smp-9", "positive", "lab_confirmed"))
    r.tick(1000)
    assert r.alerts() == [(R.RAPIDTEST_CONFIRMED, "critical", "open", 10)]


def test_positive_recheck_answers_the_escalation_and_keeps_the_positive_open() -> None:
    r = Run(recheck_min=60)
    r.item(res(0, "r1", "smp-1", "positive"))
    r.tick(70)
    r.item(res(80, "r2", "smp-1", "positive", "recheck"))
    r.tick(500)
    assert r.alerts() == [
        (R.RAPIDTEST_POSITIVE, "warning", "open", 0),
        (R.RAPIDTEST_RECHECK_OVERDUE, "critical", "open", 60),
        (R.RAPIDTEST_RECHECK_OVERDUE, "critical", "resolved", 80),
    ]
    r.item(res(90, "r3", "smp-1", "positive", "recheck", disposition={"action": "removed_from_sale"}))
    assert r.alerts()[-1] == (R.RAPIDTEST_POSITIVE, "warning", "resolved", 90)


def test_negatives_open_nothing_and_duplicates_change_nothing() -> None:
    r = Run()
    r.item(res(1, "r1", "smp-1", "negative"))
    r.item(res(2, "r2", "smp-2", "positive"))
    before = r.state
    assert r.det.on_item(before, res(2, "r2", "smp-2", "positive"), T0 + 3 * M) == (before, [])
    r.tick(20)
    assert [a[0] for a in r.alerts()] == [R.RAPIDTEST_POSITIVE]


def test_late_positive_is_applied_retrospectively_and_escalates_at_its_own_deadline() -> None:
    r = Run(recheck_min=60)
    r.item(res(490, "r0", "smp-0", "negative"))
    r.tick(500)  # the frontier is at 495
    assert r.state.frontier == T0 + 495 * M
    r.item(res(100, "late-1", "smp-1", "positive"), now_min=500)
    assert r.alerts() == [(R.RAPIDTEST_POSITIVE, "warning", "open", 100)]
    assert as_alert(r.out[0]).evidence["retrospective"] is True
    r.tick(501)
    assert r.alerts()[-1] == (R.RAPIDTEST_RECHECK_OVERDUE, "critical", "open", 160)


def test_wrong_types_are_refused_on_arrival() -> None:
    r = Run()
    for bad in (
        res(1, "r1", "s", "positive") | {"ts_ms": "x"},
        res(1, "r1", "s", "maybe"),
        res(1, "r1", "s", "positive", "final"),
        res(1, "r1", "s", "positive") | {"sample_id": 3},
    ):
        try:
            r.item(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")


def _stream(seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    items = []
    for i in range(40):
        t = i * 3 + rnd.random()
        outcome = "positive" if i % 9 == 0 else ("suspect" if i % 13 == 0 else "negative")
        items.append(res(t, f"r{i}", f"smp-{i}", outcome))
        if outcome != "negative" and i % 2 == 0:
            items.append(res(t + 30 + rnd.random() * 30, f"rc{i}", f"smp-{i}", "negative", "recheck"))
    return sorted(items, key=lambda d: d["ts_ms"])


def test_replay_at_any_tick_spacing_and_state_round_trips_give_the_same_alerts() -> None:
    items = _stream(7)

    def run(tick_every: float, round_trip: bool) -> list[tuple[str, str, int, str]]:
        r = Run(recheck_min=60)
        ticks = iter(range(0, 2000, max(1, int(tick_every))))
        next_tick = next(ticks)
        for d in items:
            while next_tick * M + T0 <= d["ts_ms"]:
                r.tick(next_tick)
                next_tick = next(ticks)
            r.item(d, now_min=next_tick)
            if round_trip:
                r.state = r.det.state_from_bytes(r.det.state_to_bytes(r.state))
        r.tick(2000)
        return [(a.alert_id, a.state.value, a.at_ms, a.severity.value) for a in r.out if isinstance(a, Alert)]

    reference = run(1, False)
    assert reference  # the stream has positives, some rechecked and some escalated
    assert {s for _, s, _, _ in reference} == {AlertState.OPEN.value, AlertState.RESOLVED.value}
    assert Severity.CRITICAL.value in {sev for *_, sev in reference}
    for tick_every, round_trip in ((7, False), (45, True), (1, True)):
        assert sorted(run(tick_every, round_trip)) == sorted(reference)


def test_notification_text_says_what_was_found_where_and_why_it_cleared() -> None:
    from pipeline.alerts.messages import render_text
    from pipeline.alerts.routing import Pending, Person, Send
    from pipeline.siteconfig import Recipient

    r = Run(recheck_min=60)
    r.item(res(0, "r1", "smp-1", "positive", stall="A07"))
    r.tick(70)
    r.item(res(80, "r2", "smp-1", "negative", "recheck", value=12.0, stall="A07"))
    r.tick(200)
    opened, overdue, resolved = as_alert(r.out[0]), as_alert(r.out[1]), as_alert(r.out[2])
    assert overdue.rule == R.RAPIDTEST_RECHECK_OVERDUE and overdue.evidence["sample_name"] == "菠菜"
    person = Person("p1", "Li", "operator", Recipient(name="Li"), 10)

    def text(alert: Alert, kind: str) -> str:
        send = Send("m1", person, (Pending("k", alert, kind, 0, alert.at_ms, alert.at_ms),), alert.at_ms)
        return render_text(send, link=None, code=None, summary_over=5)

    assert text(opened, "open") == (
        "[Larder] WARNING rapidtest.positive S01/S01/smp-1 since 2026-11-22T08:00:00.000Z "
        "(菠菜, organophosphate, 62.0% (limit 50.0%), stall A07)."
    )
    assert "no recheck within 60 min" in text(overdue, "open") and "CRITICAL" in text(overdue, "open")
    assert text(resolved, "resolved").endswith(
        "(菠菜, organophosphate, 12.0% (limit 50.0%), stall A07, recheck negative)."
    )
