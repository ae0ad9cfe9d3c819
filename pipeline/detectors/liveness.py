"""Rule family: liveness of the logger and its sensor: ``liveness.offline``, ``liveness.gap`` (with the
``compliance_gap`` annotation), ``liveness.stuck``, ``liveness.battery_low``. Semantics: docs/rules.md."""

from __future__ import annotations

from pipeline.contracts import rules as R
from pipeline.detectors.device_state import WorkFields
from pipeline.detectors.engine import NEG, dur_min, ms
from pipeline.detectors.rules import DeviceRules
from pipeline.schemas import Annotation, Severity, ms_to_iso


def silence_delays(c: DeviceRules) -> tuple[int, int]:
    """(offline hold, gap) in ms: how long after the newest reading each silence alert falls due."""
    return max(1, round(c.liveness.offline_k * c.interval_s * 1000)), ms(c.liveness.gap_max_min)


def silence_decisions(c: DeviceRules) -> tuple[int, int]:
    """How long after a logger was last heard a clock tick decides each of its silence alerts (offline, gap):
    the deadline plus the allowed lateness, as a tick at ``now`` moves the frontier to ``now - lateness``.
    Silences follow arrivals, so they are the one thing a clock decides: a replay ticks at these instants too
    (:func:`pipeline.replay.send.drive`), or a silence ending between two coarse ticks would go unseen."""
    lateness = ms(c.allowed_lateness_min)
    hold, gap = silence_delays(c)
    return hold + lateness, gap + lateness


class LivenessMixin(WorkFields):
    # -- silence: follows arrivals ---------------------------------------------------------------------------
    # The newest event time received (``max_ts``, buffered or applied) is when the logger was last heard of:
    # readings arriving shuffled or late still show it is alive, and a silence that an upload fills later was
    # still a silence (nobody could see the food). These alerts are never re-run from the history.

    def silence_deadline(self) -> int | None:
        d = self.d
        heard = self.max_ts
        if heard == NEG:
            return None
        best: int | None = None
        if self.offline_open is None:
            best = heard + d.hold
        if self.gap_open is None:
            x = heard + d.gap_ms
            if best is None or x < best:
                best = x
        return best

    def silence_fire(self, t: int) -> None:
        d = self.d
        heard = self.max_ts
        if heard == NEG:
            return
        if self.offline_open is None and heard + d.hold <= t:
            self.offline_open = t
            self.emit_open(
                R.LIVENESS_OFFLINE,
                Severity.WARNING,
                at=t,
                notify=True,
                evidence={
                    "last_seen": ms_to_iso(heard),
                    "interval_s": d.interval_ms / 1000,
                    "k": d.config.liveness.offline_k,
                    "silent_min": dur_min(heard, t),
                },
            )
        if self.gap_open is None and heard + d.gap_ms <= t:
            self.gap_open = t
            self.emit_open(
                R.LIVENESS_GAP,
                Severity.INFO,
                at=t,
                notify=False,
                evidence={"last_seen": ms_to_iso(heard), "max_interval_min": d.config.liveness.gap_max_min},
            )

    def silence_end(self, t: int) -> None:
        """A live reading at ``t``: resolve an open offline alert and gap, once (a later one finds them closed)."""
        d = self.d
        if self.offline_open is not None:
            since = self.offline_open - d.hold
            self.emit_resolved(
                R.LIVENESS_OFFLINE,
                Severity.WARNING,
                opened=self.offline_open,
                at=t,
                notify=True,
                evidence={"last_seen": ms_to_iso(since), "silent_min": dur_min(since, t)},
            )
            self.offline_open = None
        if self.gap_open is not None:
            since = self.gap_open - d.gap_ms
            self.emit_resolved(
                R.LIVENESS_GAP,
                Severity.INFO,
                opened=self.gap_open,
                at=t,
                notify=False,
                evidence={
                    "gap_start": ms_to_iso(since),
                    "gap_end": ms_to_iso(t),
                    "gap_min": dur_min(since, t),
                    "max_interval_min": d.config.liveness.gap_max_min,
                },
            )
            self.out.append(
                Annotation(
                    kind="compliance_gap",
                    site=d.site,
                    subject=d.subject,
                    start_ms=since,
                    end_ms=t,
                    detail={"max_interval_min": d.config.liveness.gap_max_min, "gap_min": dur_min(since, t)},
                )
            )
            self.gap_open = None

    # -- the sensor --------------------------------------------------------------------------------------------

    def stuck_deadline(self, fresh: int) -> int | None:
        d = self.d
        st = self.stuck
        if st is not None and st[2] is None and d.stuck_ms is not None and st[1] + d.stuck_ms <= fresh:
            return st[1] + d.stuck_ms
        return None

    def stuck_fire(self, t: int, fresh: int) -> None:
        d = self.d
        st = self.stuck
        if st is not None and st[2] is None and d.stuck_ms is not None and st[1] + d.stuck_ms <= min(t, fresh):
            self.stuck = (st[0], st[1], t)
            self.emit_open(
                R.LIVENESS_STUCK,
                Severity.WARNING,
                at=t,
                notify=True,
                evidence={"value_c": st[0], "since": ms_to_iso(st[1]), "stuck_min": d.config.liveness.stuck_min},
            )

    def sensor_apply(self, x: float, t: int, stale: bool, battery: float | None) -> None:
        d = self.d
        if d.stuck_ms is not None:
            st = self.stuck
            if st is None or abs(x - st[0]) > d.stuck_eps or stale:
                if st is not None and st[2] is not None:
                    self.emit_resolved(
                        R.LIVENESS_STUCK,
                        Severity.WARNING,
                        opened=st[2],
                        at=t,
                        notify=True,
                        evidence={"value_c": st[0], "new_value_c": x, "stuck_min": dur_min(st[1], t)},
                    )
                self.stuck = (x, t, None)
        if battery is not None and d.batt_low is not None:
            if self.battery_open is None and battery < d.batt_low:
                self.battery_open = t
                self.emit_open(
                    R.LIVENESS_BATTERY_LOW,
                    Severity.WARNING,
                    at=t,
                    notify=True,
                    evidence={"battery": battery, "limit": d.batt_low},
                )
            elif self.battery_open is not None and battery >= d.batt_low + d.batt_band:
                self.emit_resolved(
                    R.LIVENESS_BATTERY_LOW,
                    Severity.WARNING,
                    opened=self.battery_open,
                    at=t,
                    notify=False,
                    evidence={"battery": battery, "limit": d.batt_low},
                )
                self.battery_open = None
