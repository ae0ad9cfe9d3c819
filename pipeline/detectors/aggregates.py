"""Rule family: windowed aggregates kept as 24 bucket totals, never readings: the cumulative exposure budget
(``coldchain.cumulative``) and the mean kinetic temperature (``coldchain.mkt``). Semantics: docs/rules.md."""

from __future__ import annotations

import math

from pipeline.contracts import rules as R
from pipeline.detectors.device_state import BUCKETS, WorkFields
from pipeline.detectors.engine import NEG, dur_min

GAS_R = 8.314462618  # J/(mol K)
T0_K = 273.15


class AggregatesMixin(WorkFields):
    def aggregates_deadline(self, fresh: int) -> int | None:
        d = self.d
        best: int | None = None
        cu = self.cum
        if cu is not None:
            boundary = (cu[0] + 1) * d.cum_bucket
            if cu[4] is not None:
                best = boundary
            elif self.exposed() and cu[3] < fresh:
                total = sum(cu[1]) + cu[2]
                cross = max(cu[3], cu[3] + (d.cum_budget - total))
                if cross <= fresh:
                    best = min(cross, boundary)
                elif boundary <= fresh:
                    best = boundary
        mk = self.mkt
        if mk is not None:
            x = (mk[0] + 1) * d.mkt_bucket
            if best is None or x < best:
                best = x
        return best

    def aggregates_fire(self, t: int) -> None:
        if self.cum is not None:
            self.cum_account(t)
            self._cum_check(t)
        mk = self.mkt
        if mk is not None and (mk[0] + 1) * self.d.mkt_bucket <= t:
            self._mkt_boundary(t)

    def aggregates_account(self, t: int, prev: int) -> None:
        """Before a reading at ``t``: account the held value up to it."""
        d = self.d
        if self.cum is not None or (d.cum_on and prev != NEG):
            self.cum_account(t)
        if self.mkt is not None or (d.mkt_on and prev != NEG):
            self._mkt_account(t)

    def aggregates_start(self, t: int) -> None:
        """After a reading at ``t``: start the windows at the first data."""
        d = self.d
        if d.cum_on and self.cum is None:
            self.cum = (t // d.cum_bucket, (), 0, t, None)
        if d.mkt_on and self.mkt is None:
            self.mkt = (t // d.mkt_bucket, (), 0.0, 0, t, None)

    def exposed(self) -> bool:
        d = self.d
        if self.last_ts == NEG:
            return False
        x = self.last_temp
        return x >= d.cum_limit if d.cum_above else x <= d.cum_limit

    # -- cumulative --------------------------------------------------------------------------------------------

    def cum_account(self, to: int) -> None:
        """Add exposure on ``[accounted-to, to)`` (value held at most ``hold`` after the last reading)."""
        d = self.d
        cu = self.cum
        if cu is None:
            return
        idx, done, cur, acc, opened = cu
        if to <= acc:
            return
        exp_end = min(to, self.last_ts + d.hold) if self.exposed() else acc
        b = d.cum_bucket
        pos = acc
        keep = BUCKETS - 1
        while (idx + 1) * b <= to:
            be = (idx + 1) * b
            if exp_end > pos:
                cur += min(be, exp_end) - pos
            done = (*done, cur)[-keep:]
            cur = 0
            idx += 1
            pos = be
            if exp_end <= pos:
                k = to // b - idx
                if k > 0:
                    done = (*done, *([0] * min(k, keep)))[-keep:]
                    idx += k
                    pos = idx * b
                break
        if exp_end > pos:
            cur += exp_end - pos
        self.cum = (idx, done, cur, to, opened)

    def _cum_check(self, t: int) -> None:
        d = self.d
        cu = self.cum
        assert cu is not None
        total = sum(cu[1]) + cu[2]
        c = d.config.cumulative
        ev = {
            "limit_c": c.limit,
            "direction": c.direction,
            "budget_min": c.budget_min,
            "window_min": c.window_min,
            "exposure_min": dur_min(0, total),
        }
        if cu[4] is None and total >= d.cum_budget:
            self.cum = (*cu[:4], t)
            self.emit_open(R.COLDCHAIN_CUMULATIVE, c.severity, at=t, notify=c.notify, evidence=ev)
        elif cu[4] is not None and total < d.cum_budget and t == (cu[0]) * d.cum_bucket:
            self.cum = (*cu[:4], None)
            self.emit_resolved(
                R.COLDCHAIN_CUMULATIVE, c.severity, opened=cu[4], at=t, notify=c.notify_on_clear, evidence=ev
            )

    # -- mean kinetic temperature ------------------------------------------------------------------------------

    def _mkt_account(self, to: int) -> None:
        d = self.d
        mk = self.mkt
        if mk is None:
            return
        idx, done, cw, cd, acc, opened = mk
        if to <= acc:
            return
        end = min(to, self.last_ts + d.hold)
        if end > acc:
            # Boundary timers close each bucket before a later segment is added: a segment never crosses one.
            span = end - acc
            cw += span * math.exp(-d.mkt_a * (1.0 / (self.last_temp + T0_K) - 1.0 / T0_K))
            cd += span
        jump = to // d.mkt_bucket
        if jump > idx:
            if jump - idx > BUCKETS:
                done = ()
            else:
                done = (*done, float(f"{cw:.10g}"), cd, *([0.0, 0] * (jump - idx - 1)))[-2 * BUCKETS :]
            idx, cw, cd = jump, 0.0, 0
        self.mkt = (idx, done, cw, cd, to, opened)

    def _mkt_boundary(self, t: int) -> None:
        """At a bucket boundary: close the bucket and evaluate MKT over the last 24 completed buckets."""
        d = self.d
        self._mkt_account(t)
        mk = self.mkt
        assert mk is not None
        done, opened = mk[1], mk[5]
        win_w = sum(done[0::2])
        win_d = sum(done[1::2])
        c = d.config.mkt
        if win_d == 0:
            if opened is None and self.last_ts + d.hold < t:
                self.mkt = None  # nothing left in the window: stop timing it until data returns
            return
        if win_d < d.mkt_need or win_w <= 0:
            return
        mkt_k = d.mkt_a / (d.mkt_a / T0_K - math.log(win_w / win_d))
        value = round(mkt_k - T0_K, 3)
        ev = {
            "mkt_c": value,
            "limit_c": c.limit,
            "window_min": c.window_min,
            "coverage": round(win_d / (d.mkt_bucket * BUCKETS), 3),
            "delta_h_kj_per_mol": c.delta_h_kj_per_mol,
        }
        if opened is None and value > d.mkt_limit:
            self.mkt = (*mk[:5], t)
            self.emit_open(R.COLDCHAIN_MKT, c.severity, at=t, notify=c.notify, evidence=ev)
        elif opened is not None and value <= d.mkt_limit - c.deadband:
            self.mkt = (*mk[:5], None)
            self.emit_resolved(R.COLDCHAIN_MKT, c.severity, opened=opened, at=t, notify=c.notify_on_clear, evidence=ev)
