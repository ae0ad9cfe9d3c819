"""Cumulative budget, rate of rise and mean kinetic temperature."""

from __future__ import annotations

import math

from pipeline.detectors.device import DeviceDetector
from pipeline.schemas import AlertState

from .helpers import Feeder, M, device_rules, minute_of


def _only(**patch: object) -> Feeder:
    off = {
        "high": {"limit": None},
        "high_high": {"limit": None},
        "low": {"limit": None},
        "low_low": {"limit": None},
        "cumulative": {"limit": None},
        "mkt": {"limit": None},
        "rate_of_rise": {"limit_c_per_min": None},
        "liveness": {"stuck_min": None},
    }
    for k, v in patch.items():
        off[k] = v  # type: ignore[assignment]
    return Feeder(DeviceDetector(device_rules(**off)))


def test_cumulative_budget_opens_at_the_exact_crossing_without_a_long_breach() -> None:
    # 10 min at 11 °C every hour: never a long breach, but 20 h of exposure after 120 hours.
    f = _only(cumulative={"limit": 10.0, "budget_min": 1200, "window_min": 10080})
    for h in range(130):
        f.series(h * 60, h * 60 + 9, 11.0)
        f.series(h * 60 + 10, h * 60 + 59, 4.0)
    (a,) = f.alerts("coldchain.cumulative")
    assert a.state is AlertState.OPEN
    assert minute_of(a.at_ms) == 119 * 60 + 10  # the 1200th minute of exposure ends at hour 119 + 10 min
    assert a.evidence["exposure_min"] == 1200.0


def test_cumulative_exposure_at_the_limit_counts_and_below_does_not() -> None:
    f = _only(cumulative={"limit": 10.0, "budget_min": 30, "window_min": 1440})
    f.series(0, 29, 9.99)
    f.series(30, 59, 10.0)
    f.r(60, 4.0)
    f.tick(61)
    (a,) = f.alerts("coldchain.cumulative")
    assert minute_of(a.at_ms) == 60


def test_cumulative_below_direction_and_resolution_when_the_window_slides() -> None:
    f = _only(cumulative={"limit": -0.5, "direction": "below", "budget_min": 60, "window_min": 240})
    f.series(0, 90, -1.0)
    f.series(91, 600, 4.0)
    alerts = f.alerts("coldchain.cumulative")
    assert (alerts[0].state.value, minute_of(alerts[0].at_ms)) == ("open", 60.0)
    # 240-min window = 24 buckets of 10 min (the current one + 23 before). Exposure was minutes 0..91; at the
    # boundary 270 the window starts at 40, leaving 51 min < 60 of exposure: resolved there, not before.
    assert alerts[1].state is AlertState.RESOLVED and minute_of(alerts[1].at_ms) == 270
    assert alerts[1].evidence["exposure_min"] == 51.0


def test_rate_of_rise_sustained_then_cleared() -> None:
    f = _only(rate_of_rise={"limit_c_per_min": 0.2, "window_min": 10, "delay_min": 10, "clear_delay_min": 5})
    f.series(0, 20, 2.0)
    for m in range(21, 60):
        f.r(m, 2.0 + (m - 20) * 0.3)  # compressor failure: +0.3 °C/min
    f.series(60, 90, 13.7)
    alerts = f.alerts("coldchain.rate_of_rise")
    assert [a.state.value for a in alerts] == ["open", "resolved"]
    # the rate over the window first exceeds 0.2 at minute 24 (5 min after the rise began, from the anchor at 17.5)
    opened = minute_of(alerts[0].at_ms)
    assert 30 <= opened <= 36
    assert alerts[0].evidence["peak_c_per_min"] > 0.2


def test_rate_of_rise_is_masked_by_the_door() -> None:
    f = _only(rate_of_rise={"limit_c_per_min": 0.2, "window_min": 10, "delay_min": 10})
    f.series(0, 20, 2.0)
    for m in range(21, 30):
        f.r(m, 2.0 + (m - 20) * 0.5, door_open=True)
    f.series(30, 60, 6.5, door_open=False)  # the delay restarts at the door closing; the rise is over by then
    f.tick(61)
    assert f.alerts("coldchain.rate_of_rise") == []


def _mkt(temps_minutes: list[tuple[float, float]]) -> float:
    a = 83144 / 8.314462618
    num = sum(d * math.exp(-a / (t + 273.15)) for t, d in temps_minutes)
    den = sum(d for _, d in temps_minutes)
    return a / -math.log(num / den) - 273.15


def test_mkt_over_24h_matches_the_formula_and_opens_at_a_bucket_boundary() -> None:
    f = _only(mkt={"limit": 8.0, "window_min": 1440})
    # 12 h at 4 °C then 12 h at 12 °C: arithmetic mean 8, MKT above 8 (weighted towards the warm part).
    f.series(0, 719, 4.0)
    f.series(720, 1440, 12.0)
    f.tick(1441)
    (a,) = f.alerts("coldchain.mkt")
    # Evaluated hourly over the data in the window: first above 8 °C at 20 h (12 h at 4 °C, 8 h at 12 °C).
    assert minute_of(a.at_ms) == 1200
    assert _mkt([(4.0, 720.0), (12.0, 420.0)]) <= 8.0 < _mkt([(4.0, 720.0), (12.0, 480.0)])
    assert abs(a.evidence["mkt_c"] - _mkt([(4.0, 720.0), (12.0, 480.0)])) < 0.01
    assert a.evidence["coverage"] == round(1200 / 1440, 3)


def test_mkt_needs_coverage_and_resolves_below_the_deadband() -> None:
    f = _only(mkt={"limit": 8.0, "window_min": 1440, "min_coverage": 0.5, "deadband": 0.5})
    f.series(0, 600, 9.0)
    assert f.alerts("coldchain.mkt") == []  # 10 h < half the window
    f.series(601, 1440, 9.0)
    assert minute_of(f.alerts("coldchain.mkt")[0].at_ms) == 720  # 12 h of data at the 12 h boundary
    f.series(1441, 3 * 1440, 4.0)
    resolved = f.alerts("coldchain.mkt")[-1]
    assert resolved.state is AlertState.RESOLVED
    assert resolved.evidence["mkt_c"] <= 7.5
    assert M == 60_000
