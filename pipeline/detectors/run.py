"""Run a whole stream through a pure detector: simulators' ground truth, benchmarks, tests.

``ticks`` are clock readings (``now_ms``) interleaved by time: before each reading every tick with
``now_ms <= reading.ts_ms`` is applied, then the reading with ``now_ms`` = the last tick's time (so a stream
without ticks is processed purely by event time). After the last reading the remaining ticks run, and
``final_ms`` (if given) flushes everything up to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pipeline.detectors.base import Output
from pipeline.detectors.device import DeviceDetector
from pipeline.detectors.kitchen import KitchenDetector
from pipeline.detectors.rules import DeviceRules, KitchenRules
from pipeline.schemas import KitchenEvent, Reading


def _as_dict(x: Reading | KitchenEvent | dict[str, Any]) -> dict[str, Any]:
    return x if isinstance(x, dict) else x.model_dump(mode="json")


def _run(
    initial: Any,
    step: Callable[[Any, dict[str, Any], int], tuple[Any, list[Output]]],
    tick: Callable[[Any, int], tuple[Any, list[Output]]],
    items: Iterable[Reading | KitchenEvent | dict[str, Any]],
    ticks: Sequence[int],
    final_ms: int | None,
) -> list[Output]:
    """Interleave ``ticks`` with the items by time (see the module docstring) and collect every output."""
    state = initial
    out: list[Output] = []
    pending = sorted(ticks)
    i = 0
    now = pending[0] if pending else 0
    for item in items:
        d = _as_dict(item)
        while i < len(pending) and pending[i] <= d["ts_ms"]:
            now = pending[i]
            state, o = tick(state, now)
            out += o
            i += 1
        state, o = step(state, d, now)
        out += o
    for now in pending[i:]:
        state, o = tick(state, now)
        out += o
    if final_ms is not None:
        state, o = tick(state, final_ms)
        out += o
    return out


def run_device_stream(
    rules: DeviceRules | DeviceDetector,
    readings: Iterable[Reading | dict[str, Any]],
    ticks: Sequence[int] = (),
    final_ms: int | None = None,
) -> list[Output]:
    """Every output of one device's stream, in the order the detector emitted them."""
    det = rules if isinstance(rules, DeviceDetector) else DeviceDetector(rules)
    return _run(det.initial(), det.on_reading_dict, det.on_tick, readings, ticks, final_ms)


def run_kitchen_stream(
    rules: KitchenRules | KitchenDetector,
    events: Iterable[KitchenEvent | dict[str, Any]],
    ticks: Sequence[int] = (),
    final_ms: int | None = None,
) -> list[Output]:
    """The same for one kitchen's camera events."""
    det = rules if isinstance(rules, KitchenDetector) else KitchenDetector(rules)
    return _run(det.initial(), det.on_event_dict, det.on_tick, events, ticks, final_ms)
