"""Failed rapid tests (contract 6) in the risk grade: the real rapidtest detector's alerts, as the alerts topic
carries them, folded and graded by the pure functions; counted once per sample, capped, weighted by
``Weights`` (configurable), named in the explanation, and shown by ``larder grade show``."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline import serde
from pipeline.agents.core import encode_output
from pipeline.contracts import rules as R
from pipeline.detectors.rapidtest import RapidTestDetector
from pipeline.grading import evidence, score, simulate
from pipeline.grading.evidence import DAY_MS
from pipeline.schemas import Alert
from pipeline.siteconfig import SiteConfig
from pipeline.testing import rapid_test_item

T0 = 1_795_334_400_000  # 2026-11-22T08:00:00Z
M = 60_000
SITE = "S00000"


def result(minute: float, rid: str, sample: str, verdict: str, stage: str = "initial") -> dict[str, Any]:
    return rapid_test_item(T0 + round(minute * M), rid, sample, verdict, stage, site=SITE)


def detector_records(items: list[dict[str, Any]], until_min: float) -> list[dict[str, Any]]:
    """The alerts-topic records the detector's outputs become (what the grading worker reads)."""
    det = RapidTestDetector(SITE, 240, 5)
    state = det.initial()
    out: list[Any] = []
    for item in items:
        state, o = det.on_item(state, item, item["ts_ms"])
        out += o
    state, o = det.on_tick(state, T0 + round(until_min * M))
    out += o
    alerts = [a for a in out if isinstance(a, Alert)]
    assert alerts, "the scenario opens rapid-test alerts"
    return [serde.loads(encode_output(a)[2]) for a in alerts]


def site_cfg() -> SiteConfig:
    return simulate.site_config(1, seed=3)


def fold(records: list[dict[str, Any]]) -> evidence.SiteEvidence:
    st = evidence.empty(SITE)
    for r in records:
        st = evidence.fold(st, r)
    return st


def by_factor(g: score.SiteGrade) -> dict[str, score.Contribution]:
    return {c.factor: c for c in g.factors}


# Sample A: positive, nobody rechecks (the escalation opens at +240 min), then a lab confirms it.
# Sample B: suspect, a negative recheck an hour later resolves it. Sample C: negative, no alert.
SCENARIO = [
    result(10, "r1", "A", "positive"),
    result(20, "r2", "B", "suspect"),
    result(30, "r3", "C", "negative"),
    result(80, "r4", "B", "negative", stage="recheck"),
    result(300, "r5", "A", "positive", stage="lab_confirmed"),
]


def test_a_failed_rapid_test_counts_once_per_sample_and_a_lab_confirmation_weighs_again() -> None:
    records = detector_records(SCENARIO, until_min=400)
    rules = {(r["rule"], r["subject"]) for r in records}
    assert rules == {
        (R.RAPIDTEST_POSITIVE, f"{SITE}/A"),
        (R.RAPIDTEST_RECHECK_OVERDUE, f"{SITE}/A"),
        (R.RAPIDTEST_CONFIRMED, f"{SITE}/A"),
        (R.RAPIDTEST_POSITIVE, f"{SITE}/B"),
    }
    site = site_cfg().sites[SITE]
    as_of = T0 + DAY_MS
    g = score.compute(fold(records), site, as_of)
    f = by_factor(g)
    opened = {(r["rule"], r["subject"]): r["alert_id"] for r in records if r["state"] == "open"}
    # Two samples failed (A's recheck escalation and lab confirmation are the same failure): 2 x 3.0.
    assert (f["rapid_tests"].quantity, f["rapid_tests"].points) == (2, 6.0)
    assert f["rapid_tests"].alert_ids == [
        opened[(R.RAPIDTEST_POSITIVE, f"{SITE}/A")],
        opened[(R.RAPIDTEST_POSITIVE, f"{SITE}/B")],
    ]
    assert (f["rapid_confirmed"].quantity, f["rapid_confirmed"].points) == (1, 4.0)
    assert f["rapid_confirmed"].alert_ids == [opened[(R.RAPIDTEST_CONFIRMED, f"{SITE}/A")]]
    # Both are in the explanation, with their ids, and in the points.
    assert {"rapid_tests", "rapid_confirmed"} <= {c.factor for c in g.top}
    # Weights are configurable: without the rapid-test factors the same evidence loses exactly 10 points.
    zero = score.Factor(per_unit=0, cap=0)
    without = score.compute(fold(records), site, as_of, score.Weights(rapid_tests=zero, rapid_confirmed=zero))
    assert g.points - without.points == pytest.approx(10.0)
    # Before anything failed, nothing counts; before the lab result, only the failures do.
    assert by_factor(score.compute(fold(records), site, T0 + 5 * M))["rapid_tests"].points == 0
    early = by_factor(score.compute(fold(records), site, T0 + 100 * M))
    assert (early["rapid_tests"].points, early["rapid_confirmed"].points) == (6.0, 0.0)


def test_rapid_test_points_are_capped_and_leave_the_window_after_90_days() -> None:
    items = [result(10 + i, f"r{i}", f"S{i}", "positive") for i in range(5)]
    records = detector_records(items, until_min=30)
    site = site_cfg().sites[SITE]
    st = fold(records)
    f = by_factor(score.compute(st, site, T0 + DAY_MS))
    assert (f["rapid_tests"].quantity, f["rapid_tests"].points) == (5, 9.0)  # 5 x 3.0 capped at 9
    later = by_factor(score.compute(st, site, T0 + 91 * DAY_MS))
    assert later["rapid_tests"].quantity == 0


def test_rapid_test_failures_picks_the_first_alert_of_each_sample() -> None:
    def facts(aid: str, rule: str, subject: str, opened: int) -> evidence.Facts:
        return evidence.Facts(aid, rule, "warning", subject, True, opened)

    rows = [
        facts("c", R.RAPIDTEST_CONFIRMED, "S/x", 30),
        facts("a", R.RAPIDTEST_POSITIVE, "S/x", 10),
        facts("o", R.RAPIDTEST_RECHECK_OVERDUE, "S/y", 5),  # an escalation alone is no failed sample
        facts("z", R.RAPIDTEST_POSITIVE, "S/z", 20),
        facts("e", "coldchain.high", "dev-1", 1),
    ]
    failed, confirmed = score.rapid_test_failures(rows)
    assert [f.alert_id for f in failed] == ["a", "z"]
    assert [f.alert_id for f in confirmed] == ["c"]


def test_grade_show_lists_failed_rapid_tests(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.grading import store

    states = {SITE: fold(detector_records(SCENARIO, until_min=400))}

    async def fake_read(settings: Any, gt: Any) -> dict[str, evidence.SiteEvidence]:
        return states

    monkeypatch.setattr(store, "read_states", fake_read)
    sites = tmp_path / "sites.json"
    sites.write_bytes(serde.dumps(simulate.site_doc(1, seed=3)))
    as_of = ["--as-of", "2026-11-23T08:00:00Z"]
    csv_out = CliRunner().invoke(app, ["grade", "show", "--sites", str(sites), "-f", "csv", *as_of])
    assert csv_out.exit_code == 0, csv_out.output
    import csv

    [values] = list(csv.DictReader(csv_out.stdout.splitlines()))
    assert (values["rapid_tests_failed"], values["rapid_tests_confirmed"]) == ("2", "1")
    assert "rapid_tests 6 (" in values["top_factors"] and "rapid_confirmed 4 (" in values["top_factors"]
    table = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["grade", "show", "--sites", str(sites), *as_of])
    assert table.exit_code == 0, table.output
    assert "2 failed, 1 lab-confirmed" in table.stdout


# -- the rollup's rapid-test pass rate ---------------------------------------------------------------------------


def item(
    site: str, minute: float, rid: str, verdict: str, stage: str = "initial", instrument: str = "rt-1"
) -> dict[str, Any]:
    """A rapid-tests topic item (what the hooks enrich a contract 6 result into)."""
    return {**result(minute, rid, rid, verdict, stage), "site": site, "instrument": instrument}


def test_rollup_pass_rate_counts_initial_results_once_each() -> None:
    """Two sites of one station with a known mix: the station's pass rate is exactly passed / tested, counted from
    the items here; rechecks and lab results are follow-ups (not tests), a redelivered result counts once, and a
    result outside the period is not in it."""
    from pipeline.grading import rollup

    cfg = simulate.site_config(2, seed=3)  # S00000 and S00001, both of station ST0000 and district D000
    a, b = "S00000", "S00001"
    items = [
        *(item(a, 10 + i, f"a{i}", "negative") for i in range(7)),
        item(a, 30, "a7", "positive"),
        item(a, 31, "a8", "suspect"),
        item(a, 32, "a9", "positive"),
        item(a, 90, "a10", "negative", stage="recheck"),  # a follow-up of a8: not a test
        item(a, 300, "a11", "positive", stage="lab_confirmed"),  # a follow-up of a7: not a test
        item(a, 12, "a2", "negative"),  # a redelivery of a2 (same instrument, same result id)
        *(item(b, 40 + i, f"b{i}", "negative", instrument="rt-2") for i in range(4)),
        item(b, 50, "b4", "suspect", instrument="rt-2"),
        item(b, 50, "a0", "negative", instrument="rt-2"),  # another instrument's "a0": a different result
        item(b, -2 * 24 * 60, "b-old", "positive", instrument="rt-2"),  # two days before: not in the day
    ]
    # Independently: distinct (instrument, result id) of initial results in the day ending at as_of.
    as_of = T0 + 400 * M
    lo = as_of + 1 - DAY_MS
    tested = {(d["instrument"], d["result_id"]): d["result"] == "negative" for d in items
              if d["stage"] == "initial" and lo <= d["ts_ms"] <= as_of}  # fmt: skip
    assert (len(tested), sum(tested.values())) == (16, 12)
    states = evidence.fold_all((), items)
    [station] = rollup.rollup(states, cfg, as_of, "day", "station")
    assert (station["rapid_tests"], station["rapid_tests_passed"]) == (16, 12)
    assert station["rapid_test_pass_rate"] == 12 / 16
    assert station["sites_rapid_tested"] == 2
    [week] = rollup.rollup(states, cfg, as_of, "week", "district")
    assert (week["rapid_tests"], week["rapid_tests_passed"]) == (17, 12)  # b-old is in the week
    [row] = rollup.to_csv_rows([station])
    assert (row["rapid_tests"], row["rapid_tests_passed"], row["rapid_test_pass_rate"]) == (16, 12, 0.75)
    # No test in the period: no rate (not 0 %, not 100 %).
    [empty_day] = rollup.rollup(states, cfg, as_of + 3 * DAY_MS, "day", "station")
    assert (empty_day["rapid_tests"], empty_day["rapid_test_pass_rate"]) == (0, None)
    # The states survive the table's bytes, and a re-read item changes nothing (the same object: no write).
    for st in states.values():
        assert evidence.from_bytes(evidence.to_bytes(st)) == st
    assert evidence.fold_rapid_test(states[a], items[0]) is states[a]


def test_a_rapid_test_item_without_its_fields_is_refused() -> None:
    good = item(SITE, 1, "x", "negative")
    for broken in ({**good, "ts_ms": "soon"}, {**good, "result": "maybe"}, {**good, "stage": "final"},
                   {k: v for k, v in good.items() if k != "result_id"}):  # fmt: skip
        with pytest.raises(ValueError):
            evidence.fold_rapid_test(evidence.empty(SITE), broken)
