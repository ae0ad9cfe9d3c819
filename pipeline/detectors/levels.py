"""Rule family: the four temperature levels (``coldchain.high|high_high|low|low_low``) and the rate of rise, each a
condition with a delay to open and a hysteresis (deadband + clear delay) to resolve. Semantics: docs/rules.md."""

from __future__ import annotations

from typing import Any

from pipeline.contracts import rules as R
from pipeline.detectors.device_state import HIGH, HIGH_HIGH, LOW, LOW_LOW, ROR, Cond, WorkFields
from pipeline.detectors.engine import MIN_MS, dur_min, ms
from pipeline.detectors.rules import LevelRule
from pipeline.schemas import ms_to_iso

#: The rule id of each condition slot.
COND_RULES = (R.COLDCHAIN_HIGH, R.COLDCHAIN_HIGH_HIGH, R.COLDCHAIN_LOW, R.COLDCHAIN_LOW_LOW, R.COLDCHAIN_RATE_OF_RISE)
SLOTS = (HIGH, HIGH_HIGH, LOW, LOW_LOW)


class Level:
    """One configured level, its durations in ms."""

    __slots__ = ("clear_ms", "deadband", "delay_ms", "high", "limit", "maskable", "notify", "notify_clear", "sev")

    def __init__(self, rule: LevelRule, high: bool) -> None:
        assert rule.limit is not None
        self.limit = rule.limit
        self.high = high
        self.deadband = rule.deadband
        self.delay_ms = ms(rule.delay_min)
        self.clear_ms = ms(rule.clear_delay_min)
        self.sev = rule.severity
        self.notify = rule.notify
        self.notify_clear = rule.notify_on_clear
        self.maskable = rule.maskable


class LevelsMixin(WorkFields):
    # -- deadlines ---------------------------------------------------------------------------------------------

    def levels_deadline(self, mask_end: int, fresh: int) -> int | None:
        best: int | None = None
        for slot, c in enumerate(self.conds):
            if c is None:
                continue
            x = self.cond_deadline(slot, c, mask_end)
            if x is not None and x <= fresh and (best is None or x < best):
                best = x
        return best

    def cond_deadline(self, slot: int, c: Cond, mask_end: int) -> int | None:
        d = self.d
        since, opened, clear_since, _ = c
        if slot == ROR:
            delay, clear = d.ror_delay, d.ror_clear
        else:
            lv = d.levels[slot]
            assert lv is not None
            delay, clear = lv.delay_ms, lv.clear_ms
        if opened is None:
            if since is None:
                return None
            start = since
            if self.mask is not None and mask_end > start and self.maskable(slot):
                start = mask_end
            return start + delay
        if clear_since is not None:
            return clear_since + clear
        return None

    def maskable(self, slot: int) -> bool:
        if slot == ROR:
            return self.d.config.rate_of_rise.maskable
        lv = self.d.levels[slot]
        return lv is not None and lv.maskable

    # -- firing ------------------------------------------------------------------------------------------------

    def levels_fire(self, t: int, fresh: int, mask_end: int) -> None:
        conds = list(self.conds)
        for slot, c in enumerate(conds):
            if c is None:
                continue
            x = self.cond_deadline(slot, c, mask_end)
            if x is None or x > t or x > fresh:
                continue
            conds[slot] = self._cond_fire(slot, c, t)
        self.conds = tuple(conds)

    def _cond_fire(self, slot: int, c: Cond, t: int) -> Cond | None:
        d = self.d
        since, opened, _, peak = c
        rule = COND_RULES[slot]
        if slot == ROR:
            r = d.config.rate_of_rise
            sev, notify, notify_clear = r.severity, r.notify, r.notify_on_clear
            ev: dict[str, Any] = {"limit_c_per_min": d.ror_limit, "window_min": r.window_min}
            ev_peak = "peak_c_per_min"
        else:
            lv = d.levels[slot]
            assert lv is not None
            sev, notify, notify_clear = lv.sev, lv.notify, lv.notify_clear
            ev = {"limit_c": lv.limit, "deadband_c": lv.deadband}
            ev_peak = "peak_c"
        if opened is None:
            assert since is not None
            ev |= {"breach_since": ms_to_iso(since), "value_c": self.last_temp, ev_peak: peak}
            self.emit_open(rule, sev, at=t, notify=notify, evidence=ev)
            return (since, t, None, peak)
        ev |= {ev_peak: peak, "open_min": dur_min(opened, t)}
        self.emit_resolved(rule, sev, opened=opened, at=t, notify=notify_clear, evidence=ev)
        return None

    # -- one reading -------------------------------------------------------------------------------------------

    def levels_apply(self, x: float, t: int, stale: bool) -> None:
        d = self.d
        conds = self.conds
        if stale and any(c is not None for c in conds):
            # Continuity broke (no data for longer than the hold): pending delays restart.
            conds = tuple(None if c is None or c[1] is None else (c[0], c[1], None, c[3]) for c in conds)
        if conds is self.conds and d.safe_lo < x < d.safe_hi and conds[:4] == (None, None, None, None):
            pass
        else:
            lst = list(conds)
            for slot in SLOTS:
                lv = d.levels[slot]
                if lv is not None:
                    lst[slot] = _level(lv, lst[slot], x, t)
            conds = tuple(lst)
        if d.ror_limit is not None:
            conds = self._ror(conds, t, x, stale)
        self.conds = conds

    def restart_masked_delays(self, t: int) -> None:
        """A mask ended at ``t``: maskable conditions in progress restart their delay there."""
        conds = list(self.conds)
        for slot, c in enumerate(conds):
            if c is not None and c[0] is not None and c[1] is None and c[0] < t and self.maskable(slot):
                conds[slot] = (t, c[1], c[2], c[3])
        self.conds = tuple(conds)

    def _ror(self, conds: tuple[Cond | None, ...], t: int, x: float, stale: bool) -> tuple[Cond | None, ...]:
        d = self.d
        win = d.ror_window
        anchors = self.ror_anchors
        if stale:
            anchors = ()
        elif anchors and anchors[0][0] < t - win:
            # Anchors are kept in event-time order (readings are applied in it): the ones out of the window are
            # a prefix. Dropping it is what filtering every anchor did, without a new tuple on most readings.
            cut = t - win
            k = 1
            while k < len(anchors) and anchors[k][0] < cut:
                k += 1
            anchors = anchors[k:]
        rate: float | None = None
        for a_ts, a_x in anchors:
            if t - a_ts >= win // 2:
                rate = (x - a_x) * MIN_MS / (t - a_ts)
                break
        if not anchors or t - anchors[-1][0] >= win // 4:
            anchors = (*anchors, (t, x))
        self.ror_anchors = anchors
        c = conds[ROR]
        assert d.ror_limit is not None
        breach = rate is not None and rate > d.ror_limit
        if c is None:
            if not breach:
                return conds
            assert rate is not None
            new: Cond | None = (t, None, None, round(rate, 4))
        else:
            since, opened, clear_since, peak = c
            if breach:
                assert rate is not None
                peak = max(peak, round(rate, 4))
            if opened is None:
                new = (since, None, None, peak) if breach else None
            elif breach:
                new = (since, opened, None, peak)
            else:
                new = c if clear_since is not None else (since, opened, t, peak)
        return (*conds[:ROR], new)


def _level(lv: Level, c: Cond | None, x: float, t: int) -> Cond | None:
    if lv.high:
        breach = x > lv.limit
        clear_ok = x <= lv.limit - lv.deadband
    else:
        breach = x < lv.limit
        clear_ok = x >= lv.limit + lv.deadband
    if c is None:
        return (t, None, None, x) if breach else None
    since, opened, clear_since, peak = c
    if breach:
        peak = max(peak, x) if lv.high else min(peak, x)
    if opened is None:
        return (since, None, None, peak) if breach else None
    if clear_ok:
        return c if clear_since is not None else (since, opened, t, peak)
    return (since, opened, None, peak)


def outside_levels(levels: list[Level | None], temp: float) -> list[str]:
    """The level rules a value breaches (evidence of a late reading)."""
    out = []
    for slot in SLOTS:
        lv = levels[slot]
        if lv is not None and ((temp > lv.limit) if lv.high else (temp < lv.limit)):
            out.append(COND_RULES[slot])
    return out
