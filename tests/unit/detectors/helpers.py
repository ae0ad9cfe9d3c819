"""Builders shared by the detector tests."""

from __future__ import annotations

from typing import Any

from pipeline.detectors.base import Output
from pipeline.detectors.device import DeviceDetector, DeviceState
from pipeline.detectors.rules import DeviceRules, KitchenRules
from pipeline.profiles import BUILTIN_PROFILES, device_rules_from, kitchen_rules_from
from pipeline.schemas import Alert, Annotation

M = 60_000
#: 2026-11-22T00:00:00Z, a whole hour (MKT/cumulative buckets align with it)
T0 = 1_795_305_600_000


def device_rules(profile: str = "chilled", /, **patch: Any) -> DeviceRules:
    """A profile with the start-up mask off and no lateness unless the test asks for them.

    ``profile`` is positional-only so a ``**patch`` dict of rule sections never reads as the profile name."""
    quiet = {"masks": {"startup_min": 0.0}, "allowed_lateness_min": 0.0}
    return device_rules_from(BUILTIN_PROFILES[profile], quiet, patch, site="S01", device="dev-1", profile=profile)


def kitchen_rules(**patch: Any) -> KitchenRules:
    return kitchen_rules_from({"allowed_lateness_min": 0.0}, patch, site="S01", kitchen="k1")


def reading(minute: float, temp: float, seq: int | None = None, **extra: Any) -> dict[str, Any]:
    ts = T0 + round(minute * M)
    return {"ts_ms": ts, "seq": seq if seq is not None else round(minute * 1000), "temp_c": temp} | extra


class Run:
    """Feeds items (RecordBatch dicts) and ticks into one detector of any kind and collects every output."""

    def __init__(self, det: Any, t0: int = T0) -> None:
        self.det = det
        self.state: Any = det.initial()
        self.out: list[Output] = []
        self.t0 = t0  # minute 0 of ``now_min`` and ticks

    def item(self, d: dict[str, Any], now_min: float | None = None) -> list[Output]:
        """One item; ``now_ms`` is its own event time unless ``now_min`` says otherwise."""
        now = d["ts_ms"] if now_min is None else self.t0 + round(now_min * M)
        self.state, o = self.det.on_item(self.state, d, now)
        self.out += o
        return o

    def tick(self, minute: float) -> list[Output]:
        self.state, o = self.det.on_tick(self.state, self.t0 + round(minute * M))
        self.out += o
        return o


class Feeder(Run):
    """Feeds readings/ticks into one device detector."""

    det: DeviceDetector
    state: DeviceState

    def r(self, minute: float, temp: float, now_min: float | None = None, **extra: Any) -> list[Output]:
        return self.item(reading(minute, temp, **extra), now_min)

    def series(self, start: float, end: float, temp: float, step: float = 1.0, **extra: Any) -> None:
        m = start
        while m <= end + 1e-9:
            self.r(m, temp, **extra)
            m += step

    def alerts(self, rule: str | None = None) -> list[Alert]:
        return [a for a in self.out if isinstance(a, Alert) and (rule is None or a.rule == rule)]

    def annotations(self, kind: str | None = None) -> list[Annotation]:
        return [a for a in self.out if isinstance(a, Annotation) and (kind is None or a.kind == kind)]


def as_alert(o: Output) -> Alert:
    """``o``, which the test expects to be an alert (narrows ``Alert | Annotation`` for the type checker)."""
    assert isinstance(o, Alert), o
    return o


def as_annotation(o: Output) -> Annotation:
    """``o``, which the test expects to be an annotation."""
    assert isinstance(o, Annotation), o
    return o


def minute_of(ms: int) -> float:
    return (ms - T0) / M


def summary(outs: list[Output]) -> list[tuple[Any, ...]]:
    """A compact, comparable view: (rule/kind, state, opened/start minute, at/end minute)."""
    res: list[tuple[Any, ...]] = []
    for o in outs:
        if isinstance(o, Alert):
            res.append((o.rule, o.state.value, o.severity.value, minute_of(o.at_ms)))
        else:
            res.append((o.kind, minute_of(o.start_ms), minute_of(o.end_ms)))
    return res
