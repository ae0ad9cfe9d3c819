"""Unattended stove, hygiene events, event-id de-duplication, lateness, verdicts."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.detectors.kitchen import KitchenDetector, KitchenState, Verdict, VerdictError, apply_verdict
from pipeline.detectors.run import run_kitchen_stream
from pipeline.schemas import Alert, AlertState, KitchenEvent, Severity

from .helpers import T0, M, Run, as_alert, as_annotation, kitchen_rules, minute_of

_n = 0


def ev(minute: float, typ: str, camera: str = "cam-1", **extra: Any) -> dict[str, Any]:
    global _n
    _n += 1
    return {
        "ts_ms": T0 + round(minute * M),
        "camera": camera,
        "event_id": f"e{_n}",
        "type": typ,
        "zone": "cook",
    } | extra


class K(Run):
    det: KitchenDetector
    state: KitchenState

    def __init__(self, **patch: Any) -> None:
        super().__init__(KitchenDetector(kitchen_rules(**patch)))

    e = Run.item

    def alerts(self, prefix: str = "") -> list[Alert]:
        return [a for a in self.out if isinstance(a, Alert) and a.rule.startswith(prefix)]


def test_unattended_warning_at_t1_critical_at_t2_resolved_when_someone_returns() -> None:
    k = K()
    k.e(ev(0, "person_present"))
    k.e(ev(1, "stove_on"))
    k.e(ev(2, "person_absent"))
    k.tick(2 + 5 - 1 / M)
    assert k.alerts() == []
    k.tick(2 + 5)  # exactly T1 after nobody is there
    k.tick(30)
    k.e(ev(31, "person_count", count=1))
    k.tick(32)
    got = [(a.severity, a.state, minute_of(a.at_ms)) for a in k.alerts("kitchen.unattended")]
    assert got == [
        (Severity.WARNING, AlertState.OPEN, 7.0),
        (Severity.CRITICAL, AlertState.OPEN, 17.0),
        (Severity.WARNING, AlertState.RESOLVED, 31.0),
        (Severity.CRITICAL, AlertState.RESOLVED, 31.0),
    ]
    assert k.alerts()[-1].evidence["reason"] == "person_returned"
    assert k.alerts()[0].subject == "S01/k1"


def test_unattended_resolves_when_the_stove_goes_off_and_not_before_t1() -> None:
    k = K()
    k.e(ev(0, "stove_on"))  # nobody seen at all counts as nobody there
    k.e(ev(4.9, "stove_off"))
    k.tick(60)
    assert k.alerts() == []
    k.e(ev(61, "stove_on"))
    k.e(ev(70, "stove_off"))
    k.tick(71)
    assert [(a.state.value, minute_of(a.at_ms)) for a in k.alerts()] == [("open", 66.0), ("resolved", 70.0)]
    assert k.alerts()[-1].evidence["reason"] == "stove_off"


def test_a_resolution_stamped_after_its_instant_comes_after_the_rest_of_that_instant() -> None:
    """The warning falls due at minute 5 and fires before the events at minute 5: a person appears, which
    clears it (stamped 1 ms later: no zero-duration record), then a rodent is seen, which opens at minute 5
    exactly. A kitchen's outputs are in event-time order, so the rodent comes first."""
    k = K()
    k.e(ev(0, "stove_on"))  # nobody seen at all counts as nobody there
    k.e(ev(5, "person_present"))
    k.e(ev(5, "rodent", camera="cam-2"))  # after the person in the (ts, camera, event_id) order
    k.tick(6)
    got = [(a.rule, a.state.value, a.at_ms - T0) for a in k.alerts()]
    assert got == [
        ("kitchen.unattended", "open", 5 * M),
        ("kitchen.hygiene.rodent", "open", 5 * M),
        ("kitchen.unattended", "resolved", 5 * M + 1),
    ]
    assert [a.at_ms for a in k.alerts()] == sorted(a.at_ms for a in k.alerts())


def test_two_cook_zone_cameras_anyone_present_is_enough_other_zones_ignored() -> None:
    k = K()
    k.e(ev(0, "stove_on"))
    k.e(ev(0, "person_present", camera="cam-2"))
    k.e(ev(1, "person_absent", camera="cam-1"))
    k.e(ev(1, "person_absent", camera="cam-3", zone="dish"))
    k.tick(30)
    assert k.alerts() == []
    k.e(ev(31, "person_absent", camera="cam-2"))
    k.tick(40)
    assert minute_of(k.alerts()[0].at_ms) == 36


def test_only_during_service_hours() -> None:
    rules = kitchen_rules().model_copy(update={"service_hours": ((10 * 60, 14 * 60),), "timezone": "UTC"})
    det = KitchenDetector(rules)
    events = [ev(9 * 60, "stove_on"), ev(9 * 60, "person_absent")]
    outs = run_kitchen_stream(det, events, final_ms=T0 + 15 * 60 * M)
    got = [(a.severity.value, a.state.value, minute_of(a.at_ms)) for a in outs if isinstance(a, Alert)]
    # condition starts at 10:00, warning 10:05, critical 10:15, resolved at the end of service 14:00
    assert got == [
        ("warning", "open", 605.0),
        ("critical", "open", 615.0),
        ("warning", "resolved", 840.0),
        ("critical", "resolved", 840.0),
    ]
    assert as_alert(outs[-1]).evidence["reason"] == "service_hours_ended"


def test_hygiene_threshold_dedup_window_and_severity() -> None:
    k = K()
    k.e(ev(0, "no_hat", confidence=0.59))  # below 0.6: ignored
    k.e(ev(1, "no_hat", confidence=0.8))
    k.e(ev(5, "no_hat", confidence=0.9))  # same type inside 10 min: counted, no new alert
    k.e(ev(6, "rodent", confidence=0.7))
    k.e(ev(11, "no_hat", confidence=0.7))  # window [1, 11) is over: a new alert
    k.tick(30)
    got = [(a.rule, a.severity.value, a.state.value, minute_of(a.at_ms)) for a in k.alerts()]
    assert got == [
        ("kitchen.hygiene.no_hat", "warning", "open", 1.0),
        ("kitchen.hygiene.rodent", "critical", "open", 6.0),
        ("kitchen.hygiene.no_hat", "warning", "resolved", 11.0),
        ("kitchen.hygiene.no_hat", "warning", "open", 11.0),
        ("kitchen.hygiene.rodent", "critical", "resolved", 16.0),
        ("kitchen.hygiene.no_hat", "warning", "resolved", 21.0),
    ]
    first_resolved = k.alerts()[2]
    assert first_resolved.evidence["events"] == 2 and first_resolved.evidence["max_confidence"] == 0.9
    assert not first_resolved.notify


def test_hygiene_type_switched_off_by_override() -> None:
    k = K(hygiene={"severities": {"phone": None}})
    k.e(ev(0, "phone", confidence=1.0))
    k.e(ev(0, "fire", confidence=1.0))
    k.tick(1)
    assert [a.rule for a in k.alerts()] == ["kitchen.hygiene.fire"]


def test_duplicate_event_id_is_exact_and_returns_the_same_state() -> None:
    k = K(allowed_lateness_min=1)
    item = ev(0, "fire", confidence=0.99)
    k.e(item)
    before = k.state
    assert k.e(dict(item)) == [] and k.state is before
    k.tick(30)
    again = k.state
    assert k.e(dict(item), now_min=30) == [] and k.state is again  # long after, still not "late"
    other_camera = dict(item, camera="cam-9")
    outs = k.e(other_camera, now_min=30)
    assert [as_annotation(o).kind for o in outs] == ["late"]  # same id, other camera: a new event


def test_late_event_is_annotated_and_counted() -> None:
    k = K(allowed_lateness_min=1)
    k.e(ev(10, "person_present"))
    k.tick(20)
    (out,) = k.e(ev(5, "stove_on"), now_min=20)
    ann = as_annotation(out)
    assert ann.kind == "late" and ann.detail["type"] == "stove_on" and ann.detail["late_count"] == 1
    assert k.state.stove_since is None and k.state.late_count == 1


def test_model_and_dict_paths_agree_and_state_round_trips() -> None:
    det = KitchenDetector(kitchen_rules())
    items = [ev(0, "stove_on"), ev(1, "person_absent"), ev(3, "no_mask", confidence=0.9), ev(30, "stove_off")]
    models = [KitchenEvent(site="S01", kitchen="k1", received_ms=0, **i) for i in items]
    a = run_kitchen_stream(det, items, final_ms=T0 + 60 * M)
    assert a == run_kitchen_stream(det, models, final_ms=T0 + 60 * M)
    s = det.initial()
    for i in items:
        s, _ = det.on_event_dict(s, i, i["ts_ms"])
    assert det.state_from_bytes(det.state_to_bytes(s)) == s


def _hygiene_alert() -> Alert:
    det = KitchenDetector(kitchen_rules())
    out = run_kitchen_stream(det, [ev(0, "smoking", confidence=0.9)], final_ms=T0 + M)
    (a,) = out
    assert isinstance(a, Alert)
    return a


def test_verdict_transitions() -> None:
    a = _hygiene_alert()
    c = apply_verdict(a, Verdict.CONFIRMED, T0 + M, by="manager")
    assert c.evidence["verdict"] == "confirmed" and c.evidence["verdict_by"] == "manager"
    assert c.state is a.state and c.alert_id == a.alert_id
    assert apply_verdict(c, "confirmed", T0 + 2 * M) is c  # idempotent
    fp = apply_verdict(c, "false_positive", T0 + 3 * M, by="district")
    assert fp.evidence["verdict"] == "false_positive"
    assert fp.evidence["verdict_history"] == [
        {"verdict": "confirmed", "at": "2026-11-22T00:01:00.000Z", "by": "manager"}
    ]
    assert "verdict" not in a.evidence  # pure: the input is unchanged


def test_verdict_refuses_other_rules_and_unknown_verdicts() -> None:
    a = _hygiene_alert()
    with pytest.raises(VerdictError):
        apply_verdict(a, "maybe", T0)
    with pytest.raises(VerdictError):
        apply_verdict(a.model_copy(update={"rule": "kitchen.unattended"}), "confirmed", T0)


def _verdict(k: K, alert: Alert, verdict: str, minute: float) -> list[Any]:
    item = {"kitchen": "k1", "site": "S01", "alert_id": alert.alert_id, "verdict": verdict, "by": "st-1"}
    k.state, o = k.det.on_verdict_dict(k.state, item | {"at_ms": T0 + round(minute * M)}, k.state.frontier)
    k.out += o
    return o


def test_a_false_positive_ends_the_open_episode_so_the_next_event_is_an_alert_of_its_own() -> None:
    k = K(allowed_lateness_min=0)
    k.e(ev(0, "no_mask", confidence=0.9))
    k.tick(1)
    (opened,) = k.alerts("kitchen.hygiene")
    k.e(ev(2, "no_mask", confidence=0.9))
    k.tick(3)  # within the de-dup window: counted into the open episode
    assert len(k.alerts("kitchen.hygiene")) == 1 and k.state.hygiene[0][2] == 2
    assert _verdict(k, opened, "confirmed", 3) == [] and len(k.state.hygiene) == 1  # confirmed: it goes on
    (closed,) = _verdict(k, opened, "false_positive", 3)
    assert closed.alert_id == opened.alert_id and closed.state is AlertState.RESOLVED and not closed.notify
    assert closed.evidence["verdict"] == "false_positive" and closed.evidence["events"] == 2
    assert closed.resolved_at != closed.opened_at and k.state.hygiene == ()
    before = k.state
    assert _verdict(k, opened, "false_positive", 4) == [] and k.state is before  # redelivered: nothing
    k.e(ev(4, "no_mask", confidence=0.9))
    k.tick(5)
    fresh = k.alerts("kitchen.hygiene")[-1]
    assert fresh.state is AlertState.OPEN and fresh.alert_id != opened.alert_id


def test_a_verdict_does_not_move_the_kitchen_clock_and_bad_ones_are_refused() -> None:
    k = K(allowed_lateness_min=0)
    k.e(ev(0, "smoking", confidence=0.9))
    k.tick(1)
    (a,) = k.alerts("kitchen.hygiene")
    frontier = k.state.frontier
    _verdict(k, a, "false_positive", 24 * 60)  # clicked a day later (a replayed day): wall-clock time
    assert k.state.frontier == frontier
    with pytest.raises(ValueError):
        k.det.on_verdict_dict(k.state, {"alert_id": a.alert_id, "verdict": "maybe", "at_ms": T0}, T0)
