"""Levels LL/L/H/HH: delays at their boundary, hysteresis, severities, notify flags, evidence."""

from __future__ import annotations

from pipeline.detectors.device import DeviceDetector
from pipeline.schemas import AlertState, Severity, alert_id

from .helpers import T0, Feeder, M, device_rules, minute_of, summary


def _feeder(**patch: object) -> Feeder:
    # Cumulative, MKT and rate of rise off so only levels speak.
    base = {"cumulative": {"limit": None}, "mkt": {"limit": None}, "rate_of_rise": {"limit_c_per_min": None}}
    return Feeder(DeviceDetector(device_rules(**(base | patch))))


def test_high_opens_when_delay_exactly_met() -> None:
    f = _feeder()
    f.series(0, 14, 9.0)
    f.r(15, 7.0)  # in range exactly at breach start + 15 min: the delay was met
    f.tick(16)
    (a,) = f.alerts("coldchain.high")
    assert a.state is AlertState.OPEN
    assert a.at_ms == T0 + 15 * M
    assert a.alert_id == alert_id("coldchain.high", "dev-1", T0 + 15 * M)
    assert a.severity is Severity.WARNING and a.notify
    assert a.evidence["limit_c"] == 8.0 and a.evidence["peak_c"] == 9.0
    assert a.evidence["breach_since"] == "2026-11-22T00:00:00.000Z"


def test_high_does_not_open_one_ms_before_the_delay() -> None:
    f = _feeder()
    f.series(0, 14, 9.0)
    f.r(15 - 1 / M, 7.0)
    f.tick(60)
    assert f.alerts("coldchain.high") == []


def test_value_at_the_limit_is_not_a_breach() -> None:
    f = _feeder()
    f.series(0, 30, 8.0)
    f.tick(31)
    assert f.alerts() == []


def test_hysteresis_band_and_clear_delay() -> None:
    f = _feeder()
    f.series(0, 15, 9.0)  # opens at 15
    f.series(16, 30, 7.8)  # inside the deadband (8 - 0.5 = 7.5): not clearing
    f.r(31, 7.5)  # clear condition starts
    f.r(33, 7.6)  # back in the band: clear restarts
    f.series(34, 38, 7.0)
    f.r(39, 7.0)  # clear since 34 + 5 min -> resolves at 39
    f.tick(45)
    opened, resolved = f.alerts("coldchain.high")
    assert minute_of(opened.at_ms) == 15
    assert resolved.state is AlertState.RESOLVED
    assert minute_of(resolved.at_ms) == 39
    assert resolved.alert_id == opened.alert_id
    assert resolved.resolved_at == "2026-11-22T00:39:00.000Z"
    assert resolved.opened_at == opened.opened_at
    assert resolved.evidence["open_min"] == 24.0


def test_high_high_is_critical_and_shorter() -> None:
    f = _feeder()
    f.series(0, 6, 13.0)
    rules = {a.rule: a for a in f.alerts()}
    assert minute_of(rules["coldchain.high_high"].at_ms) == 5
    assert rules["coldchain.high_high"].severity is Severity.CRITICAL
    assert "coldchain.high" not in rules
    f.series(7, 16, 13.0)
    assert minute_of(f.alerts("coldchain.high")[0].at_ms) == 15


def test_low_and_low_low() -> None:
    f = _feeder()
    f.series(0, 20, -3.0)
    got = {(a.rule, a.severity.value, minute_of(a.at_ms)) for a in f.alerts()}
    assert got == {("coldchain.low_low", "critical", 5.0), ("coldchain.low", "warning", 15.0)}
    f.series(21, 30, 0.5)  # >= 0 + 0.5 clears L after 5 min, LL too
    resolved = {(a.rule, minute_of(a.at_ms)) for a in f.alerts() if a.state is AlertState.RESOLVED}
    assert resolved == {("coldchain.low_low", 26.0), ("coldchain.low", 26.0)}


def test_notify_on_clear_false_and_zero_delays() -> None:
    f = _feeder(high={"delay_min": 0, "clear_delay_min": 0, "notify_on_clear": False})
    f.r(0, 4.0)
    f.r(1, 8.5)
    f.r(2, 4.0)
    f.tick(2 + 1 / M)  # a reading is processed once the frontier is past it
    opened, resolved = f.alerts("coldchain.high")
    assert minute_of(opened.at_ms) == 1 and opened.notify
    assert minute_of(resolved.at_ms) == 2 and not resolved.notify


def test_a_disabled_level_never_fires() -> None:
    f = _feeder(high_high={"limit": None})
    f.series(0, 30, 20.0)
    assert {a.rule for a in f.alerts()} == {"coldchain.high"}


def test_stale_data_does_not_open_a_level() -> None:
    # One breaching reading then silence: the value is held only 2 x interval, so no level alert, only offline.
    f = _feeder()
    f.r(0, 9.0)
    f.tick(120)
    assert [a.rule for a in f.alerts()] == ["liveness.offline", "liveness.gap"]
    # Data returns, still high: the delay restarts from the first fresh reading.
    f.series(121, 140, 9.0)
    high = f.alerts("coldchain.high")
    assert minute_of(high[0].at_ms) == 136


def test_outputs_are_in_event_time_order() -> None:
    f = _feeder()
    f.series(0, 40, 13.0)
    f.series(41, 60, 4.0)
    times = [o.at_ms for o in f.alerts()]
    assert times == sorted(times)
    assert summary(f.out)[0] == ("coldchain.high_high", "open", "critical", 5.0)
