"""Escalation timing, reminders, quiet hours, grouping and rate limits of the pure router, on a controlled clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline import testing
from pipeline.alerts.delivery_log import Ledger
from pipeline.alerts.routing import (
    MINUTE_MS,
    Router,
    RouterState,
    RoutingConfig,
    Send,
    Transition,
    message_id,
    quiet_until,
)
from pipeline.clock import ManualClock
from pipeline.schemas import Ack, Alert, AlertState, Delivery, ms_to_iso
from pipeline.siteconfig import SiteConfig

T0 = int(datetime(2026, 11, 23, 2, 0, tzinfo=UTC).timestamp() * 1000)  # 10:00 in Asia/Shanghai
S = 1000


def site(name: str, *, quiet: str | None = None, station: str = "Station Li", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "timezone": "Asia/Shanghai",
        "recipients": {
            "operator": [{"name": f"op-{name}", "phone": "+8613800000001"}],
            "site_manager": [{"name": f"mgr-{name}", "phone": "+8613800000002"}],
            "station": [{"name": station, "phone": "+8613900000009"}],
            "district": [{"name": "Bureau", "phone": "+8613900000010"}],
        },
        **extra,
    }
    if quiet:
        out["quiet_hours"] = quiet
    return out


def router(sites: dict[str, Any], **cfg: int) -> Router:
    config = SiteConfig.model_validate({"sites": sites})
    return Router(RoutingConfig.from_sites(config, **{"group_window_ms": 30 * S, **cfg}))


def alert(
    site_id: str, opened_ms: int, *, rule: str = "coldchain.high", sev: str = "warning", subj: str = "d1"
) -> Alert:
    return testing.open_alert(site_id, subj, opened_ms, rule=rule, severity=sev)


def resolved(a: Alert, at_ms: int) -> Alert:
    return a.model_copy(update={"state": AlertState.RESOLVED, "resolved_at": ms_to_iso(at_ms), "at_ms": at_ms})


class Harness:
    """Drives a router like the notifier does: events at the clock's time, then a tick."""

    def __init__(self, r: Router, clock: ManualClock) -> None:
        self.r, self.clock, self.state = r, clock, RouterState()
        self.sends: list[tuple[int, Send]] = []
        self.transitions: list[Alert] = []

    def _take(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, Send):
                self.sends.append((self.clock.now_ms(), a))
            else:
                assert isinstance(a, Transition)
                self.transitions.append(a.alert)

    def alert(self, a: Alert) -> None:
        self.state, acts = self.r.on_alert(self.state, a, self.clock.now_ms())
        self._take(acts)
        self.tick()

    def ack(self, aid: str, site_id: str, note: str = "moved stock") -> None:
        ack = Ack(alert_id=aid, site=site_id, by="op", via="link", note=note, at_ms=self.clock.now_ms())
        self.state, acts = self.r.on_ack(self.state, ack, self.clock.now_ms())
        self._take(acts)

    def tick(self) -> None:
        self.state, acts = self.r.on_tick(self.state, self.clock.now_ms())
        self._take(acts)

    def run_until(self, end_ms: int, step_ms: int = 5 * S) -> None:
        while self.clock.now_ms() < end_ms:
            self.clock.advance(step_ms)
            self.tick()

    def who(self) -> list[tuple[int, str, tuple[str, ...]]]:
        """(seconds after T0, person name, notification kinds) per message."""
        return [((t - T0) // S, s.person.name, tuple(p.kind for p in s.items)) for t, s in self.sends]


def test_escalation_steps_on_time_and_ack_stops_everything() -> None:
    clock = ManualClock(T0)
    h = Harness(router({"S1": site("S1")}), clock)
    a = alert("S1", T0)
    h.alert(a)
    assert h.sends == [], "nothing before the group window closes"
    h.run_until(T0 + 30 * S)
    assert h.who() == [(30, "op-S1", ("open",))]
    h.run_until(T0 + 15 * MINUTE_MS + 30 * S)
    assert h.who()[-1] == (15 * 60 + 30, "mgr-S1", ("escalated",)), "manager 15 min + group window"
    assert [t.state for t in h.transitions] == [AlertState.ESCALATED]
    assert h.transitions[0].at_ms == T0 + 15 * MINUTE_MS, "stamped with the deadline, not the tick"
    assert h.transitions[0].evidence["step"] == 1
    h.ack(a.alert_id, "S1")
    assert h.transitions[-1].state is AlertState.ACKNOWLEDGED
    assert h.transitions[-1].evidence["note"] == "moved stock"
    before = len(h.sends)
    h.run_until(T0 + 4 * 60 * MINUTE_MS, step_ms=60 * S)
    assert len(h.sends) == before, "no station step, no reminders after the ack"
    h.ack(a.alert_id, "S1")
    assert sum(t.state is AlertState.ACKNOWLEDGED for t in h.transitions) == 1, "a second ack is a no-op"


def test_critical_starts_higher_and_station_at_ten_minutes() -> None:
    clock = ManualClock(T0)
    h = Harness(router({"S1": site("S1")}), clock)
    h.alert(alert("S1", T0, sev="critical"))
    h.run_until(T0 + 11 * MINUTE_MS)
    names = [(n, k) for _, n, k in h.who()]
    assert ("op-S1", ("open",)) in names and ("mgr-S1", ("open",)) in names
    assert ("Station Li", ("escalated",)) in names


def test_reminders_repeat_to_the_current_step_while_unacknowledged() -> None:
    clock = ManualClock(T0)
    policy = {"warning": [{"after_min": 0, "roles": ["operator"]}], "reminder_min": 10}
    h = Harness(router({"S1": site("S1", escalation=policy)}), clock)
    h.alert(alert("S1", T0))
    h.run_until(T0 + 35 * MINUTE_MS, step_ms=10 * S)
    kinds = [k for _, _, k in h.who()]
    assert kinds == [("open",), ("reminder",), ("reminder",), ("reminder",)]
    keys = [s.items[0].key.split("|")[1] for _, s in h.sends]
    assert keys == ["0", "0r1", "0r2", "0r3"]


def test_resolved_without_ack_tells_those_notified_and_stops() -> None:
    clock = ManualClock(T0)
    h = Harness(router({"S1": site("S1")}), clock)
    a = alert("S1", T0)
    h.alert(a)
    h.run_until(T0 + 60 * S)
    clock.advance(5 * MINUTE_MS)
    h.alert(resolved(a, clock.now_ms()))
    h.run_until(clock.now_ms() + 2 * 60 * MINUTE_MS, step_ms=60 * S)
    assert [(n, k) for _, n, k in h.who()] == [("op-S1", ("open",)), ("op-S1", ("resolved",))]


def test_quiet_hours_hold_non_critical_only() -> None:
    # 23:00 in Shanghai; quiet 22:00-07:00 local
    start = int(datetime(2026, 11, 23, 15, 0, tzinfo=UTC).timestamp() * 1000)
    clock = ManualClock(start)
    h = Harness(router({"S1": site("S1", quiet="22:00-07:00")}), clock)
    warn = alert("S1", start, subj="fridge")
    crit = alert("S1", start, sev="critical", subj="freezer")
    h.alert(warn)
    h.alert(crit)
    h.run_until(start + 2 * MINUTE_MS)
    assert {p.alert.alert_id for _, s in h.sends for p in s.items} == {crit.alert_id}
    end_quiet = int(datetime(2026, 11, 23, 23, 0, tzinfo=UTC).timestamp() * 1000)  # 07:00 local
    h.run_until(end_quiet - MINUTE_MS, step_ms=MINUTE_MS)
    assert warn.alert_id not in {p.alert.alert_id for _, s in h.sends for p in s.items}
    h.run_until(end_quiet + MINUTE_MS, step_ms=10 * S)
    warn_msgs = [(t, s) for t, s in h.sends if any(p.alert.alert_id == warn.alert_id for p in s.items)]
    assert warn_msgs and warn_msgs[0][0] >= end_quiet + 30 * S, "held until 07:00 plus the group window"
    # everyone the warning reached by 07:00 hears in one message each (operator, manager, station held)
    assert {s.person.role for _, s in warn_msgs} == {"operator", "site_manager", "station"}


def test_quiet_until_wraps_midnight() -> None:
    r = router({"S1": site("S1", quiet="22:00-07:00")})
    pol = r.config.sites["S1"]
    at_23 = int(datetime(2026, 11, 23, 15, 0, tzinfo=UTC).timestamp() * 1000)
    at_12 = int(datetime(2026, 11, 23, 4, 0, tzinfo=UTC).timestamp() * 1000)
    assert quiet_until(pol, at_23) == int(datetime(2026, 11, 23, 23, 0, tzinfo=UTC).timestamp() * 1000)
    assert quiet_until(pol, at_12) is None


def test_alerts_of_one_site_within_the_window_go_out_as_one_message() -> None:
    clock = ManualClock(T0)
    h = Harness(router({"S1": site("S1")}), clock)
    for i in range(3):
        h.alert(alert("S1", clock.now_ms(), subj=f"d{i}"))
        clock.advance(5 * S)
    h.run_until(T0 + 2 * MINUTE_MS)
    assert len(h.sends) == 1 and len(h.sends[0][1].items) == 3


def test_mass_outage_gives_the_supervisor_one_summary() -> None:
    sites = {f"S{i:03d}": site(f"S{i:03d}") for i in range(100)}
    clock = ManualClock(T0)
    h = Harness(router(sites), clock)
    for sid in sites:
        h.alert(alert(sid, T0, rule="liveness.offline", subj=f"{sid}-dev"))
    h.run_until(T0 + 61 * MINUTE_MS, step_ms=30 * S)
    to_station = [s for _, s in h.sends if s.person.name == "Station Li"]
    assert len(to_station) == 1, "100 sites offline -> one message to the station"
    assert len(to_station[0].items) == 100
    operators = {s.person.name for _, s in h.sends if s.person.role == "operator"}
    assert len(operators) == 100, "each site's operator hears about their own site"


def test_rate_limit_holds_and_merges_overflow() -> None:
    clock = ManualClock(T0)
    h = Harness(router({"S1": site("S1")}, rate_limit=2, rate_window_ms=60 * MINUTE_MS, group_window_ms=0), clock)
    for i in range(5):
        h.alert(alert("S1", clock.now_ms(), subj=f"d{i}"))
        clock.advance(MINUTE_MS)
        h.tick()
    ops = [(t, s) for t, s in h.sends if s.person.name == "op-S1"]
    assert len(ops) == 2, "two messages, then held"
    h.run_until(T0 + 61 * MINUTE_MS, step_ms=MINUTE_MS)
    ops = [(t, s) for t, s in h.sends if s.person.name == "op-S1" and s.items[0].kind == "open"]
    assert len(ops) == 3 and len(ops[2][1].items) == 3, "the held three go out together when the window frees"
    assert ops[2][0] >= T0 + 60 * MINUTE_MS


def test_critical_is_not_rate_limited() -> None:
    clock = ManualClock(T0)
    h = Harness(router({"S1": site("S1")}, rate_limit=1, group_window_ms=0), clock)
    h.alert(alert("S1", T0, subj="a"))
    clock.advance(MINUTE_MS)
    h.alert(alert("S1", clock.now_ms(), subj="b", sev="critical"))
    assert len([s for _, s in h.sends if s.person.name == "op-S1"]) == 2


def _rebuilt_after_twenty_minutes() -> tuple[Router, Harness, Alert, ManualClock, RouterState]:
    """One alert run live for 20 min (sent, escalated), then what a new process folds from the same topics:
    the ledger's planned records first, then the alert records."""
    clock = ManualClock(T0)
    r = router({"S1": site("S1")})
    h = Harness(r, clock)
    a = alert("S1", T0)
    h.alert(a)
    h.run_until(T0 + 20 * MINUTE_MS)
    assert any(t.state is AlertState.ESCALATED for t in h.transitions)
    state = r.on_planned_many(RouterState(), [(s.person.id, s.keys, s.at_ms) for _, s in h.sends])
    for rec in [a, *h.transitions]:
        state, _ = r.on_alert(state, rec, clock.now_ms())
    return r, h, a, clock, state


def test_each_key_is_planned_once_even_after_a_rebuild() -> None:
    r, _h, _a, clock, state = _rebuilt_after_twenty_minutes()
    clock.advance(MINUTE_MS)
    state, acts = r.on_tick(state, clock.now_ms())
    assert not [x for x in acts if isinstance(x, Send)], "nothing is planned twice"
    assert not [x for x in acts if isinstance(x, Transition)], "no repeated escalation"


def test_after_a_rebuild_the_resolution_still_reaches_everyone_notified() -> None:
    """The ledger is read before the alerts topic: who was notified must survive to the track created later,
    or a resolution after a restart tells nobody."""
    r, h, a, clock, state = _rebuilt_after_twenty_minutes()
    notified = {s.person.id for _, s in h.sends}
    assert notified
    resolved = a.model_copy(update={"state": AlertState.RESOLVED, "at_ms": clock.now_ms()})
    state, _ = r.on_alert(state, resolved, clock.now_ms())
    clock.advance(10 * MINUTE_MS)
    state, acts = r.on_tick(state, clock.now_ms())
    told = {x.person.id for x in acts if isinstance(x, Send) and any(p.kind == "resolved" for p in x.items)}
    assert told == notified


def test_notifications_still_queued_at_a_restart_are_sent_after_it() -> None:
    """Quiet hours hold an alert's step 0 and step 1 notifications until 07:00; the notifier restarts at 23:20
    with nothing planned in the ledger and the escalated record in the alerts topic. The morning's messages
    must be those of a run without the restart."""
    start = int(datetime(2026, 11, 23, 15, 0, tzinfo=UTC).timestamp() * 1000)  # 23:00 in Shanghai
    policy = site(
        "S1",
        quiet="22:00-07:00",
        escalation={
            "warning": [{"after_min": 0, "roles": ["operator"]}, {"after_min": 15, "roles": ["site_manager"]}],
            "reminder_min": 600,
        },
    )
    morning = int(datetime(2026, 11, 23, 23, 10, tzinfo=UTC).timestamp() * 1000)
    clock = ManualClock(start)
    r = router({"S1": policy})
    h = Harness(r, clock)
    a = alert("S1", start)
    h.alert(a)
    h.run_until(start + 20 * MINUTE_MS, step_ms=60 * S)
    assert not h.sends and any(t.state is AlertState.ESCALATED for t in h.transitions), "held by quiet hours"

    state = RouterState()  # the restart: nothing planned, the alerts topic folded again
    for rec in [a, *h.transitions]:
        state, _ = r.on_alert(state, rec, clock.now_ms())
    after: list[tuple[str, list[str]]] = []
    t = clock.now_ms()
    while t < morning:
        t += 60 * S
        state, acts = r.on_tick(state, t)
        after += [(x.person.role, sorted(p.key.split("|")[1] for p in x.items)) for x in acts if isinstance(x, Send)]
    h.run_until(morning, step_ms=60 * S)
    without = [(s.person.role, sorted(p.key.split("|")[1] for p in s.items)) for _, s in h.sends]
    assert without and sorted(after) == sorted(without)


def test_info_and_silent_alerts_notify_nobody() -> None:
    clock = ManualClock(T0)
    h = Harness(router({"S1": site("S1")}), clock)
    h.alert(alert("S1", T0, sev="info"))
    h.alert(alert("S1", T0, subj="x").model_copy(update={"notify": False}))
    h.run_until(T0 + 2 * 60 * MINUTE_MS, step_ms=MINUTE_MS)
    assert h.sends == [] and h.transitions == []


def test_late_alert_enters_every_due_step_at_once() -> None:
    clock = ManualClock(T0 + 90 * MINUTE_MS)
    h = Harness(router({"S1": site("S1")}), clock)
    h.alert(alert("S1", T0))
    h.run_until(clock.now_ms() + MINUTE_MS)
    assert {s.person.role for _, s in h.sends} == {"operator", "site_manager", "station"}
    assert [t.evidence["step"] for t in h.transitions] == [1, 2]


@pytest.mark.parametrize("keys", [["a|0|p", "b|0|p"], ["b|0|p", "a|0|p"]])
def test_message_id_does_not_depend_on_order(keys: list[str]) -> None:
    assert message_id(keys) == message_id(["a|0|p", "b|0|p"])


def test_an_old_resolution_keeps_its_alert_until_its_notice_is_delivered() -> None:
    """A resolution uploaded after a long outage is older than ``keep_resolved_ms`` on arrival. Its notice is
    built from the alert's track when it is delivered, so the track stays while the notice is planned now or
    still on its way (``busy``), and goes once it is not (found by the chaos test run just after midnight UTC,
    when its scenario's day started over 24 h before: the notices went out without their alerts)."""
    clock = ManualClock(T0)
    r = router({"S1": site("S1")}, keep_resolved_ms=60 * MINUTE_MS)
    a = alert("S1", T0 - 3 * 60 * MINUTE_MS)
    state, _ = r.on_alert(RouterState(), a, clock.now_ms())
    for _ in range(12):
        clock.advance(10 * S)
        state, _ = r.on_tick(state, clock.now_ms())
    assert a.alert_id in state.tracks
    state, acts = r.on_alert(state, resolved(a, T0 - 2 * 60 * MINUTE_MS), clock.now_ms())
    kinds: list[str] = []
    while "resolved" not in kinds:
        clock.advance(10 * S)
        state, acts = r.on_tick(state, clock.now_ms())
        kinds += [p.kind for send in acts if isinstance(send, Send) for p in send.items]
        assert clock.now_ms() < T0 + 10 * MINUTE_MS, "the resolution notice never went out"
    assert a.alert_id in state.tracks, "planned in this tick: its delivery has not read the track yet"
    clock.advance(10 * S)
    state, _ = r.on_tick(state, clock.now_ms(), busy={a.alert_id})
    assert a.alert_id in state.tracks, "still on its way"
    clock.advance(10 * S)
    state, _ = r.on_tick(state, clock.now_ms())
    assert a.alert_id not in state.tracks, "delivered: forgotten"


def test_the_ledger_keeps_the_messages_in_flight_as_records_arrive() -> None:
    """What the notifier asks at every tick (which alerts are in messages on their way) is kept as the ledger's
    records arrive, not found by going through every message ever planned."""

    def rec(kind: str, mid: str, at_ms: int, *alerts: str) -> Delivery:
        return Delivery(kind=kind, message_id=mid, at_ms=at_ms, recipient="r1", alert_ids=list(alerts))  # type: ignore[arg-type]

    led = Ledger()
    led.apply(rec("planned", "m2", 2, "a2", "a3"))
    led.apply(rec("planned", "m1", 1, "a1"))
    led.apply(rec("attempt", "m1", 3))
    assert [d.message_id for d in led.in_flight()] == ["m1", "m2"] and led.alerts_in_flight() == {"a1", "a2", "a3"}
    led.apply(rec("delivered", "m2", 4))
    led.apply(rec("planned", "m2", 2, "a2", "a3"))  # read again (a restart folding the topic): still closed
    assert [d.message_id for d in led.in_flight()] == ["m1"] and led.alerts_in_flight() == {"a1"}
    led.apply(rec("failed", "m1", 5))
    assert led.in_flight() == [] and led.alerts_in_flight() == set()
