"""Property tests: arrival order within the lateness and how the stream is cut into calls never change outputs.

For a random stream (levels crossing, door and defrost flags, battery, silences long enough for offline and
gap alerts), the baseline is: readings in ts order, no ticks, then one final tick. Each variant delivers the
same readings in an order where every reading arrives no later than ``allowed lateness`` after the newest one
already delivered, with ``on_tick`` calls interleaved at arbitrary times no later than the next reading, and
with QoS-1 duplicates. The full output lists (alerts with ids and event times, annotations) must be equal.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline import serde
from pipeline.detectors.device import DeviceDetector
from pipeline.detectors.history import net_alerts
from pipeline.detectors.kitchen import KitchenDetector
from pipeline.detectors.rapidtest import RapidTestDetector
from pipeline.detectors.run import run_device_stream, run_kitchen_stream
from pipeline.schemas import Alert, KitchenEventType
from pipeline.testing import rapid_test_item

from .helpers import T0, M, device_rules, kitchen_rules

LATENESS_MIN = 2

_DET = DeviceDetector(
    device_rules(
        allowed_lateness_min=LATENESS_MIN,
        high={"delay_min": 3, "clear_delay_min": 2},
        high_high={"delay_min": 1},
        low={"delay_min": 2},
        door={"warn_min": 2, "critical_min": 4},
        masks={"door_max_min": 3, "defrost_max_min": 5, "startup_min": 2},
        rate_of_rise={"limit_c_per_min": 0.5, "window_min": 4, "delay_min": 2},
        cumulative={"limit": 10.0, "budget_min": 6, "window_min": 60},
        mkt={"limit": 6.0, "window_min": 48, "min_coverage": 0.3},
        liveness={"gap_max_min": 3, "stuck_min": 5, "offline_k": 2},
    ).model_copy(update={"timezone": "Asia/Shanghai", "defrost_schedule": ((8 * 60 + 20, 8 * 60 + 27),)})
)


def _readings(draw: st.DrawFn, most: int, steps: list[int]) -> list[dict[str, Any]]:
    """5 to ``most`` readings ``steps`` ms apart (drawn), temperatures around the chilled levels, now and then a
    door, defrost or battery flag."""
    n = draw(st.integers(5, most))
    out = []
    t = T0
    for seq in range(n):
        t += draw(st.sampled_from(steps))
        temp = draw(st.sampled_from([-3.0, -0.2, 1.0, 4.0, 4.0, 4.0, 7.9, 8.2, 9.0, 11.0, 13.0]))
        r: dict[str, Any] = {"ts_ms": t, "seq": seq, "temp_c": temp}
        if draw(st.integers(0, 5)) == 0:
            r["door_open"] = draw(st.booleans())
        if draw(st.integers(0, 8)) == 0:
            r["defrost"] = draw(st.booleans())
        if draw(st.integers(0, 6)) == 0:
            r["battery"] = draw(st.sampled_from([0.1, 0.22, 0.9]))
        out.append(r)
    return out


@st.composite
def device_streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    return _readings(draw, 70, [15_000, 30_000, 60_000, 60_000, 60_000, 90_000, 200_000, 400_000])


def _arrival(draw: st.DrawFn, items: list[dict[str, Any]], lateness_ms: int) -> list[dict[str, Any]]:
    """A delivery order in which nothing is later than the lateness behind the newest item delivered."""
    keyed = [(it["ts_ms"] + draw(st.integers(0, lateness_ms)), i) for i, it in enumerate(items)]
    order = [items[i] for _, i in sorted(keyed)]
    dups = draw(st.lists(st.integers(0, len(order) - 1), max_size=4))
    for pos in sorted(dups, reverse=True):
        order.insert(pos + 1, order[pos])  # a QoS-1 redelivery right after the original
    return order


def _feed(
    det: Any,
    on_item: Callable[[Any, dict[str, Any], int], tuple[Any, list[Any]]],
    order: list[dict[str, Any]],
    draw: st.DrawFn,
    final: int,
    *,
    ticks: bool = True,
) -> list[Any]:
    """Every output of ``order`` fed to ``det`` through ``on_item``, with (``ticks``) up to two ticks drawn
    before each item, then a tick at ``final``."""
    s = det.initial()
    outs: list[Any] = []
    now = T0
    for item in order:
        if ticks:
            for _ in range(draw(st.integers(0, 2))):
                now = draw(st.integers(now, max(now, item["ts_ms"])))  # any time up to the next event
                s, o = det.on_tick(s, now)
                outs += o
        s, o = on_item(s, item, now)
        outs += o
        # state must survive the changelog at any point, in the encoding tables already hold
        raw = det.state_to_bytes(s)
        if isinstance(det, DeviceDetector):
            assert raw == serde.dumps([*s[:3], format(s.seq_bits, "x"), *s[4:]])
        assert det.state_from_bytes(raw) == s
    s, o = det.on_tick(s, final)
    return outs + o


#: Liveness follows arrivals (docs/rules.md): when the clock ticks relative to arrivals is part of its input, so
#: it is compared in the liveness tests, not here.
_ARRIVAL_RULES = ("liveness.offline", "liveness.gap")


def _rules_only(outs: list[Any]) -> list[Any]:
    return [
        o
        for o in outs
        if getattr(o, "rule", None) not in _ARRIVAL_RULES and getattr(o, "kind", None) != "compliance_gap"
    ]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=device_streams(), data=st.data())
def test_device_outputs_do_not_depend_on_arrival_order_or_batching(stream: list[dict[str, Any]], data: Any) -> None:
    final = stream[-1]["ts_ms"] + 120 * M
    baseline = run_device_stream(_DET, stream, final_ms=final)
    order = _arrival(data.draw, stream, LATENESS_MIN * M)
    got = _feed(_DET, _DET.on_reading_dict, order, data.draw, final)
    assert _rules_only(got) == _rules_only(baseline)
    assert not any(getattr(o, "kind", None) == "late" for o in got)


@st.composite
def logger_streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A logger reporting every minute, with silences (outages whose readings it still took, or not)."""
    return _readings(draw, 60, [60_000] * 8 + [120_000, 400_000])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=logger_streams(), data=st.data())
def test_late_data_within_the_history_bound_ends_with_the_in_order_alerts(
    stream: list[dict[str, Any]], data: Any
) -> None:
    """Readings delayed by up to 4 x the allowed lateness (beyond it: re-evaluated from the history), with
    duplicates and ticks at any time: the alerts the stream ends with (last record per id, withdrawn ones left
    out) are the in-order ones, ids and event times included; no record is zero-duration; nothing is beyond the
    bound (the first reading opens the history, so it comes first)."""
    final = stream[-1]["ts_ms"] + 120 * M
    baseline = run_device_stream(_DET, stream, final_ms=final)
    first, rest = stream[0], stream[1:]
    keyed = [(it["ts_ms"] + data.draw(st.integers(0, 4 * LATENESS_MIN * M)), i) for i, it in enumerate(rest)]
    order = [first, *(rest[i] for _, i in sorted(keyed))]
    for pos in sorted(data.draw(st.lists(st.integers(0, len(order) - 1), max_size=4)), reverse=True):
        order.insert(data.draw(st.integers(pos + 1, len(order))), order[pos])  # a redelivery, any time later
    got = _feed(_DET, _DET.on_reading_dict, order, data.draw, final)

    def view(outs: list[Any]) -> list[tuple[Any, ...]]:
        net = net_alerts(_rules_only(outs))
        return sorted((a.alert_id, a.rule, a.state.value, a.opened_at, a.resolved_at) for a in net.values())

    assert view(got) == view(baseline)
    assert not any(getattr(o, "kind", None) == "late" for o in got)
    assert not [a for a in got if isinstance(a, Alert) and a.resolved_at == a.opened_at]


def _q(ms: int, temp: float, seq: int, **extra: Any) -> dict[str, Any]:
    return {"ts_ms": T0 + ms, "seq": seq, "temp_c": temp} | extra


#: Found with --hypothesis-seed=47839160226259129401366180521626757201: the stuck alert falls due at the last
#: reading's instant and fires before it; that reading clears it (stamped 1 ms later) and resolves the low battery
#: at its own instant, which must be reported first.
_STUCK_CLEARED_AT_ITS_DEADLINE = [
    _q(15_000, -3.0, 0, door_open=False, battery=0.1),
    *(_q(15_000 * (i + 1), -3.0, i) for i in range(1, 5)),
    _q(90_000, -3.0, 5, door_open=False, defrost=False),
    _q(105_000, -3.0, 6),
    _q(120_000, -3.0, 7),
    _q(135_000, -3.0, 8, defrost=False),
    _q(150_000, -3.0, 9),
    _q(165_000, -3.0, 10),
    _q(180_000, -3.0, 11),
    _q(195_000, -3.0, 12, door_open=False),
    _q(210_000, -3.0, 13),
    _q(225_000, -3.0, 14, door_open=False),
    _q(255_000, -3.0, 15, door_open=False),
    _q(315_000, -0.2, 16, battery=0.9),
]


@settings(max_examples=40, deadline=None)
@given(stream=device_streams())
@example(stream=_STUCK_CLEARED_AT_ITS_DEADLINE)
def test_device_alert_lifecycle_is_well_formed(stream: list[dict[str, Any]]) -> None:
    _assert_well_formed(run_device_stream(_DET, stream, final_ms=stream[-1]["ts_ms"] + 120 * M))


def _assert_well_formed(outs: list[Any]) -> None:
    """One subject's alerts are in event-time order, each opened once and resolved only after it opened."""
    open_ids: dict[str, int] = {}
    last = 0
    for o in outs:
        at = getattr(o, "at_ms", None)
        if at is None:
            continue
        assert at >= last  # event-time order
        last = at
        if o.state.value == "open":
            assert o.alert_id not in open_ids
            open_ids[o.alert_id] = at
        else:
            assert open_ids.pop(o.alert_id) <= at  # resolves only what it opened


# ---------------------------------------------------------------------------------------------------------------
# Kitchen
# ---------------------------------------------------------------------------------------------------------------

_KDET = KitchenDetector(
    kitchen_rules(
        allowed_lateness_min=LATENESS_MIN,
        unattended={"warn_min": 2, "critical_min": 5},
        hygiene={"dedup_min": 3, "min_confidence": 0.5},
    ).model_copy(update={"timezone": "UTC", "service_hours": ((0, 60), (90, 23 * 60))})
)

_KTYPES = [
    KitchenEventType.STOVE_ON,
    KitchenEventType.STOVE_OFF,
    KitchenEventType.PERSON_PRESENT,
    KitchenEventType.PERSON_ABSENT,
    KitchenEventType.PERSON_COUNT,
    KitchenEventType.NO_HAT,
    KitchenEventType.RODENT,
    KitchenEventType.FIRE,
]


@st.composite
def kitchen_streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(3, 50))
    t = T0 + 50 * M
    out = []
    for i in range(n):
        t += draw(st.sampled_from([0, 20_000, 60_000, 120_000, 300_000]))
        typ = draw(st.sampled_from(_KTYPES))
        cam = draw(st.sampled_from(["cam-1", "cam-2"]))
        e: dict[str, Any] = {"ts_ms": t, "camera": cam, "event_id": f"e{i}", "type": typ.value, "zone": "cook"}
        if typ is KitchenEventType.PERSON_COUNT:
            e["count"] = draw(st.integers(0, 2))
        if typ in (KitchenEventType.NO_HAT, KitchenEventType.RODENT, KitchenEventType.FIRE):
            e["confidence"] = draw(st.sampled_from([0.3, 0.7, 0.95]))
        out.append(e)
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=kitchen_streams(), data=st.data())
def test_kitchen_outputs_do_not_depend_on_arrival_order_or_batching(stream: list[dict[str, Any]], data: Any) -> None:
    det = _KDET
    final = stream[-1]["ts_ms"] + 60 * M
    in_order = sorted(stream, key=lambda e: (e["ts_ms"], e["camera"], e["event_id"]))
    baseline = _feed(det, det.on_event_dict, in_order, data.draw, final, ticks=False)
    got = _feed(det, det.on_event_dict, _arrival(data.draw, stream, LATENESS_MIN * M), data.draw, final)
    assert got == baseline


#: The warning falls due at the person's instant and fires before it; the person clears it (stamped 1 ms later),
#: then the rodent seen at that same instant opens, and must be reported first.
_UNATTENDED_CLEARED_AT_ITS_DEADLINE = [
    {"ts_ms": T0 + 50 * M, "camera": "cam-1", "event_id": "e0", "type": "stove_on", "zone": "cook"},
    {"ts_ms": T0 + 52 * M, "camera": "cam-1", "event_id": "e1", "type": "person_present", "zone": "cook"},
    {"ts_ms": T0 + 52 * M, "camera": "cam-2", "event_id": "e2", "type": "rodent", "zone": "cook", "confidence": 0.95},
]


@settings(max_examples=60, deadline=None)
@given(stream=kitchen_streams())
@example(stream=_UNATTENDED_CLEARED_AT_ITS_DEADLINE)
def test_kitchen_alert_lifecycle_is_well_formed(stream: list[dict[str, Any]]) -> None:
    in_order = sorted(stream, key=lambda e: (e["ts_ms"], e["camera"], e["event_id"]))
    _assert_well_formed(run_kitchen_stream(_KDET, in_order, final_ms=stream[-1]["ts_ms"] + 60 * M))


def _anchors_in_order(s: Any) -> bool:
    """The rate-of-rise anchors of a state and of its checkpoint are in event-time order."""
    anchor_sets = [s.ror_anchors] + ([s.ckpt[9]] if s.ckpt is not None else [])
    return all(all(a[0] <= b[0] for a, b in pairwise(xs)) for xs in anchor_sets)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=logger_streams(), data=st.data())
def test_rate_of_rise_anchors_stay_in_event_time_order(stream: list[dict[str, Any]], data: Any) -> None:
    """The rate of rise drops the anchors out of its window as a prefix (``LevelsMixin._ror``): that equals
    filtering them all only while they are in event-time order, through late readings, re-runs, duplicates and
    ticks at any time. Checked state by state."""
    first, rest = stream[0], stream[1:]
    keyed = [(it["ts_ms"] + data.draw(st.integers(0, 4 * LATENESS_MIN * M)), i) for i, it in enumerate(rest)]
    order = [first, *(rest[i] for _, i in sorted(keyed))]
    for pos in sorted(data.draw(st.lists(st.integers(0, len(order) - 1), max_size=4)), reverse=True):
        order.insert(data.draw(st.integers(pos + 1, len(order))), order[pos])

    def checked(s: Any, item: dict[str, Any], now: int) -> tuple[Any, list[Any]]:
        assert _anchors_in_order(s)
        new, outs = _DET.on_reading_dict(s, item, now)
        assert _anchors_in_order(new)
        return new, outs

    _feed(_DET, checked, order, data.draw, stream[-1]["ts_ms"] + 120 * M)


# ---------------------------------------------------------------------------------------------------------------
# Rapid tests
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def rapid_test_streams(draw: st.DrawFn, *, same_instant: bool = False) -> list[dict[str, Any]]:
    """Results of two samples, any stage and outcome, some with a disposition; ``same_instant``: several results
    at one instant at times."""
    t = T0 + 50 * M
    out = []
    for i in range(draw(st.integers(2, 30))):
        t += draw(st.sampled_from([0, 0, 1, 60_000, 30 * M] if same_instant else [1, 1_000, 60_000, 30 * M, 300 * M]))
        extra: dict[str, Any] = {}
        if draw(st.integers(0, 9)) == 0:
            extra["disposition"] = {"action": "destroyed"}
        out.append(
            rapid_test_item(
                t,
                f"r{i}",
                draw(st.sampled_from(["smp-1", "smp-2"])),
                draw(st.sampled_from(["positive", "negative", "suspect"])),
                draw(st.sampled_from(["initial", "recheck", "lab_confirmed"])),
                **extra,
            )
        )
    return out


def _rapid_test_lifecycle(stream: list[dict[str, Any]]) -> None:
    """Per sample (an alert subject), alerts in event-time order, each opened once and resolved after it opened,
    with results arriving in order and ticks between them (the same promise as the device and kitchen ones)."""
    det = RapidTestDetector("S01", recheck_within_min=240, allowed_lateness_min=LATENESS_MIN)
    state = det.initial()
    outs: list[Any] = []
    for item in stream:
        state, got = det.on_tick(state, item["ts_ms"])
        outs += got
        state, got = det.on_item(state, item, item["ts_ms"])
        outs += got
    state, got = det.on_tick(state, stream[-1]["ts_ms"] + 600 * M)
    outs += got
    for subject in {o.subject for o in outs if isinstance(o, Alert)}:
        _assert_well_formed([o for o in outs if isinstance(o, Alert) and o.subject == subject])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=rapid_test_streams())
def test_rapid_test_alert_lifecycle_is_well_formed(stream: list[dict[str, Any]]) -> None:
    _rapid_test_lifecycle(stream)


#: Two positive results of one sample in the same millisecond, each with a disposition: the first opens
#: ``rapidtest.positive`` at t and its disposition resolves it (stamped t + 1, no zero-duration alert); the
#: second opens the same alert id at t again.
_SAME_INSTANT_DISPOSED = [
    rapid_test_item(T0 + 50 * M, "r0", "smp-1", "positive", disposition={"action": "destroyed"}),
    rapid_test_item(T0 + 50 * M, "r1", "smp-1", "positive", disposition={"action": "destroyed"}),
]


@pytest.mark.xfail(
    strict=True,
    reason="known defect (2026-12-05, not fixed): results of one sample at one instant can re-open an alert id "
    "resolved at that instant, and report its resolution (t + 1) before the re-opening (t)",
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=rapid_test_streams(same_instant=True))
@example(stream=_SAME_INSTANT_DISPOSED)
def test_rapid_test_alert_lifecycle_with_results_at_one_instant(stream: list[dict[str, Any]]) -> None:
    _rapid_test_lifecycle(stream)
