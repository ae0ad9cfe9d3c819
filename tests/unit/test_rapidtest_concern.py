"""The rapid-tests concern under the worker's Runner: per-site state from the site file's rules, bad items
dead-lettered with their instrument, unknown sites refused, ticks fire the escalation."""

from __future__ import annotations

import base64
from typing import Any

from pipeline import serde
from pipeline.agents.core import Runner
from pipeline.agents.rapidtests import rapid_test_concern
from pipeline.contracts import rules as R
from pipeline.partitioner import partition_for
from pipeline.schemas import Alert
from pipeline.siteconfig import SiteConfig

T0 = 1_795_334_400_000
M = 60_000
CFG = SiteConfig.model_validate(
    {
        "sites": {
            "M1": {
                "instruments": {"rt-1": {"type": "colloidal_gold", "secret": "rt1-secret-xyz"}},
                "rapid_tests": {"recheck_within_min": 30, "allowed_lateness_min": 1},
            }
        }
    }
)


def item(minute: float, rid: str, result: str, site: str = "M1", **extra: Any) -> dict[str, Any]:
    return {
        "instrument": "rt-1",
        "instrument_type": "colloidal_gold",
        "site": site,
        "result_id": rid,
        "sample_id": "s-1",
        "sample_name": "猪肉",
        "food_category": "meat",
        "test_item": "clenbuterol",
        "method": "colloidal gold",
        "result_type": "qualitative",
        "result": result,
        "stage": "initial",
        "operator": "Zhao",
        "ts_ms": T0 + round(minute * M),
        "received_ms": T0 + round(minute * M) + 5000,
        **extra,
    }


def record(*items: dict[str, Any]) -> bytes:
    return serde.dumps({"v": 1, "kind": "rapid_tests", "items": list(items)})


def test_runner_applies_site_rules_dead_letters_bad_items_and_escalates_on_ticks() -> None:
    runner = Runner(rapid_test_concern(CFG), None, 4, arrived_ms=lambda: 0)
    p = partition_for("M1", 4)
    bad = item(1, "r-bad", "maybe")
    res = runner.on_record(record(item(0, "r1", "positive"), bad, item(2, "r2", "negative")), p)
    out: list[Alert] = [o for o in res.outputs if isinstance(o, Alert)]
    assert [(d.reason_code, d.instrument, d.camera) for d in res.dead_letters] == [("worker.bad_item", "rt-1", None)]
    assert serde.loads(base64.b64decode(res.dead_letters[0].payload_b64))["result_id"] == "r-bad"
    res = runner.on_record(record(item(5, "r3", "negative", site="ghost")), partition_for("ghost", 4))
    assert [d.reason_code for d in res.dead_letters] == ["worker.bad_item"] and "ghost" in res.dead_letters[0].reason
    for minute in (10, 30, 31, 32):
        tick = runner.on_record(serde.dumps({"v": 1, "kind": "tick", "now_ms": T0 + minute * M}), p)
        out += [o for o in tick.outputs if isinstance(o, Alert)]
    # The positive opened once the result at minute 2 moved the frontier past it; the site's 30 min window
    # (not the default 4 h) escalates it on the tick that passes minute 30 + 1 min lateness.
    assert [(a.rule, a.at_ms) for a in out] == [
        (R.RAPIDTEST_POSITIVE, T0),
        (R.RAPIDTEST_RECHECK_OVERDUE, T0 + 30 * M),
    ]
    assert all(a.site == "M1" and a.subject == "M1/s-1" for a in out)
