"""The risk grade of a site as of an instant: static part (0-40) + dynamic part (0-60), A-D, explained.

Pure functions of the folded evidence (:mod:`pipeline.grading.evidence`), the site file and the weights; no I/O.
The formula, its sources and its caps are in ``docs/grading.md``; every number here is a field of
:class:`Weights`, so a district can tune them without code changes (``--weights weights.json``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from pipeline.contracts import rules as R
from pipeline.grading.evidence import DAY_MS, WINDOW_MS, Facts, Grade, Override, SiteEvidence
from pipeline.siteconfig import EscalationPolicy, Site

#: Cold-chain rules whose alerts are excursions (a temperature beyond a limit). Aggregates (MKT, cumulative
#: budget, rate of rise) describe the same excursions again, so they are not counted twice.
EXCURSION_RULES = frozenset({"coldchain.high", "coldchain.high_high", "coldchain.low", "coldchain.low_low"})
UNATTENDED_RULE = "kitchen.unattended"
PEST_RULES = frozenset({"kitchen.hygiene.rodent"})
HYGIENE_PREFIX = "kitchen.hygiene."
OFFLINE_RULE = "liveness.offline"
#: A failed rapid test (contract 6): a positive or suspect result opens ``rapidtest.positive`` for its sample; a
#: lab-confirmed positive opens ``rapidtest.confirmed``. ``rapidtest.recheck_overdue`` is the escalation of the
#: same failure (late handling counts it), so it does not count as another failed sample.
RAPID_FAILED_RULES = frozenset({R.RAPIDTEST_POSITIVE, R.RAPIDTEST_CONFIRMED})
RAPID_CONFIRMED_RULE = R.RAPIDTEST_CONFIRMED


class Factor(BaseModel):
    """``points = min(cap, per_unit x quantity)``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_unit: float = Field(ge=0)
    cap: float = Field(ge=0)


class Weights(BaseModel):
    """Every weight and cap of the grade (docs/grading.md). Defaults are the documented formula."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    static_cap: float = 40.0
    dynamic_cap: float = 60.0
    business: dict[str, float] = Field(
        default_factory=lambda: {
            "school_canteen": 20.0,
            "kindergarten_canteen": 20.0,
            "elderly_care_canteen": 18.0,
            "hospital_canteen": 18.0,
            "central_kitchen": 18.0,
            "group_meal_supplier": 16.0,
            "cold_store": 12.0,
            "restaurant": 10.0,
            "takeaway": 10.0,
            "retail": 6.0,
            "other": 8.0,
        }
    )
    #: Business type not entered yet: graded as ``other`` (and the explanation says it is missing).
    business_unknown: float = 8.0
    #: Scale points by diners per day (the larger of this and the floor-area points counts).
    diners_steps: list[tuple[float, float]] = Field(
        default_factory=lambda: [(1000.0, 10.0), (300.0, 6.0), (100.0, 3.0)]
    )
    area_steps: list[tuple[float, float]] = Field(default_factory=lambda: [(3000.0, 10.0), (500.0, 6.0), (150.0, 3.0)])
    scale_unknown: float = 1.0
    vulnerable: float = 10.0

    excursions: Factor = Factor(per_unit=1.5, cap=10.0)  # per excursion alert
    excursion_hours: Factor = Factor(per_unit=0.5, cap=6.0)  # per hour an excursion alert was open
    excursion_peak: Factor = Factor(per_unit=1.0, cap=4.0)  # per degree of the worst peak beyond its limit
    unattended: Factor = Factor(per_unit=2.0, cap=8.0)  # per unattended-stove episode (warning alert)
    hygiene: Factor = Factor(per_unit=2.0, cap=8.0)  # per confirmed violation per 100 service hours
    pests: Factor = Factor(per_unit=4.0, cap=8.0)  # per rodent alert not judged a false positive
    late_handling: Factor = Factor(per_unit=10.0, cap=10.0)  # x share of alerts not handled within the steps
    ack_median: Factor = Factor(per_unit=4.0 / 60.0, cap=4.0)  # per minute of the median time to ack
    offline: Factor = Factor(per_unit=20.0, cap=6.0)  # x share of device/camera time offline
    rapid_tests: Factor = Factor(per_unit=3.0, cap=9.0)  # per sample that failed a rapid test (positive/suspect)
    rapid_confirmed: Factor = Factor(per_unit=4.0, cap=8.0)  # per sample whose positive a lab confirmed

    #: How many alert ids an explanation names per factor, and how many factors it lists.
    ids_per_factor: int = 10
    top_factors: int = 5


DEFAULT_WEIGHTS = Weights()


def grade_of(points: float) -> Grade:
    """The 2016 grading measures' cut-offs: A <= 30, B <= 45, C <= 60, D above."""
    if points <= 30:
        return "A"
    if points <= 45:
        return "B"
    if points <= 60:
        return "C"
    return "D"


class Contribution(BaseModel):
    model_config = ConfigDict(frozen=True)

    factor: str
    points: float
    quantity: float
    detail: str
    alert_ids: list[str] = Field(default_factory=list)


class SiteGrade(BaseModel):
    """A site's grade as of ``as_of_ms``: the advisory computed grade, the override if any, the effective one."""

    model_config = ConfigDict(frozen=True)

    v: int = 1
    kind: str = "grade"
    site: str
    station: str
    district: str
    as_of_ms: int
    static_points: float
    dynamic_points: float
    points: float
    computed: Grade
    grade: Grade
    override: Override | None = None
    #: The explanation: the largest dynamic contributions (at most ``Weights.top_factors``, points > 0), each
    #: with the alert ids behind it.
    top: list[Contribution]
    #: Every contribution: dynamic ones by points (largest first), then the static ones.
    factors: list[Contribution]
    alerts_considered: int


@dataclass
class _Acc:
    contributions: list[Contribution] = field(default_factory=list)

    def add(self, name: str, f: Factor, quantity: float, detail: str, ids: list[str], limit: int) -> float:
        pts = round(min(f.cap, f.per_unit * quantity), 3)
        self.contributions.append(
            Contribution(factor=name, points=pts, quantity=quantity, detail=detail, alert_ids=ids[:limit])
        )
        return pts


def static_points(site: Site, w: Weights = DEFAULT_WEIGHTS) -> tuple[float, list[Contribution]]:
    g = site.grading
    out: list[Contribution] = []
    if g.business_type is None:
        out.append(
            Contribution(
                factor="business_type",
                points=w.business_unknown,
                quantity=0,
                detail="business type not entered (graded as other)",
            )
        )
    else:
        out.append(
            Contribution(
                factor="business_type",
                points=w.business.get(g.business_type, w.business_unknown),
                quantity=0,
                detail=g.business_type,
            )
        )
    by_diners = _step(g.diners_per_day, w.diners_steps)
    by_area = _step(g.floor_area_m2, w.area_steps)
    if g.diners_per_day is None and g.floor_area_m2 is None:
        out.append(Contribution(factor="scale", points=w.scale_unknown, quantity=0, detail="scale not entered"))
    else:
        out.append(
            Contribution(
                factor="scale",
                points=max(by_diners, by_area),
                quantity=0,
                detail=f"diners/day {g.diners_per_day}, floor area {g.floor_area_m2} m2",
            )
        )
    if g.vulnerable_consumers:
        out.append(
            Contribution(
                factor="vulnerable_consumers", points=w.vulnerable, quantity=0, detail=", ".join(g.vulnerable_consumers)
            )
        )
    return min(w.static_cap, sum(c.points for c in out)), out


def _step(value: float | None, steps: list[tuple[float, float]]) -> float:
    if value is None:
        return 0.0
    for threshold, pts in steps:
        if value >= threshold:
            return pts
    return 0.0


def handled_deadline_ms(f: Facts, policy: EscalationPolicy) -> int:
    """The alert was handled within its escalation steps if acked or resolved by the last step's time."""
    steps = policy.critical if f.severity == "critical" else policy.warning
    last_min = max((s.after_min for s in steps), default=0.0)
    return f.opened_ms + int(last_min * 60_000)


def service_hours_per_day(site: Site) -> float:
    """Sum over the site's kitchens of their daily service hours (a kitchen without any: 24 h)."""
    total = 0.0
    for k in site.kitchens.values():
        if not k.service_hours:
            total += 24.0
            continue
        for w in k.service_hours:
            a = w.start.hour * 60 + w.start.minute
            b = w.end.hour * 60 + w.end.minute
            total += ((b - a) % 1440 or (1440 if a == b else 0)) / 60.0
    return total


def offline_ms(f: Facts, start_ms: int, end_ms: int) -> int:
    """Time a ``liveness.offline`` alert overlaps [start, end)."""
    stop = f.resolved_ms if f.resolved_ms is not None else end_ms
    return max(0, min(stop, end_ms) - max(f.opened_ms, start_ms))


def online_share(facts: list[Facts], site: Site, start_ms: int, end_ms: int) -> float | None:
    """Share of device (and camera) time in [start, end) not inside an offline alert; None: nothing to watch."""
    watched = set(site.devices) | set(site.cameras)
    if not watched or end_ms <= start_ms:
        return None
    off = sum(offline_ms(f, start_ms, end_ms) for f in facts if f.rule == OFFLINE_RULE and f.subject in watched)
    return 1.0 - off / (len(watched) * (end_ms - start_ms))


def median(values: list[float]) -> float | None:
    """Nearest-rank median (the value itself, never an interpolation; documented)."""
    return percentile(values, 0.5)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile: the ceil(q x n)-th smallest value."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def in_window(f: Facts, start_ms: int, end_ms: int) -> bool:
    return start_ms <= f.opened_ms < end_ms


def compute(
    evidence: SiteEvidence,
    site: Site,
    as_of_ms: int,
    w: Weights = DEFAULT_WEIGHTS,
) -> SiteGrade:
    """The grade of ``site`` from the alerts opened in (as_of - 90 days, as_of] and what happened to them by
    ``as_of`` (acks and resolutions after it are not known yet as of then: a replay gives the same history)."""
    start = as_of_ms - WINDOW_MS
    end = as_of_ms + 1
    # Each alert as it stood at as_of: later acks, resolutions and verdicts do not exist yet.
    facts = [_as_of(f, as_of_ms) for f in evidence.alerts.values() if f.opened_ms <= as_of_ms]
    recent = sorted((f for f in facts if in_window(f, start, end)), key=lambda f: (f.opened_ms, f.alert_id))
    st_pts, static = static_points(site, w)
    acc = _Acc()
    n = w.ids_per_factor

    exc = [f for f in recent if f.rule in EXCURSION_RULES]
    retro = sum(1 for f in exc if f.retrospective)
    acc.add(
        "excursions",
        w.excursions,
        len(exc),
        f"{len(exc)} excursion alerts ({retro} retrospective)",
        [f.alert_id for f in exc],
        n,
    )
    durations = {f.alert_id: (f.resolved_ms if f.resolved_ms is not None else as_of_ms) - f.opened_ms for f in exc}
    hours = sum(durations.values()) / 3_600_000
    longest = sorted(exc, key=lambda f: (-durations[f.alert_id], f.alert_id))
    acc.add(
        "excursion_hours", w.excursion_hours, round(hours, 3), f"{hours:.1f} h open", [f.alert_id for f in longest], n
    )
    peak = max((f.beyond for f in exc), default=0.0)
    worst = sorted((f for f in exc if f.beyond > 0), key=lambda f: (-f.beyond, f.alert_id))
    acc.add(
        "excursion_peak",
        w.excursion_peak,
        round(peak, 3),
        f"worst {peak:.1f} °C beyond the limit",
        [f.alert_id for f in worst],
        n,
    )

    una = [f for f in recent if f.rule == UNATTENDED_RULE and f.severity == "warning"]
    acc.add("unattended", w.unattended, len(una), f"{len(una)} unattended-stove episodes", [f.alert_id for f in una], n)

    hyg = [
        f for f in recent if f.rule.startswith(HYGIENE_PREFIX) and f.rule not in PEST_RULES and f.verdict == "confirmed"
    ]
    hours_service = service_hours_per_day(site) * (WINDOW_MS / DAY_MS)
    rate = 100.0 * len(hyg) / hours_service if hours_service > 0 else 0.0
    acc.add(
        "hygiene",
        w.hygiene,
        round(rate, 4),
        f"{len(hyg)} confirmed violations in {hours_service:.0f} service hours",
        [f.alert_id for f in hyg],
        n,
    )

    pests = [f for f in recent if f.rule in PEST_RULES and f.verdict != "false_positive"]
    acc.add("pests", w.pests, len(pests), f"{len(pests)} pest sightings", [f.alert_id for f in pests], n)

    notified = [f for f in recent if f.notify and f.severity in ("warning", "critical")]
    # Deadline = opening + the last step's after_min of its severity; an alert whose deadline is still ahead
    # and that is not handled yet is not late (yet).
    last_ms = {
        sev: int(max((st.after_min for st in steps), default=0.0) * 60_000)
        for sev, steps in (("critical", site.escalation.critical), ("warning", site.escalation.warning))
    }
    late = []
    for f in notified:
        deadline = f.opened_ms + last_ms["critical" if f.severity == "critical" else "warning"]
        if deadline <= as_of_ms:
            handled = _handled_ms(f)
            if handled is None or handled > deadline:
                late.append(f)
    share_late = len(late) / len(notified) if notified else 0.0
    acc.add(
        "late_handling",
        w.late_handling,
        round(share_late, 4),
        f"{len(late)} of {len(notified)} alerts not acknowledged or resolved within the escalation steps",
        [f.alert_id for f in late],
        n,
    )

    ack_min = [((f.acked_ms - f.opened_ms) / 60_000, f.alert_id) for f in notified if f.acked_ms is not None]
    med = median([m for m, _ in ack_min])
    slow = [aid for m, aid in sorted(ack_min, key=lambda t: (-t[0], t[1])) if med is not None and m >= med]
    acc.add(
        "ack_median",
        w.ack_median,
        round(med or 0.0, 3),
        "no acknowledgements" if med is None else f"median {med:.1f} min to acknowledge",
        slow,
        n,
    )

    failed, confirmed = rapid_test_failures(recent)
    acc.add(
        "rapid_tests",
        w.rapid_tests,
        len(failed),
        f"{len(failed)} samples failed a rapid test (positive or suspect)",
        [f.alert_id for f in failed],
        n,
    )
    acc.add(
        "rapid_confirmed",
        w.rapid_confirmed,
        len(confirmed),
        f"{len(confirmed)} rapid-test positives confirmed by a lab",
        [f.alert_id for f in confirmed],
        n,
    )

    share = online_share(facts, site, max(start, 0), end)
    off = [f for f in facts if f.rule == OFFLINE_RULE and offline_ms(f, start, end) > 0]
    off.sort(key=lambda f: (-offline_ms(f, start, end), f.alert_id))
    acc.add(
        "offline",
        w.offline,
        round(1.0 - share, 6) if share is not None else 0.0,
        "no devices or cameras" if share is None else f"online {100 * share:.2f}% of the time",
        [f.alert_id for f in off],
        n,
    )

    dyn = min(w.dynamic_cap, round(sum(c.points for c in acc.contributions), 3))
    points = round(st_pts + dyn, 3)
    computed = grade_of(points)
    ov = evidence.override if evidence.override and evidence.override.at_ms <= as_of_ms else None
    effective = ov.grade if ov is not None and ov.grade is not None else computed
    dynamic = sorted(acc.contributions, key=lambda c: (-c.points, c.factor))
    return SiteGrade(
        site=evidence.site,
        station=site.station,
        district=site.district,
        as_of_ms=as_of_ms,
        static_points=st_pts,
        dynamic_points=dyn,
        points=points,
        computed=computed,
        grade=effective,
        override=ov if ov is not None and ov.grade is not None else None,
        top=[c for c in dynamic if c.points > 0][: w.top_factors],
        factors=[*dynamic, *static],
        alerts_considered=len(recent),
    )


def rapid_test_failures(facts: list[Facts]) -> tuple[list[Facts], list[Facts]]:
    """The samples that failed a rapid test and those a lab confirmed, each as its first such alert (by opening
    time, then id); ``facts`` in opening order. A sample is the alerts' subject (``<site>/<sample id>``): an
    initial positive, its positive recheck and its lab confirmation are one failed sample, not three."""
    failed: dict[str, Facts] = {}
    confirmed: dict[str, Facts] = {}
    for f in sorted(facts, key=lambda f: (f.opened_ms, f.alert_id)):
        if f.rule in RAPID_FAILED_RULES:
            failed.setdefault(f.subject, f)
        if f.rule == RAPID_CONFIRMED_RULE:
            confirmed.setdefault(f.subject, f)
    return list(failed.values()), list(confirmed.values())


def _handled_ms(f: Facts) -> int | None:
    if f.acked_ms is None:
        return f.resolved_ms
    if f.resolved_ms is None:
        return f.acked_ms
    return min(f.acked_ms, f.resolved_ms)


def _as_of(f: Facts, as_of_ms: int) -> Facts:
    """The facts as known at ``as_of``: an ack, resolution or verdict after it had not happened yet."""
    acked = f.acked_ms if f.acked_ms is not None and f.acked_ms <= as_of_ms else None
    resolved = f.resolved_ms if f.resolved_ms is not None and f.resolved_ms <= as_of_ms else None
    verdict = f.verdict if f.verdict_ms <= as_of_ms else None
    if acked == f.acked_ms and resolved == f.resolved_ms and verdict == f.verdict:
        return f
    from dataclasses import replace

    return replace(f, acked_ms=acked, resolved_ms=resolved, verdict=verdict)


def day_start_ms(ms: int, tz: str) -> int:
    """Midnight (site-local) of the day containing ``ms``, in epoch ms: daily grades are as of local midnight."""
    local = datetime.fromtimestamp(ms / 1000, ZoneInfo(tz))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return int(midnight.timestamp()) * 1000


def daily(state: SiteEvidence, site: Site, w: Weights = DEFAULT_WEIGHTS) -> tuple[SiteEvidence, list[SiteGrade]]:
    """The daily grade record: once the site's event time passes a site-local midnight, its grade as of the end
    of the previous day (``midnight - 1 ms``), once per midnight (``graded_ms`` remembers the last one).

    A pure step after :func:`pipeline.grading.evidence.fold`; the streaming adapter publishes the records
    (grade history). A day with no event at the site gets its record with the next event; the grade of any
    instant can always be computed on demand from the evidence (``larder grade show --as-of``)."""
    midnight = day_start_ms(state.watermark_ms, site.timezone)
    if state.watermark_ms == 0 or midnight <= state.graded_ms:
        return state, []
    from dataclasses import replace

    return replace(state, graded_ms=midnight), [compute(state, site, midnight - 1, w)]
