"""Risk grades and rollups over a simulated month of several sites with different histories.

Every figure is checked against an independent computation written here from the simulator's truth rows (when
each alert opened, was acknowledged and resolved, its peak, verdict, the escalation steps it entered), not
from the folded evidence: the code under test sees only the alerts-topic records the simulator renders, and the
rapid-tests topic's items (for the pass rate: the oracle counts them straight from the items).
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from pipeline.grading import evidence, rollup, score, simulate
from pipeline.grading.evidence import DAY_MS, Override
from pipeline.siteconfig import SiteConfig

START = 1_790_035_200_000 - 1_790_035_200_000 % DAY_MS
DAYS = 30
AS_OF = START + DAYS * DAY_MS
W = score.DEFAULT_WEIGHTS
N_SITES = 10
MIN = 60_000.0


@pytest.fixture(scope="module")
def month() -> tuple[SiteConfig, list[simulate.TruthAlert], list[dict[str, Any]], dict[str, evidence.SiteEvidence]]:
    cfg = simulate.site_config(N_SITES, seed=3)
    truth = simulate.simulate(cfg, START, DAYS, seed=11)
    events = simulate.events(truth)
    return cfg, truth, events, evidence.fold_all(events, rapid_items(cfg, truth))


def rapid_items(cfg: SiteConfig, truth: list[simulate.TruthAlert]) -> list[dict[str, Any]]:
    """The rapid-tests topic's items of the month (deterministic: the tests call it again rather than carry it)."""
    return simulate.rapid_results(cfg, truth, START, DAYS, seed=12)


def oracle_pass_rate(items: list[dict[str, Any]], sites: list[str], lo: int, hi: int) -> tuple[int, int]:
    """(initial rapid tests, passed) of ``sites`` tested in [lo, hi), each (instrument, result id) once."""
    tests = {
        (d["instrument"], d["result_id"]): d["result"] == "negative"
        for d in items
        if d["site"] in sites and d.get("stage", "initial") == "initial" and lo <= d["ts_ms"] < hi
    }
    return len(tests), sum(tests.values())


# -- the independent oracle ----------------------------------------------------------------------------------


def known(a: simulate.TruthAlert, as_of: int) -> dict[str, Any]:
    """The truth row as known at ``as_of``."""
    return {
        "ack": a.acked_ms if a.acked_ms is not None and a.acked_ms <= as_of else None,
        "res": a.resolved_ms if a.resolved_ms is not None and a.resolved_ms <= as_of else None,
        "verdict": a.verdict if a.verdict_ms is not None and a.verdict_ms <= as_of else None,
    }


def nearest_rank(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return sorted(values)[math.ceil(q * len(values)) - 1]


def capped(per_unit: float, cap: float, quantity: float) -> float:
    return min(cap, per_unit * quantity)


def oracle_grade(cfg: SiteConfig, truth: list[simulate.TruthAlert], sid: str, as_of: int) -> dict[str, Any]:
    site = cfg.sites[sid]
    lo = as_of - 90 * DAY_MS
    mine = [a for a in truth if a.site == sid and a.opened_ms <= as_of]
    recent = [a for a in mine if a.opened_ms >= lo]
    g = site.grading
    static = W.business[g.business_type] if g.business_type else 8.0
    if g.diners_per_day is None and g.floor_area_m2 is None:
        static += 1.0
    else:
        d = g.diners_per_day or 0
        f = g.floor_area_m2 or 0.0
        static += max(
            10 if d >= 1000 else 6 if d >= 300 else 3 if d >= 100 else 0,
            10 if f >= 3000 else 6 if f >= 500 else 3 if f >= 150 else 0,
        )
    static += 10.0 if g.vulnerable_consumers else 0.0
    static = min(40.0, static)
    pts: dict[str, float] = {}
    ids: dict[str, list[str]] = {}
    exc = sorted(
        (a for a in recent if a.rule in ("coldchain.high", "coldchain.high_high")),
        key=lambda a: (a.opened_ms, a.alert_id),
    )
    pts["excursions"] = capped(1.5, 10, len(exc))
    ids["excursions"] = [a.alert_id for a in exc][:10]
    hours = sum(((known(a, as_of)["res"] or as_of) - a.opened_ms) for a in exc) / 3.6e6
    pts["excursion_hours"] = capped(0.5, 6, hours)
    peak = max(
        (
            a.peak - a.limit
            for a in exc
            if a.peak is not None and known(a, as_of)["res"] is not None and a.limit is not None
        ),
        default=0.0,
    )
    # Only resolved excursions carry their peak; open ones show the value at opening (limit + 0.2).
    peak = max([peak] + [0.2 for a in exc if known(a, as_of)["res"] is None])
    pts["excursion_peak"] = capped(1.0, 4, peak)
    una = [a for a in recent if a.rule == "kitchen.unattended" and a.severity == "warning"]
    pts["unattended"] = capped(2.0, 8, len(una))
    hyg = [a for a in recent if a.rule == "kitchen.hygiene.no_hat" and known(a, as_of)["verdict"] == "confirmed"]
    pts["hygiene"] = capped(2.0, 8, 100 * len(hyg) / (12.0 * len(site.kitchens) * 90))
    pests = [a for a in recent if a.rule == "kitchen.hygiene.rodent" and known(a, as_of)["verdict"] != "false_positive"]
    pts["pests"] = capped(4.0, 8, len(pests))
    ids["pests"] = sorted(a.alert_id for a in pests)
    notified = [a for a in recent if a.notify]
    late = []
    for a in notified:
        k = known(a, as_of)
        steps = site.escalation.critical if a.severity == "critical" else site.escalation.warning
        deadline = a.opened_ms + max(s.after_min for s in steps) * MIN
        handled = min([t for t in (k["ack"], k["res"]) if t is not None], default=None)
        if deadline <= as_of and (handled is None or handled > deadline):
            late.append(a)
    pts["late_handling"] = capped(10.0, 10, len(late) / len(notified) if notified else 0.0)
    ids["late_handling"] = sorted(a.alert_id for a in late)
    acks = [(known(a, as_of)["ack"] - a.opened_ms) / MIN for a in notified if known(a, as_of)["ack"] is not None]
    med = nearest_rank(acks, 0.5)
    pts["ack_median"] = capped(4.0 / 60, 4, med or 0.0)
    watched = len(site.devices) + len(site.cameras)
    off = 0
    for a in mine:
        if a.rule == "liveness.offline":
            stop = known(a, as_of)["res"] or (as_of + 1)
            off += max(0, min(stop, as_of + 1) - max(a.opened_ms, lo))
    pts["offline"] = capped(20.0, 6, off / (watched * (as_of + 1 - lo)))
    # Rapid tests: a sample is failed once, whatever alerts it opened; lab-confirmed samples weigh again.
    failed = sorted(
        {a.subject: a for a in sorted(recent, key=lambda a: -a.opened_ms) if a.rule == "rapidtest.positive"}.values(),
        key=lambda a: (a.opened_ms, a.alert_id),
    )
    lab = sorted((a for a in recent if a.rule == "rapidtest.confirmed"), key=lambda a: (a.opened_ms, a.alert_id))
    pts["rapid_tests"] = capped(3.0, 9, len(failed))
    ids["rapid_tests"] = [a.alert_id for a in failed][:10]
    pts["rapid_confirmed"] = capped(4.0, 8, len(lab))
    ids["rapid_confirmed"] = [a.alert_id for a in lab][:10]
    dynamic = min(60.0, sum(pts.values()))
    total = static + dynamic
    grade = "A" if total <= 30 else "B" if total <= 45 else "C" if total <= 60 else "D"
    return {"static": static, "dynamic": dynamic, "points": total, "grade": grade, "pts": pts, "ids": ids}


def oracle_rollup(
    cfg: SiteConfig, truth: list[simulate.TruthAlert], sites: list[str], as_of: int, period_ms: int
) -> dict[str, Any]:
    lo, hi = as_of + 1 - period_ms, as_of + 1
    rows = [a for a in truth if a.site in sites and a.opened_ms <= as_of]
    in_period = [a for a in rows if lo <= a.opened_ms < hi]
    acks = [(known(a, as_of)["ack"] - a.opened_ms) / MIN for a in in_period if known(a, as_of)["ack"] is not None]
    ress = [(known(a, as_of)["res"] - a.opened_ms) / MIN for a in in_period if known(a, as_of)["res"] is not None]
    open_counts: dict[tuple[str, str], int] = {}
    for a in rows:
        if known(a, as_of)["res"] is None:
            h = (as_of - a.opened_ms) / 3.6e6
            bucket = "<1h" if h < 1 else "1-4h" if h < 4 else "4-24h" if h < 24 else "1-7d" if h < 168 else ">7d"
            open_counts[(a.severity, bucket)] = open_counts.get((a.severity, bucket), 0) + 1
    judged = [a for a in in_period if a.rule.startswith("kitchen.hygiene.") and known(a, as_of)["verdict"]]
    confirmed = [a for a in judged if known(a, as_of)["verdict"] == "confirmed"]
    watched_total = 0
    off = 0
    reporting = 0
    for sid in sites:
        site = cfg.sites[sid]
        watched = set(site.devices) | set(site.cameras)
        watched_total += len(watched)
        still_off = {
            a.subject for a in rows if a.site == sid and a.rule == "liveness.offline" and known(a, as_of)["res"] is None
        }
        reporting += bool(watched - still_off)
        for a in rows:
            if a.site == sid and a.rule == "liveness.offline":
                stop = known(a, as_of)["res"] or hi
                off += max(0, min(stop, hi) - max(a.opened_ms, lo))
    grades = {sid: oracle_grade(cfg, truth, sid, as_of)["grade"] for sid in sites}
    return {
        "alerts_opened": len(in_period),
        "ack_min_median": nearest_rank(acks, 0.5),
        "ack_min_p90": nearest_rank(acks, 0.9),
        "resolve_min_median": nearest_rank(ress, 0.5),
        "resolve_min_p90": nearest_rank(ress, 0.9),
        "escalated_to_station": sum(1 for a in in_period if any("station" in r for _, _, r in a.steps)),
        "escalated_to_district": sum(1 for a in in_period if any("district" in r for _, _, r in a.steps)),
        "camera_alerts_judged": len(judged),
        "camera_confirmed_share": len(confirmed) / len(judged) if judged else None,
        "online_share": 1 - off / (watched_total * period_ms),
        "coverage": reporting / len(sites),
        "open": open_counts,
        "mix": {g: sum(1 for v in grades.values() if v == g) for g in "ABCD"},
        "c_d": sorted(s for s, g in grades.items() if g in "CD"),
    }


# -- tests ---------------------------------------------------------------------------------------------------


def test_the_month_has_different_histories(month: Any) -> None:
    cfg, truth, _, _ = month
    grades = {sid: oracle_grade(cfg, truth, sid, AS_OF)["grade"] for sid in cfg.sites}
    assert len(set(grades.values())) >= 3, grades  # the simulated sites really differ
    assert any(a.retrospective for a in truth) and any(a.verdict == "false_positive" for a in truth)
    # Failed rapid tests at several sites, some lab-confirmed, some rechecked too late.
    rapid = {a.rule for a in truth if a.rule.startswith("rapidtest.")}
    assert rapid == {"rapidtest.positive", "rapidtest.recheck_overdue", "rapidtest.confirmed"}, rapid
    assert len({a.site for a in truth if a.rule == "rapidtest.positive"}) >= 3


@pytest.mark.parametrize("as_of", [AS_OF, AS_OF - 10 * DAY_MS - 3_600_000])
def test_grades_equal_the_independent_computation(month: Any, as_of: int) -> None:
    cfg, truth, _, states = month
    for sid, site in cfg.sites.items():
        got = score.compute(states.get(sid) or evidence.empty(sid), site, as_of)
        want = oracle_grade(cfg, truth, sid, as_of)
        assert got.static_points == pytest.approx(want["static"]), sid
        by_factor = {c.factor: c.points for c in got.factors}
        for factor, pts in want["pts"].items():
            assert by_factor.get(factor, 0.0) == pytest.approx(pts, abs=2e-3), (sid, factor)
        assert got.dynamic_points == pytest.approx(want["dynamic"], abs=0.01), sid
        assert got.computed == want["grade"] == got.grade, sid


def test_explanation_names_the_alert_ids_behind_each_factor(month: Any) -> None:
    cfg, truth, _, states = month
    checked = 0
    for sid, site in cfg.sites.items():
        got = score.compute(states.get(sid) or evidence.empty(sid), site, AS_OF)
        want = oracle_grade(cfg, truth, sid, AS_OF)
        dynamic = got.top
        assert [c.points for c in dynamic] == sorted((c.points for c in dynamic), reverse=True)
        assert 0 < len(dynamic) <= W.top_factors
        expected_top = sorted((p for p in want["pts"].values() if p > 0), reverse=True)[: W.top_factors]
        assert [c.points for c in dynamic] == pytest.approx(expected_top, abs=2e-3)
        for c in dynamic:
            if c.factor == "excursions":
                assert c.alert_ids == want["ids"]["excursions"], sid
                checked += 1
            elif c.factor == "pests":
                assert sorted(c.alert_ids) == want["ids"]["pests"][: W.ids_per_factor], sid
                checked += 1
            elif c.factor in ("rapid_tests", "rapid_confirmed"):
                assert c.alert_ids == want["ids"][c.factor], (sid, c.factor)
                checked += 1
            elif c.factor == "late_handling":
                assert set(c.alert_ids) <= set(want["ids"]["late_handling"])
                assert len(c.alert_ids) == min(W.ids_per_factor, len(want["ids"]["late_handling"]))
                checked += 1
            # every id named belongs to this site
            assert all(any(a.alert_id == i and a.site == sid for a in truth) for i in c.alert_ids)
    assert checked >= 5


@pytest.mark.parametrize("period", ["day", "week", "month"])
@pytest.mark.parametrize("level", ["station", "district"])
def test_rollup_kpis_equal_the_independent_computation(month: Any, period: rollup.Period, level: rollup.Level) -> None:
    cfg, truth, _, states = month
    items = rapid_items(cfg, truth)
    groups = rollup.rollup(states, cfg, AS_OF, period, level)
    assert sum(g["sites"] for g in groups) == N_SITES
    for g in groups:
        sites = sorted(s for s, site in cfg.sites.items() if getattr(site, level) == g[level])
        want = oracle_rollup(cfg, truth, sites, AS_OF, rollup.PERIOD_MS[period])
        n, passed = oracle_pass_rate(items, sites, AS_OF + 1 - rollup.PERIOD_MS[period], AS_OF + 1)
        assert n > 0 and (period != "month" or 0 < passed < n), (g[level], n, passed)  # tested; in a month, failed
        assert (g["rapid_tests"], g["rapid_tests_passed"]) == (n, passed), g[level]
        assert g["rapid_test_pass_rate"] == passed / n, g[level]
        for key in ("alerts_opened", "escalated_to_station", "escalated_to_district", "camera_alerts_judged"):
            assert g[key] == want[key], (g[level], key)
        for key in (
            "ack_min_median",
            "ack_min_p90",
            "resolve_min_median",
            "resolve_min_p90",
            "camera_confirmed_share",
            "online_share",
            "coverage",
        ):
            assert g[key] == pytest.approx(want[key]), (g[level], key)
        got_open = {(s, b): n for s, bs in g["open_alerts"].items() for b, n in bs.items() if n}
        assert got_open == want["open"]
        assert g["grade_mix"] == want["mix"]
        assert sorted(s["site"] for s in g["c_d_sites"]) == want["c_d"]
    csv_rows = rollup.to_csv_rows(groups)
    assert [r["unit"] for r in csv_rows] == [g[level] for g in groups]
    assert [r["rapid_test_pass_rate"] for r in csv_rows] == [g["rapid_test_pass_rate"] for g in groups]


def test_override_applies_is_shown_and_cleared(month: Any) -> None:
    cfg, truth, _, states = month
    worst = max(cfg.sites, key=lambda s: oracle_grade(cfg, truth, s, AS_OF)["points"])
    st = states[worst]
    ov = Override(
        site=worst, grade="B", reason="new cold room installed, re-inspected 3 Dec", by="Wang", at_ms=AS_OF - DAY_MS
    )
    st2 = evidence.fold(st, ov.model_dump())
    got = score.compute(st2, cfg.sites[worst], AS_OF)
    assert got.grade == "B" and got.computed in ("C", "D") and got.override == ov
    # before the override existed, the computed grade applied
    assert score.compute(st2, cfg.sites[worst], AS_OF - 2 * DAY_MS).grade == got.computed
    # a later clearing override (grade null) restores the computed grade; an older one does not win
    cleared = Override(site=worst, grade=None, reason="inspection expired", by="Wang", at_ms=AS_OF - 3_600_000)
    older = Override(site=worst, grade="A", reason="stale", by="Li", at_ms=AS_OF - 5 * DAY_MS)
    st3 = evidence.fold(evidence.fold(st2, cleared.model_dump()), older.model_dump())
    assert score.compute(st3, cfg.sites[worst], AS_OF).grade == got.computed
    groups = rollup.rollup({**states, worst: st2}, cfg, AS_OF, "day", "station")
    shown = [s for g in groups for s in g["c_d_sites"] if s["site"] == worst]
    assert not shown  # overridden to B: off the C/D list
    with pytest.raises(ValueError):
        Override(site=worst, grade="B", reason="", by="x", at_ms=1)  # a reason is required


def test_replay_is_deterministic_in_any_order_and_with_duplicates(month: Any) -> None:
    cfg, truth, events, states = month
    items = rapid_items(cfg, truth)
    again = evidence.fold_all(events, items)
    assert {k: evidence.to_bytes(v) for k, v in again.items()} == {k: evidence.to_bytes(v) for k, v in states.items()}
    rng = random.Random(5)
    shuffled = [*events, *rng.sample(events, len(events) // 5)]  # redelivered records
    rng.shuffle(shuffled)
    shuffled_items = [*items, *rng.sample(items, len(items) // 5)]
    rng.shuffle(shuffled_items)
    other = evidence.fold_all(shuffled, shuffled_items)
    for sid, st in states.items():
        assert other[sid].alerts == st.alerts, sid
        assert other[sid].tests == st.tests and len(st.tests) > 50, sid
    for st in states.values():
        assert evidence.from_bytes(evidence.to_bytes(st)) == st


def test_a_duplicate_returns_the_same_state_object(month: Any) -> None:
    _, _, events, _ = month
    st = evidence.fold(evidence.empty(events[0]["site"]), events[0])
    assert evidence.fold(st, events[0]) is st


def test_window_prunes_old_facts_but_keeps_open_ones() -> None:
    base = {
        "rule": "liveness.offline",
        "severity": "warning",
        "site": "S",
        "subject": "d",
        "notify": True,
        "evidence": {},
    }
    old_open = {
        **base,
        "alert_id": "al-1",
        "state": "open",
        "opened_at": "2026-01-01T00:00:00Z",
        "at_ms": evidence.iso_ms("2026-01-01T00:00:00Z"),
    }
    old_done = {
        **base,
        "alert_id": "al-2",
        "state": "resolved",
        "opened_at": "2026-01-02T00:00:00Z",
        "resolved_at": "2026-01-02T01:00:00Z",
        "at_ms": evidence.iso_ms("2026-01-02T01:00:00Z"),
    }
    later = evidence.iso_ms("2026-06-01T00:00:00Z")
    new = {**base, "alert_id": "al-3", "state": "open", "opened_at": "2026-06-01T00:00:00Z", "at_ms": later}
    st = evidence.empty("S")
    for e in (old_open, old_done, new):
        st = evidence.fold(st, e)
    assert set(st.alerts) == {"al-1", "al-3"}
    # an event about an alert older than the kept window is ignored, and counted
    st2 = evidence.fold(st, {**old_done, "alert_id": "al-4"})
    assert "al-4" not in st2.alerts and st2.ignored == 1


# -- the CLI's refusals and the JSON endpoint (no Kafka: the states are handed in) ----------------------------


def _site_file(tmp_path: Any) -> Any:
    from pipeline import serde

    path = tmp_path / "sites.json"
    path.write_bytes(serde.dumps(simulate.site_doc(3, seed=3)))
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["override", "S00000", "--reason", "because", "--by", "Wang"], "give --grade"),
        (["override", "S00000", "--grade", "B", "--clear", "--reason", "because", "--by", "W"], "give --grade"),
        (["override", "NOPE", "--grade", "B", "--reason", "because", "--by", "Wang"], "not in the site file"),
        (["override", "S00000", "--grade", "E", "--reason", "because", "--by", "Wang"], "grade"),
        (["override", "S00000", "--grade", "B", "--reason", "", "--by", "Wang"], "reason"),
        (["show", "NOPE"], "not in the site file"),
        (["rollup", "--level", "city"], "--level must be"),
        (["rollup", "--period", "year"], "--period must be"),
    ],
)
def test_cli_refuses_bad_input_with_a_clear_message(tmp_path: Any, args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, ["grade", *args, "--sites", str(_site_file(tmp_path))])
    assert result.exit_code != 0
    assert message in result.output, result.output


def test_cli_refuses_an_unusable_weights_file(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    bad = tmp_path / "w.json"
    bad.write_text('{"excursions": {"per_unit": -1, "cap": 3}}')
    result = CliRunner().invoke(
        app,
        [
            "grade",
            "show",
            "--sites",
            str(_site_file(tmp_path)),
            "--weights",
            str(bad),
            "--as-of",
            "2026-01-01T00:00:00Z",
        ],
    )
    assert result.exit_code != 0 and "not a usable weights file" in result.output


async def test_json_endpoint_serves_grades_and_rollups(month: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from pipeline.grading import http, store
    from pipeline.grading.topics import GradingTopics
    from pipeline.settings import Settings
    from pipeline.topics import Topics

    cfg, _, _, states = month

    async def fake_read(settings: Any, gt: Any) -> dict[str, evidence.SiteEvidence]:
        return states

    monkeypatch.setattr(store, "read_states", fake_read)
    app = http.make_web_app(Settings(), GradingTopics(Topics()), cfg, W, refresh_s=60)
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/v1/grades", params={"as_of": "2026-09-21T00:00:00Z"})
        assert r.status == 200
        body = await r.json()
        as_of = evidence.iso_ms("2026-09-21T00:00:00Z")
        assert [g["points"] for g in body] == [
            score.compute(states[s], cfg.sites[s], as_of).points for s in sorted(cfg.sites)
        ]
        r = await client.get("/v1/grades/S00003")
        assert (await r.json())["as_of_ms"] == max(s.watermark_ms for s in states.values())
        r = await client.get("/v1/rollup", params={"level": "district", "period": "week"})
        assert r.status == 200 and (await r.json())[0]["period"] == "week"
        assert (await client.get("/v1/grades/NOPE")).status == 404
        assert (await client.get("/v1/rollup", params={"level": "x"})).status == 400
        assert (await client.get("/v1/grades", params={"as_of": "yesterday"})).status == 400


def test_a_verdict_republication_is_not_a_transition() -> None:
    opened = evidence.iso_ms("2026-05-01T10:00:00Z")
    base = {
        "alert_id": "al-h",
        "rule": "kitchen.hygiene.no_hat",
        "severity": "warning",
        "site": "S",
        "subject": "S/k",
        "opened_at": "2026-05-01T10:00:00Z",
        "notify": True,
    }
    st = evidence.fold(evidence.empty("S"), {**base, "state": "open", "at_ms": opened, "evidence": {}})
    verdict_at = opened + 3_600_000
    st = evidence.fold(
        st,
        {
            **base,
            "state": "acknowledged",
            "at_ms": verdict_at,
            "evidence": {"verdict": "confirmed", "verdict_at": "2026-05-01T11:00:00Z"},
        },
    )
    f = st.alerts["al-h"]
    assert f.verdict == "confirmed" and f.verdict_ms == verdict_at and f.acked_ms is None and f.resolved_ms is None


def test_an_override_does_not_move_the_evidence_clock(month: Any) -> None:
    cfg, _, _, states = month
    sid = sorted(states)[0]
    later = Override(site=sid, grade="A", reason="made long after the month", by="Wang", at_ms=AS_OF + 400 * DAY_MS)
    st = evidence.fold(states[sid], later.model_dump())
    assert st.watermark_ms == states[sid].watermark_ms and st.override == later
    assert score.compute(st, cfg.sites[sid], AS_OF).grade == score.compute(states[sid], cfg.sites[sid], AS_OF).grade


def test_grading_worker_counters_are_exported_as_prometheus_metrics() -> None:
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from pipeline.agents.faust.continuity import AckGate, Continuity
    from pipeline.grading.app import GradingStats
    from pipeline.grading.metrics import GradingCollector

    stats = GradingStats(records=12, folded=7, unchanged=3, grades=4, dead_letters=2, ignored_sites=1, rapid_tests=5)
    continuity, gate = Continuity(), AckGate({"alerts"})
    continuity.rewinds, gate.refused = 6, 8
    gapp = SimpleNamespace(stats=stats, continuity=continuity, gate=gate)
    registry = CollectorRegistry()
    registry.register(GradingCollector(gapp))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    for name, value in [*vars(stats).items(), ("rewinds", 6), ("skip_acks_refused", 8)]:
        assert f"larder_grading_{name}_total {float(value)}" in text, name
    assert "# HELP larder_grading_dead_letters_total records or rapid-test items refused" in text
    # A worker that has not started its guards yet exports zeros, not an error.
    bare = CollectorRegistry()
    bare.register(GradingCollector(SimpleNamespace(stats=GradingStats(), continuity=None, gate=None)))  # type: ignore[arg-type]
    assert "larder_grading_rewinds_total 0.0" in generate_latest(bare).decode()
