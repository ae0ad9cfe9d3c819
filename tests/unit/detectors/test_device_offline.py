"""A long silence is ONE offline alert: it opens at last_seen + k x interval and stays open until data is applied
again, whether the data returns live or as a store-and-forward batch that fills the outage later. The
compliance gap is a separate finding and never resolves or re-opens the offline alert."""

from __future__ import annotations

from pipeline.detectors.base import Output
from pipeline.detectors.device import DeviceDetector
from pipeline.schemas import Alert, AlertState, Annotation

from .helpers import T0, M, device_rules, minute_of, reading

TICK = 10_000
OUTAGE = (30, 390)  # minutes: last live reading at 29, data resumes at 390 (6 h of silence)


def _run(det: DeviceDetector, *, backfill: bool) -> list[Output]:
    """Readings every minute with an outage, ticks every 10 s as the worker's clock does. With ``backfill`` the
    logger stored the outage's readings and uploads them in one batch (oldest first) when it reconnects, each
    item handed over with ``now_ms`` = the last tick, as the worker does for a RecordBatch."""
    state = det.initial()
    out: list[Output] = []
    now = T0
    start, end = OUTAGE
    for t in range(T0, T0 + 420 * M, TICK):
        now = t
        state, o = det.on_tick(state, now)
        out += o
        if (t - T0) % M:
            continue
        minute = (t - T0) // M
        if minute == end and backfill:
            for m in range(start, end):
                state, o = det.on_reading_dict(state, reading(m, 4.0), now)
                out += o
        if not start <= minute < end:
            state, o = det.on_reading_dict(state, reading(minute, 4.0), now)
            out += o
    return out


def _alerts(out: list[Output], rule: str) -> list[tuple[str, float]]:
    return [(a.state.value, minute_of(a.at_ms)) for a in out if isinstance(a, Alert) and a.rule == rule]


def _offline(out: list[Output]) -> list[Alert]:
    return [a for a in out if isinstance(a, Alert) and a.rule == "liveness.offline"]


def _annotations(out: list[Output], kind: str) -> list[Annotation]:
    return [a for a in out if isinstance(a, Annotation) and a.kind == kind]


def _dets() -> list[DeviceDetector]:
    quiet = {"cumulative": {"limit": None}, "mkt": {"limit": None}, "rate_of_rise": {"limit_c_per_min": None}}
    return [
        DeviceDetector(device_rules(allowed_lateness_min=1)),  # chilled: MKT/cumulative timers fire meanwhile
        DeviceDetector(device_rules(allowed_lateness_min=1, **quiet)),
        DeviceDetector(device_rules(allowed_lateness_min=0, **quiet)),
    ]


def test_six_hours_of_silence_is_one_offline_alert_resolved_on_return() -> None:
    for det in _dets():
        out = _run(det, backfill=False)
        off = _offline(out)
        assert [a.state for a in off] == [AlertState.OPEN, AlertState.RESOLVED], _alerts(out, "liveness.offline")
        opened, resolved = off
        assert minute_of(opened.at_ms) == 29 + 2  # last_seen + k x interval, event time
        assert resolved.alert_id == opened.alert_id and minute_of(resolved.at_ms) == 390
        gap = [a for a in out if isinstance(a, Alert) and a.rule == "liveness.gap"]
        assert [(a.state, minute_of(a.at_ms)) for a in gap] == [(AlertState.OPEN, 44.0), (AlertState.RESOLVED, 390.0)]
        (finding,) = _annotations(out, "compliance_gap")
        assert (minute_of(finding.start_ms), minute_of(finding.end_ms)) == (29.0, 390.0)


def test_store_and_forward_batch_resolves_offline_once_when_the_logger_is_heard_again() -> None:
    """Liveness follows arrivals: the upload ends the silence at the first reading in the live window
    (``now - lateness``, the reconnect); the older batch items are evaluated retrospectively by the rules, do not
    touch the offline alert, and are not late (all after the checkpoint)."""
    for det in _dets():
        out = _run(det, backfill=True)
        assert out == _run(det, backfill=True)  # deterministic
        off = _offline(out)
        assert [a.state for a in off] == [AlertState.OPEN, AlertState.RESOLVED], _alerts(out, "liveness.offline")
        opened, resolved = off
        assert minute_of(opened.at_ms) == 31 and resolved.alert_id == opened.alert_id
        live_from = OUTAGE[1] - det.lateness / M
        assert minute_of(resolved.at_ms) == live_from
        assert _annotations(out, "late") == []  # within the history bound: evaluated, not only annotated
        gap = [a for a in out if isinstance(a, Alert) and a.rule == "liveness.gap"]
        assert [a.state for a in gap] == [AlertState.OPEN, AlertState.RESOLVED]
        (finding,) = _annotations(out, "compliance_gap")
        assert (minute_of(finding.start_ms), minute_of(finding.end_ms)) == (29.0, live_from)
        # Nothing re-opens after the batch, and nothing is zero-duration.
        liveness = [a for a in out if isinstance(a, Alert) and a.rule in ("liveness.offline", "liveness.gap")]
        assert all(a.at_ms <= resolved.at_ms for a in liveness)
        assert all(a.resolved_at != a.opened_at for a in out if isinstance(a, Alert))
