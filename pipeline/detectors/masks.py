"""Rule family: the door (``coldchain.door_open``, warning then critical) and the masks that defer maskable rules
(door and defrost flags, the defrost schedule, the start-up loading window), each bounded. Semantics:
docs/rules.md, "Masks" and "coldchain.door_open"."""

from __future__ import annotations

from typing import Any

from pipeline.contracts import rules as R
from pipeline.detectors.calendar import window_state
from pipeline.detectors.device_state import WorkFields
from pipeline.detectors.engine import NEG, dur_min
from pipeline.schemas import Annotation, Severity, ms_to_iso


class MasksMixin(WorkFields):
    # -- flags -------------------------------------------------------------------------------------------------

    def flags_apply(self, t: int, door: bool | None, defrost: bool | None) -> None:
        """Door and defrost flags of a reading. ``None`` means "not reported": the detector's flag style
        (``flags: snapshot`` or ``on_change`` in the site file) has already decided what that means."""
        if door is True and self.door_since is None:
            self.door_since = t
        elif door is False and self.door_since is not None:
            self._door_close(t)
        if defrost is True and self.defrost_since is None:
            self.defrost_since = t
        elif defrost is False:
            self.defrost_since = None

    def _door_close(self, t: int) -> None:
        d = self.d
        ds = self.door_since
        assert ds is not None
        self.emit_resolved_stages(
            R.COLDCHAIN_DOOR_OPEN,
            self.door_warn,
            self.door_crit,
            at=t,
            notify=d.config.door.notify_on_clear,
            evidence={"door_open_since": ms_to_iso(ds), "open_min": dur_min(ds, t)},
        )
        self.door_since = self.door_warn = self.door_crit = None

    # -- the door alert ------------------------------------------------------------------------------------------

    def door_deadline(self, fresh: int) -> int | None:
        d = self.d
        ds = self.door_since
        if ds is None:
            return None
        best: int | None = None
        if self.door_warn is None and d.door_warn_ms is not None and ds + d.door_warn_ms <= fresh:
            best = ds + d.door_warn_ms
        if self.door_crit is None and d.door_crit_ms is not None and ds + d.door_crit_ms <= fresh:
            x = ds + d.door_crit_ms
            if best is None or x < best:
                best = x
        return best

    def door_fire(self, t: int, fresh: int) -> None:
        d = self.d
        ds = self.door_since
        if ds is None:
            return
        for stage, sev, after in (
            ("warning", Severity.WARNING, d.door_warn_ms),
            ("critical", Severity.CRITICAL, d.door_crit_ms),
        ):
            opened = self.door_warn if stage == "warning" else self.door_crit
            if opened is None and after is not None and ds + after <= min(t, fresh):
                if stage == "warning":
                    self.door_warn = t
                else:
                    self.door_crit = t
                self.emit_open(
                    R.COLDCHAIN_DOOR_OPEN,
                    sev,
                    at=t,
                    notify=True,
                    evidence={"door_open_since": ms_to_iso(ds), "open_min": dur_min(ds, t), "stage": stage},
                )

    # -- masks -------------------------------------------------------------------------------------------------

    def mask_parts(self, t: int) -> tuple[list[str], int, int | None]:
        """Causes active at ``t``, their provisional union end, and the earliest end (next re-evaluation)."""
        d = self.d
        reasons: list[str] = []
        ends: list[int] = []
        if self.door_since is not None and t < self.door_since + d.door_max:
            reasons.append("door")
            ends.append(self.door_since + d.door_max)
        if self.defrost_since is not None and t < self.defrost_since + d.defrost_max:
            reasons.append("defrost")
            ends.append(self.defrost_since + d.defrost_max)
        if t < self.startup_until:
            reasons.append("startup")
            ends.append(self.startup_until)
        nxt: int | None = None
        if d.sched:
            inside, change = window_state(d.tz, d.sched, t)
            if inside and change is not None:
                reasons.append("defrost_schedule")
                ends.append(change)
            elif change is not None:
                nxt = change
        if ends:
            return reasons, max(ends), min(ends)
        return reasons, NEG, nxt

    def update_mask(self, t: int) -> None:
        reasons, _, _ = self.mask_parts(t)
        m = self.mask
        if reasons and m is None:
            self.mask = (t, tuple(reasons), 0, 0.0, 0.0)
        elif reasons and m is not None:
            merged = tuple(sorted({*m[1], *reasons}))
            if merged != m[1]:
                self.mask = (m[0], merged, m[2], m[3], m[4])
        elif not reasons and m is not None:
            detail: dict[str, Any] = {"reasons": sorted(m[1]), "readings": m[2]}
            if m[2]:
                detail["min_c"] = m[3]
                detail["max_c"] = m[4]
            self.out.append(
                Annotation(
                    kind="masked", site=self.d.site, subject=self.d.subject, start_ms=m[0], end_ms=t, detail=detail
                )
            )
            self.mask = None
            self.restart_masked_delays(t)

    def mask_count(self, x: float) -> None:
        """A reading inside the masked interval in progress: counted with its min/max (never dropped)."""
        m = self.mask
        if m is not None:
            if m[2]:
                self.mask = (m[0], m[1], m[2] + 1, min(m[3], x), max(m[4], x))
            else:
                self.mask = (m[0], m[1], 1, x, x)
