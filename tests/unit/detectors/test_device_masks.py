"""Door alerts, and door / defrost / schedule / start-up masks: bounded, and always annotated."""

from __future__ import annotations

from pipeline.detectors.device import DeviceDetector
from pipeline.schemas import AlertState, Severity

from .helpers import T0, Feeder, M, device_rules, minute_of

_QUIET = {"cumulative": {"limit": None}, "mkt": {"limit": None}, "rate_of_rise": {"limit_c_per_min": None}}


def _feeder(**patch: object) -> Feeder:
    return Feeder(DeviceDetector(device_rules(**(_QUIET | patch))))


def test_door_warns_after_n_and_is_critical_after_m_then_resolves() -> None:
    f = _feeder()
    f.series(0, 20, 4.0, door_open=True)
    f.r(21, 4.0, door_open=False)
    f.tick(22)
    door = f.alerts("coldchain.door_open")
    assert [(a.severity, a.state, minute_of(a.at_ms)) for a in door] == [
        (Severity.WARNING, AlertState.OPEN, 5.0),
        (Severity.CRITICAL, AlertState.OPEN, 15.0),
        (Severity.WARNING, AlertState.RESOLVED, 21.0),
        (Severity.CRITICAL, AlertState.RESOLVED, 21.0),
    ]


def test_door_mask_defers_high_and_is_annotated() -> None:
    f = _feeder()
    f.r(0, 4.0)
    f.series(1, 9, 10.0, door_open=True)  # warm air while the door is open
    f.series(10, 40, 10.0, door_open=False)  # door shut at 10, still warm
    f.tick(41)
    (masked,) = f.annotations("masked")
    assert (minute_of(masked.start_ms), minute_of(masked.end_ms)) == (1.0, 10.0)
    assert masked.detail == {"reasons": ["door"], "readings": 9, "min_c": 10.0, "max_c": 10.0}
    high = f.alerts("coldchain.high")
    assert minute_of(high[0].at_ms) == 25  # mask end 10 + delay 15, not 1 + 15
    assert high[0].evidence["breach_since"] == "2026-11-22T00:10:00.000Z"


def test_a_door_left_open_masks_only_for_a_bounded_time() -> None:
    f = _feeder()
    f.series(0, 40, 10.0, door_open=True)
    f.tick(41)
    (masked,) = f.annotations("masked")
    assert (minute_of(masked.start_ms), minute_of(masked.end_ms)) == (0.0, 15.0)  # door_max_min = 15
    assert minute_of(f.alerts("coldchain.high")[0].at_ms) == 30


def test_high_high_masked_too_but_low_levels_are_not() -> None:
    f = _feeder()
    f.series(0, 10, -5.0, defrost=True)
    rules = {(a.rule, minute_of(a.at_ms)) for a in f.alerts()}
    assert ("coldchain.low_low", 5.0) in rules


def test_defrost_flag_mask_bounded_by_defrost_max() -> None:
    f = _feeder(masks={"defrost_max_min": 20})
    f.series(0, 60, 13.0, defrost=True)
    (masked,) = f.annotations("masked")
    assert (minute_of(masked.start_ms), minute_of(masked.end_ms)) == (0.0, 20.0)
    assert masked.detail["reasons"] == ["defrost"]
    assert minute_of(f.alerts("coldchain.high_high")[0].at_ms) == 25


def test_defrost_schedule_in_site_local_time() -> None:
    # 02:00-02:30 Asia/Shanghai (UTC+8) is 18:00-18:30 UTC of the day before.
    rules = device_rules(**_QUIET)
    rules = rules.model_copy(update={"timezone": "Asia/Shanghai", "defrost_schedule": ((120, 150),)})
    f = Feeder(DeviceDetector(rules))
    f.series(17 * 60 + 50, 18 * 60 + 50, 13.0)
    (masked,) = f.annotations("masked")
    assert (minute_of(masked.start_ms), minute_of(masked.end_ms)) == (18 * 60, 18 * 60 + 30)
    assert masked.detail["reasons"] == ["defrost_schedule"]
    # HH breach from 17:50 opened at 17:55, before the window; H (15 min) would be 18:05, inside: deferred to 18:45
    assert minute_of(f.alerts("coldchain.high_high")[0].at_ms) == 17 * 60 + 55
    assert minute_of(f.alerts("coldchain.high")[0].at_ms) == 18 * 60 + 45


def test_startup_loading_window_masks_after_first_data_and_after_offline() -> None:
    f = _feeder(masks={"startup_min": 30})
    f.series(0, 40, 10.0)
    first = f.annotations("masked")
    assert [(minute_of(a.start_ms), minute_of(a.end_ms), a.detail["reasons"]) for a in first] == [
        (0.0, 30.0, ["startup"])
    ]
    assert f.alerts("coldchain.high") == []  # 30 + 15 = 45 not reached yet
    f.series(41, 45, 10.0)
    assert minute_of(f.alerts("coldchain.high")[0].at_ms) == 45
    f.tick(100)  # offline at 47
    f.series(100, 101, 4.0)
    assert f.state.startup_until == T0 + 130 * M


def test_masked_readings_still_count_in_aggregates() -> None:
    f = Feeder(DeviceDetector(device_rules(mkt={"limit": None}, rate_of_rise={"limit_c_per_min": None})))
    f.series(0, 30, 12.0, door_open=True)
    cum = f.state.cum
    assert cum is not None and cum[2] == 30 * M  # exposure >= 10 °C counted through the mask


def _flag_day(det_flags: str, explicit_false: bool) -> Feeder:
    """A door opened for 2 min at 10 and defrost for 20 min at 60 on a quiet day, the flags sent only while true
    (or, with ``explicit_false``, as a full snapshot in every reading)."""
    rules = device_rules(door={"warn_min": 5, "critical_min": 15}).model_copy(update={"flags": det_flags})
    f = Feeder(DeviceDetector(rules))
    for m in range(0, 240):
        extra: dict[str, bool] = {}
        door, defrost = 10 <= m < 12, 60 <= m < 80
        if door or explicit_false:
            extra["door_open"] = door
        if defrost or explicit_false:
            extra["defrost"] = defrost
        f.r(m, 9.5 if 62 <= m < 80 else 4.0, **extra)  # defrost heats the coil: masked
    f.tick(240)  # before the offline deadline
    return f


def test_snapshot_flags_an_omitted_flag_is_false() -> None:
    """``flags: snapshot`` (the default): a logger that sends ``door_open: true`` only while open is closed by the
    next reading without it; the same day with explicit ``false`` flags gives the same (zero) alerts."""
    for explicit in (False, True):
        f = _flag_day("snapshot", explicit)
        assert f.alerts() == [], [(a.rule, a.state.value) for a in f.alerts()]
        reasons = {r for a in f.annotations("masked") for r in a.detail["reasons"]}
        assert reasons == {"door", "defrost"}


def test_on_change_flags_an_omitted_flag_is_unchanged() -> None:
    """``flags: on_change``: with explicit changes it matches the snapshot day; sent only while true, the door
    stays open (warning, then critical) and the defrost mask expires: the documented misuse of the style."""
    assert _flag_day("on_change", True).alerts() == []
    rules = {a.rule for a in _flag_day("on_change", False).alerts()}
    assert "coldchain.door_open" in rules
