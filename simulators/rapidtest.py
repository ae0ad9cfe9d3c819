"""A market's morning of rapid tests (快检): contract-6 requests from two instruments, with ground truth.

Per market: 40 samples tested from 5 min after the start, one every ~3 min. Vegetables go to the enzyme-inhibition
instrument (``<site>-rt1``, pesticide residue by GB/T 5009.199, quantitative inhibition %, limit 50 %); meat and
aquatic products to the colloidal-gold reader (``<site>-rt2``, veterinary drugs, qualitative). Five samples tell
the stories the ``rapidtest.*`` rules are for (sample numbers are 0-based):

* #4 positive, retransmitted once (same result id), negative recheck after 40 min: positive opened and resolved;
* #10 suspect, uploaded late inside a 20-min store-and-forward batch of ``rt2``, never rechecked: positive opened,
  recheck overdue at +4 h;
* #20 positive, positive recheck at +30 min, removed from sale (8.5 kg) at +50 min: positive resolved by the
  disposition, nothing overdue;
* #27 positive, lab-confirmed at +3 h: positive resolved by the lab, confirmed (critical) opened;
* #33 positive, negative recheck only at +4 h 20 min: overdue at +4 h, both resolved by the recheck.

Every other sample is negative. Results are uploaded 10-40 s after the test (``rt2`` is offline from 30 to 50 min
and uploads its backlog in one request). The truth follows from the story, not from running a detector.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from pipeline.contracts import rules as R
from pipeline.schemas import ms_to_iso
from simulators.core import Line, Truth

MIN = 60_000
H = 60 * MIN

VEGETABLES = ("菠菜 spinach", "小白菜 bok choy", "韭菜 chinese chives", "芹菜 celery", "豇豆 cowpea", "油麦菜 lettuce")
MEAT = ("猪肉 pork", "牛肉 beef", "鲈鱼 sea bass", "虾 shrimp")
DRUGS = {
    "猪肉 pork": "clenbuterol",
    "牛肉 beef": "ractopamine",
    "鲈鱼 sea bass": "malachite green",
    "虾 shrimp": "nitrofurans",
}
SUPPLIERS = ("寿光蔬菜合作社", "城郊批发市场", "海丰水产", "金牛肉业")


@dataclass
class MarketSim:
    site: str
    seed: int
    start_ms: int
    end_ms: int
    recheck_within_min: float = 240.0
    samples: int = 40
    truth: list[Truth] = field(default_factory=list)

    @property
    def instruments(self) -> dict[str, str]:
        """instrument id -> type (for the site file)."""
        return {f"{self.site}-rt1": "enzyme_inhibition", f"{self.site}-rt2": "colloidal_gold"}

    def run(self) -> list[Line]:
        rnd = random.Random(f"{self.seed}|{self.site}")
        rt1, rt2 = list(self.instruments)
        offline = (self.start_ms + 30 * MIN, self.start_ms + 50 * MIN)
        sends: list[tuple[int, str, dict[str, Any]]] = []
        backlog: list[dict[str, Any]] = []
        truth: list[Truth] = []
        due = round(self.recheck_within_min * MIN)

        def result(i: int, t: int, outcome: str, stage: str = "initial", suffix: str = "", **extra: Any) -> None:
            veg = i % 3 != 1
            ins = rt1 if veg else rt2
            sample = f"{self.site}-M{i:03d}"
            name = VEGETABLES[i % len(VEGETABLES)] if veg else MEAT[i % len(MEAT)]
            body: dict[str, Any] = {
                "result_id": f"{ins}-{i:03d}{suffix}",
                "sample_id": sample,
                "sample_name": name,
                "food_category": "vegetable" if veg else ("aquatic" if "鱼" in name or "虾" in name else "meat"),
                "stall": f"A{1 + i % 12:02d}",
                "supplier": SUPPLIERS[i % len(SUPPLIERS)],
                "trace_code": f"TR{self.seed:02d}{i:04d}",
                "operator": "检测员 Li" if veg else "检测员 Zhao",
                "tested_at": ms_to_iso(t),
                "stage": stage,
                "result": outcome,
            }
            if stage == "lab_confirmed":
                body |= {"test_item": "chlorpyrifos", "method": "GB 23200.113", "result_type": "quantitative"}
                body |= {"value": 0.31, "unit": "mg/kg", "limit": 0.02, "limit_basis": "GB 2763-2021"}
            elif veg:
                pct = round(rnd.uniform(55, 80) if outcome != "negative" else rnd.uniform(3, 35), 1)
                body |= {
                    "test_item": "organophosphate/carbamate",
                    "method": "GB/T 5009.199",
                    "result_type": "quantitative",
                }
                body |= {"value": pct, "unit": "%", "limit": 50, "limit_basis": "GB/T 5009.199"}
            else:
                body |= {"test_item": DRUGS[name], "method": "colloidal gold", "result_type": "qualitative"}
                body |= {"limit_basis": "农业农村部公告第250号"}
            body |= extra
            sent = t + rnd.randint(10_000, 40_000)
            if ins == rt2 and offline[0] <= sent < offline[1]:
                backlog.append(body)
            else:
                sends.append((sent, ins, body))

        def true(rule: str, i: int, a: int, b: int | None, note: str) -> None:
            b = b if b is not None and b <= self.end_ms else None
            truth.append(Truth(rule, f"{self.site}/{self.site}-M{i:03d}", self.site, a, b, 0.0, note))

        for i in range(self.samples):
            t = self.start_ms + 5 * MIN + i * 3 * MIN + rnd.randint(0, 50_000)
            if i == 4:
                result(i, t, "positive")
                sends.append((sends[-1][0] + 15_000, sends[-1][1], sends[-1][2]))  # a retransmit: same result id
                result(i, t + 40 * MIN, "negative", "recheck", "-r")
                true(R.RAPIDTEST_POSITIVE, i, t, t + 40 * MIN, "negative recheck in time")
            elif i == 10:
                result(i, t, "suspect")
                true(R.RAPIDTEST_POSITIVE, i, t, None, "suspect, uploaded late, never rechecked")
                true(R.RAPIDTEST_RECHECK_OVERDUE, i, t + due, None, "no recheck within the window")
            elif i == 20:
                result(i, t, "positive")
                result(i, t + 30 * MIN, "positive", "recheck", "-r")
                disposition = {"action": "removed_from_sale", "quantity_kg": 8.5}
                result(i, t + 50 * MIN, "positive", "recheck", "-d", disposition=disposition)
                true(R.RAPIDTEST_POSITIVE, i, t, t + 50 * MIN, "positive recheck, then removed from sale")
            elif i == 27:
                result(i, t, "positive")
                result(i, t + 3 * H, "positive", "lab_confirmed", "-lab")
                true(R.RAPIDTEST_POSITIVE, i, t, t + 3 * H, "superseded by the lab confirmation")
                true(R.RAPIDTEST_CONFIRMED, i, t + 3 * H, None, "lab-confirmed positive")
            elif i == 33:
                result(i, t, "positive")
                result(i, t + 4 * H + 20 * MIN, "negative", "recheck", "-r")
                true(R.RAPIDTEST_POSITIVE, i, t, t + 4 * H + 20 * MIN, "negative recheck, but late")
                true(R.RAPIDTEST_RECHECK_OVERDUE, i, t + due, t + 4 * H + 20 * MIN, "recheck after the window")
            else:
                result(i, t, "negative")
        if backlog:
            sends.append((offline[1] + 20_000, rt2, {"results": backlog}))
        sends = [s for s in sends if s[0] < self.end_ms]
        sends.sort(key=lambda s: s[0])
        self.truth = sorted(truth, key=lambda x: (x.opened_at_ms, x.rule, x.subject))
        return [Line(at, "rapid_test", ins, body) for at, ins, body in sends]
