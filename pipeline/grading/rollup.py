"""The regulator's rollup per station and per district for a day, a week or a month ending at ``as_of``.

Pure functions over the sites' folded evidence (:mod:`pipeline.grading.evidence`), the site file and the grades
(:mod:`pipeline.grading.score`). ``rollup(...)`` returns plain dicts (the JSON the CLI prints and the console
charts), ``to_csv_rows`` flattens them. Definitions are in ``docs/grading.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.grading.evidence import DAY_MS, GRADES, Facts, SiteEvidence, empty, rapid_tests_between
from pipeline.grading.score import (
    DEFAULT_WEIGHTS,
    HYGIENE_PREFIX,
    OFFLINE_RULE,
    SiteGrade,
    Weights,
    _as_of,
    compute,
    in_window,
    online_share,
    percentile,
)
from pipeline.siteconfig import SiteConfig

Period = Literal["day", "week", "month"]
PERIOD_MS: dict[str, int] = {"day": DAY_MS, "week": 7 * DAY_MS, "month": 30 * DAY_MS}
Level = Literal["station", "district"]
SEVERITIES = ("critical", "warning", "info")
#: Age buckets of open alerts (upper bounds in hours; the last is open-ended).
AGE_BUCKETS: tuple[tuple[str, float], ...] = (("<1h", 1), ("1-4h", 4), ("4-24h", 24), ("1-7d", 168), (">7d", 1e18))


def age_bucket(age_ms: int) -> str:
    hours = age_ms / 3_600_000
    for name, upper in AGE_BUCKETS:
        if hours < upper:
            return name
    return AGE_BUCKETS[-1][0]


@dataclass(frozen=True)
class SiteView:
    """What one site contributes to a rollup: its evidence as of the period's end and its grade then."""

    site_id: str
    facts: list[Facts]
    grade: SiteGrade
    online: float | None
    reporting: bool
    watched: int
    #: Initial rapid tests of the period (contract 6) and how many of them passed (negative).
    rapid_tests: int = 0
    rapid_passed: int = 0


def site_view(
    evidence: SiteEvidence,
    cfg: SiteConfig,
    site_id: str,
    as_of_ms: int,
    period_ms: int,
    weights: Weights = DEFAULT_WEIGHTS,
    grade: SiteGrade | None = None,
) -> SiteView:
    """``grade``: the site's grade as of ``as_of_ms`` if already computed (one grading serves every rollup)."""
    site = cfg.sites[site_id]
    facts = [_as_of(f, as_of_ms) for f in evidence.alerts.values() if f.opened_ms <= as_of_ms]
    if grade is None:
        grade = compute(evidence, site, as_of_ms, weights)
    end = as_of_ms + 1
    online = online_share(facts, site, end - period_ms, end)
    watched = set(site.devices) | set(site.cameras)
    offline_now = {f.subject for f in facts if f.rule == OFFLINE_RULE and f.resolved_ms is None}
    # Reporting: at least one of its registered devices/cameras is not inside an open offline alert at as_of.
    reporting = bool(watched - offline_now)
    tests, passed = rapid_tests_between(evidence, end - period_ms, end)
    return SiteView(site_id, facts, grade, online, reporting, len(watched), tests, passed)


def rollup(
    states: Mapping[str, SiteEvidence],
    cfg: SiteConfig,
    as_of_ms: int,
    period: Period = "day",
    level: Level = "station",
    weights: Weights = DEFAULT_WEIGHTS,
    grades: Mapping[str, SiteGrade] | None = None,
) -> list[dict[str, Any]]:
    """One dict per station (or district): every KPI of the period (as_of - period, as_of]. ``grades``: every
    site's grade as of ``as_of_ms``, when computed already (else each site is graded here: ~1.5 ms a site)."""
    period_ms = PERIOD_MS[period]
    groups: dict[str, list[SiteView]] = {}
    for site_id, site in sorted(cfg.sites.items()):
        key = (site.station if level == "station" else site.district) or "(none)"
        grade = grades.get(site_id) if grades is not None else None
        view = site_view(states.get(site_id) or empty(site_id), cfg, site_id, as_of_ms, period_ms, weights, grade)
        groups.setdefault(key, []).append(view)
    return [_group(level, key, views, as_of_ms, period, period_ms) for key, views in sorted(groups.items())]


def _group(level: str, key: str, views: list[SiteView], as_of_ms: int, period: str, period_ms: int) -> dict[str, Any]:
    start, end = as_of_ms + 1 - period_ms, as_of_ms + 1
    registered = len(views)
    reporting = sum(1 for v in views if v.reporting)
    watched_time = sum(v.watched for v in views if v.online is not None)
    online = sum(v.online * v.watched for v in views if v.online is not None) / watched_time if watched_time else None
    open_by: dict[str, dict[str, int]] = {s: {b: 0 for b, _ in AGE_BUCKETS} for s in SEVERITIES}
    ack_min: list[float] = []
    res_min: list[float] = []
    to_station = to_district = 0
    confirmed = judged = 0
    opened = 0
    for v in views:
        for f in v.facts:
            if f.resolved_ms is None and f.opened_ms <= as_of_ms and f.severity in open_by:
                open_by[f.severity][age_bucket(as_of_ms - f.opened_ms)] += 1
            if not in_window(f, start, end):
                continue
            opened += 1
            if f.acked_ms is not None:
                ack_min.append((f.acked_ms - f.opened_ms) / 60_000)
            if f.resolved_ms is not None:
                res_min.append((f.resolved_ms - f.opened_ms) / 60_000)
            to_station += f.reached_station
            to_district += f.reached_district
            if f.rule.startswith(HYGIENE_PREFIX) and f.verdict is not None:
                judged += 1
                confirmed += f.verdict == "confirmed"
    rapid = sum(v.rapid_tests for v in views)
    rapid_passed = sum(v.rapid_passed for v in views)
    mix = {g: 0 for g in GRADES}
    for v in views:
        mix[v.grade.grade] += 1
    cd = [
        {
            "site": v.site_id,
            "grade": v.grade.grade,
            "computed": v.grade.computed,
            "points": v.grade.points,
            "overridden": v.grade.override is not None,
            "top_factor": v.grade.top[0].factor if v.grade.top else None,
        }
        for v in sorted(views, key=lambda v: (-v.grade.points, v.site_id))
        if v.grade.grade in ("C", "D")
    ]
    return {
        "level": level,
        level: key,
        "period": period,
        "from_ms": start,
        "as_of_ms": as_of_ms,
        "sites": registered,
        "sites_reporting": reporting,
        "coverage": reporting / registered if registered else None,
        "online_share": online,
        "alerts_opened": opened,
        "open_alerts": open_by,
        "ack_min_median": percentile(ack_min, 0.5),
        "ack_min_p90": percentile(ack_min, 0.9),
        "resolve_min_median": percentile(res_min, 0.5),
        "resolve_min_p90": percentile(res_min, 0.9),
        "escalated_to_station": to_station,
        "escalated_to_district": to_district,
        "camera_alerts_judged": judged,
        "camera_confirmed_share": confirmed / judged if judged else None,
        "rapid_tests": rapid,
        "rapid_tests_passed": rapid_passed,
        "rapid_test_pass_rate": rapid_passed / rapid if rapid else None,
        "sites_rapid_tested": sum(1 for v in views if v.rapid_tests),
        "grade_mix": mix,
        "c_d_sites": cd,
    }


CSV_COLUMNS = (
    "level",
    "unit",
    "period",
    "from_ms",
    "as_of_ms",
    "sites",
    "sites_reporting",
    "coverage",
    "online_share",
    "alerts_opened",
    "ack_min_median",
    "ack_min_p90",
    "resolve_min_median",
    "resolve_min_p90",
    "escalated_to_station",
    "escalated_to_district",
    "camera_alerts_judged",
    "camera_confirmed_share",
    "rapid_tests",
    "rapid_tests_passed",
    "rapid_test_pass_rate",
    "sites_rapid_tested",
    "grade_A",
    "grade_B",
    "grade_C",
    "grade_D",
    "c_d_sites",
)


def to_csv_rows(groups: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per group; open alerts become ``open_<severity>_<bucket>`` columns."""
    rows = []
    for g in groups:
        row = {c: g.get(c) for c in CSV_COLUMNS}
        row["unit"] = g[g["level"]]
        for grade, n in g["grade_mix"].items():
            row[f"grade_{grade}"] = n
        row["c_d_sites"] = " ".join(f"{s['site']}:{s['grade']}" for s in g["c_d_sites"])
        for sev, buckets in g["open_alerts"].items():
            for bucket, n in buckets.items():
                row[f"open_{sev}_{bucket}"] = n
        rows.append(row)
    return rows
