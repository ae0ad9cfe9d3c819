"""The runner's timer index: a tick visits only the subjects whose timers are due, and that changes nothing.

The reference is the same runner with the detectors' ``wake_ms`` hidden, which visits every subject on every
tick (what the runner did before the index, and still does for a detector without ``wake_ms``). Random
streams of readings and camera events — out of order, late, duplicated, with silences long enough for the
offline and unattended timers — and ticks at random times must give the same outputs in the same order and
the same states.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.agents import core
from pipeline.agents.core import Concern, Runner
from pipeline.agents.devices import device_concern
from pipeline.agents.kitchen import kitchen_concern
from pipeline.contracts import records
from pipeline.detectors.device import DeviceDetector, silence_due
from pipeline.detectors.engine import NEG, wake_time
from pipeline.partitioner import partition_for
from pipeline.siteconfig import load
from tests.agents_support import (
    STEP_MS,
    batches,
    device_reading,
    kitchen_batches,
    kitchen_event,
    tick,
    write_sites,
)

P = 2
T0 = 1_700_000_000_000
DEVICES = ("dev-0001", "dev-0002", "dev-0003", "dev-0004")
KITCHENS = ("k1", "k2", "k3")
KINDS = ("person_present", "person_absent", "stove_on", "stove_off", "no_hat", "smoking", "rodent")


class VisitEveryTick:
    """A detector without ``wake_ms``: the runner visits it on every tick."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "wake_ms":
            raise AttributeError(name)
        return getattr(self._inner, name)


def without_index(concern: Concern[Any, Any]) -> Concern[Any, Any]:
    def detector_for(key: str, item: dict[str, Any] | None) -> Any:
        return VisitEveryTick(concern.detector_for(key, item))

    return dataclasses.replace(concern, detector_for=detector_for)


def run(concern: Concern[Any, Any], records: list[tuple[int, bytes]]) -> list[tuple[list[Any], dict[bytes, Any]]]:
    """Per record: its outputs, in order, and every state after it (a visit skipped at a tick shows there,
    even when a later event would have caught the subject up)."""
    runner: Runner[Any, Any] = Runner(concern, {}, P, arrived_ms=lambda: 0)
    steps: list[tuple[list[Any], dict[bytes, Any]]] = []
    for p, value in records:
        result = runner.on_record(value, p)
        assert not result.dead_letters
        runner.flush()
        steps.append((result.outputs, {k: s for q in range(P) for k, s in runner.states(q)}))
    return steps


# One step: a record of events at some offset from the stream's clock, or a tick at some offset from the
# latest events. Events sit at whole seconds past a minute, so ticks a millisecond either side of those hit
# the deadlines' edges (the lateness and the rules' delays are whole minutes).
minutes = st.integers(min_value=-30, max_value=240)
near = st.integers(min_value=-2, max_value=20)
edge = st.sampled_from([0, 1, -1, 999, 1_000, 1_001, 2_000, 3_001])
steps = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.tuples(st.one_of(near, minutes), edge), st.integers(0, P - 1)),
        st.tuples(st.just("data"), minutes, st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9)), max_size=6)),
    ),
    max_size=40,
)


def device_records(plan: list[Any]) -> list[tuple[int, bytes]]:
    records: list[tuple[int, bytes]] = []
    clock = last = T0
    seq = dict.fromkeys(DEVICES, 0)
    for kind, offset, what in plan:
        if kind == "tick":
            at = last + offset[0] * 60_000 + offset[1]
            records.append((what, tick(at)))
            clock = max(clock, at)
            continue
        at = last = clock + offset * 60_000
        items = []
        for i, temp in what:
            dev = DEVICES[i]
            seq[dev] += 1 if temp != 9 else 0  # 9: resend the last seq (a QoS 1 duplicate)
            items.append(device_reading(dev, seq[dev], at + i * 1_000, [4.0, 10.5, -30.0][temp % 3]))
        records += batches(items, P)
        clock = max(clock, at)
    return records


def kitchen_records(plan: list[Any]) -> list[tuple[int, bytes]]:
    records: list[tuple[int, bytes]] = []
    clock, n = T0, 0
    for kind, offset, what in plan:
        at = clock + offset[0] * 60_000 + offset[1] if kind == "tick" else clock + offset * 60_000
        if kind == "tick":
            records.append((what, tick(at)))
            clock = max(clock, at)
            continue
        items = []
        for i, k in what:
            n += 1
            items.append(kitchen_event(KITCHENS[i % 3], f"e{n if k != 9 else n - 1}", at + i * 1_000, KINDS[k % 7]))
        records += kitchen_batches(items, P)
        clock = max(clock, at)
    return records


@pytest.fixture(params=["adaptive", "flip-every-tick"])
def switching(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """As configured, and with partitions switching between the index and visiting all at every chance, so the
    switches themselves (dropping the index, rebuilding it from every state) meet the random streams."""
    if request.param == "flip-every-tick":
        monkeypatch.setattr(core, "SWITCH_AFTER", 1)
        monkeypatch.setattr(core, "VISIT_ALL_ABOVE", 0.3)
        monkeypatch.setattr(core, "INDEX_BELOW", 0.6)
    return str(request.param)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps)
def test_device_ticks_with_the_index_equal_visiting_every_device(
    tmp_path: Path, plan: list[Any], switching: str
) -> None:
    concern = device_concern(load(write_sites(tmp_path / "sites.yaml", list(DEVICES))))
    records = device_records(plan)
    assert run(concern, records) == run(without_index(concern), records)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps)
def test_kitchen_ticks_with_the_index_equal_visiting_every_kitchen(
    tmp_path: Path, plan: list[Any], switching: str
) -> None:
    concern = kitchen_concern(load(write_sites(tmp_path / "sites.yaml", list(DEVICES), KITCHENS)))
    records = kitchen_records(plan)
    assert run(concern, records) == run(without_index(concern), records)


def test_a_quiet_tick_visits_no_device(tmp_path: Path) -> None:
    """The point of the index: with nothing due, a tick costs no detector call however many devices."""
    concern = device_concern(load(write_sites(tmp_path / "sites.yaml", [f"dev-{i:04d}" for i in range(200)])))
    calls = 0
    real = DeviceDetector.on_tick

    def counting(self: DeviceDetector, state: Any, now_ms: int) -> Any:
        nonlocal calls
        calls += 1
        return real(self, state, now_ms)

    runner: Runner[Any, Any] = Runner(concern, {}, 1, arrived_ms=lambda: 0)
    for _p, value in batches([device_reading(f"dev-{i:04d}", 1, T0, 4.0) for i in range(200)], 1):
        runner.on_record(value, 0)
    DeviceDetector.on_tick = counting  # type: ignore[method-assign]
    try:
        runner.tick(0, T0 + STEP_MS)  # past the lateness: every device's reading is released once
        first = calls
        for k in range(1, 20):
            runner.tick(0, T0 + STEP_MS + k * 1_000)  # nothing due before the offline deadlines
        assert first == 200 and calls == first
        runner.tick(0, T0 + 3 * 3_600_000)  # hours of silence: every device goes offline
        assert calls == 400
    finally:
        DeviceDetector.on_tick = real  # type: ignore[method-assign]


def test_dense_traffic_visits_all_and_sparse_traffic_goes_back_to_the_index(tmp_path: Path) -> None:
    """A reading per device between every two ticks: the partition stops keeping the index; silence again:
    it rebuilds it, and a quiet tick visits nobody."""
    devices = [f"dev-{i:04d}" for i in range(50)]
    concern = device_concern(load(write_sites(tmp_path / "sites.yaml", devices)))
    runner: Runner[Any, Any] = Runner(concern, {}, 1, arrived_ms=lambda: 0)
    t = T0
    for step in range(1, 8):
        t = T0 + step * STEP_MS
        for _p, value in batches([device_reading(d, step, t, 4.0) for d in devices], 1):
            runner.on_record(value, 0)
        runner.tick(0, t + STEP_MS // 2)
    assert runner._timers[0].visit_all
    quiet = t + STEP_MS // 2
    for k in range(1, 5):
        runner.tick(0, quiet + k * 1_000)  # nothing changes: back to the index after SWITCH_AFTER ticks
    assert not runner._timers[0].visit_all
    assert runner._due(runner._timers[0], runner._cache[0], quiet + 10_000) == []


def without_shortcuts(concern: Concern[Any, Any]) -> Concern[Any, Any]:
    def detector_for(key: str, item: dict[str, Any] | None) -> Any:
        detector = concern.detector_for(key, item)
        assert isinstance(detector, DeviceDetector)  # the only detector with the arrival shortcuts
        detector.shortcuts = False
        return detector

    return dataclasses.replace(concern, detector_for=detector_for)


@settings(max_examples=300, deadline=None)
@given(plan=steps)
def test_device_arrival_shortcuts_equal_the_general_path(tmp_path_factory: pytest.TempPathFactory, plan: Any) -> None:
    """A reading that releases nothing skips the detector's working copy (before the frontier, or moving it
    with nothing buffered or due before the new one): every output and every state as if it had not."""
    sites = write_sites(tmp_path_factory.mktemp("sites") / "sites.yaml", list(DEVICES))
    concern = device_concern(load(sites))
    records = device_records(plan)
    assert run(concern, records) == run(without_shortcuts(concern), records)


def reference_wake_ms(detector: DeviceDetector, state: Any) -> int | None:
    """``DeviceDetector.wake_ms`` as it was written before it was inlined: the silence deadline, then
    :func:`~pipeline.detectors.engine.wake_time`."""
    if state.pending:
        return NEG
    due = state.due
    sd = silence_due(state, detector.hold, detector.gap_ms)
    if sd is not None and (due is None or sd < due):
        due = sd
    return wake_time(state.buf, due, state.frontier, state.max_ts, detector.lateness)


@settings(max_examples=300, deadline=None)
@given(plan=steps)
def test_device_wake_ms_equals_its_reference(tmp_path_factory: pytest.TempPathFactory, plan: Any) -> None:
    """The inlined ``wake_ms`` gives the wake time of the reference composition for every state a random stream
    (late, duplicated, silent, ticked) goes through."""
    sites = write_sites(tmp_path_factory.mktemp("sites") / "sites.yaml", list(DEVICES))
    concern = device_concern(load(sites))
    for _outputs, states in run(concern, device_records(plan)):
        for key, state in states.items():
            detector = concern.detector_for(key.decode(), None)
            assert isinstance(detector, DeviceDetector)
            assert detector.wake_ms(state) == reference_wake_ms(detector, state)


def test_an_item_of_another_partition_is_refused_even_when_its_subject_is_known(tmp_path: Path) -> None:
    """The partition check runs once per subject (on a cache miss): a subject known in its own partition is
    still refused in another, and the other partition's cache never gets it."""
    concern = device_concern(load(write_sites(tmp_path / "sites.yaml", list(DEVICES))))
    runner: Runner[Any, Any] = Runner(concern, {}, P, arrived_ms=lambda: 0)
    dev = DEVICES[0]
    home = partition_for(dev, P)
    assert not runner.on_record(records.readings_value([device_reading(dev, 1, T0, 4.0)]), home).dead_letters
    for seq in (2, 3):
        refused = runner.on_record(records.readings_value([device_reading(dev, seq, T0 + seq, 4.0)]), 1 - home)
        assert [d.reason_code for d in refused.dead_letters] == ["worker.bad_item"]
    assert [k for k, _ in runner.states(1 - home)] == []
    assert [k for k, _ in runner.states(home)] == [dev.encode()]


class WakeIsTheState:
    """A detector stub whose state is its wake time (``None``: no timer)."""

    def wake_ms(self, state: int | None) -> int | None:
        return state


# Wake times around a few of the index's buckets, a tick's edges included, and the "due now" of late data.
wakes = st.one_of(st.integers(0, 5 << core.WAKE_SHIFT), st.just(NEG), st.none())
index_ops = st.lists(
    st.one_of(
        st.tuples(st.just("index"), st.integers(0, 5), wakes),
        st.tuples(st.just("tick"), st.integers(-1, 6 << core.WAKE_SHIFT), st.lists(wakes, max_size=6)),
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(ops=index_ops)
def test_the_timer_index_takes_exactly_the_subjects_whose_wake_time_has_come(ops: list[Any]) -> None:
    """The index's buckets (superseded entries left behind, a last bucket only partly due, rebuilds past ~2
    entries a subject) against the definition: a tick takes every indexed subject whose latest wake time is
    ``<= now``, and no other; the runner re-indexes what it visited (here: a new random wake time)."""
    runner: Runner[Any, Any] = Runner(Any, None, 1, arrived_ms=lambda: 0)  # type: ignore[arg-type]
    timers = runner._timers_of(0)
    detector: Any = WakeIsTheState()
    cache: dict[bytes, list[Any]] = {}
    latest: dict[bytes, int | None] = {}

    def index(key: bytes, wake: int | None) -> None:
        slot = cache.get(key)
        if slot is None:
            slot = cache[key] = core.new_slot(wake, detector, key)
        slot[core.STATE] = latest[key] = wake
        runner._index(slot, timers)

    for op, x, y in ops:
        if op == "index":
            index(b"s%d" % x, y)
            continue
        due = sorted(slot[core.KEY] for slot in runner._due(timers, cache, x))
        assert due == sorted(k for k, w in latest.items() if w is not None and w <= x)
        for key, wake in zip(due, y + [None] * len(due), strict=False):
            index(key, wake)
        assert timers.entries == sum(len(slots) for slots in timers.wheel.values())
        assert sorted(timers.buckets) == sorted(timers.wheel)
