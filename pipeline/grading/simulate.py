"""A seeded month of alert lifecycle events for many sites with different histories, with its ground truth.

For the grading tests and benchmark: the detectors and the notifier would take hours to produce a month of
alerts for 10,000 sites, and what grading consumes is exactly their output on the alerts topic. Each simulated
alert has a truth row (:class:`TruthAlert`: when it opened, was acknowledged and resolved, how far beyond the
limit, which escalation steps it entered, its verdict), and :func:`events` renders the records the detectors and
the notifier would have published for it (``open``, ``escalated`` per step entered, ``acknowledged``,
``resolved``, a verdict republication), in arrival order: a retrospective alert (store-and-forward data)
arrives hours after its own event times.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from pipeline.contracts import rules as R
from pipeline.grading.evidence import DAY_MS
from pipeline.schemas import alert_id, ms_to_iso
from pipeline.siteconfig import EscalationPolicy, SiteConfig

MIN_MS = 60_000


@dataclass(frozen=True)
class Behaviour:
    """How a site's history is drawn: rates per day and how fast people react."""

    name: str
    excursions_per_day: float
    unattended_per_day: float
    hygiene_per_day: float
    rodents_per_day: float
    offline_per_day: float
    ack_prob: float
    ack_median_min: float
    confirm_prob: float = 0.7
    #: Samples failing a rapid test (positive or suspect, contract 6) per day.
    rapid_failed_per_day: float = 0.0


BEHAVIOURS: dict[str, Behaviour] = {
    "exemplary": Behaviour("exemplary", 0.05, 0.02, 0.05, 0.0, 0.03, 0.98, 4, rapid_failed_per_day=0.0),
    "average": Behaviour("average", 0.3, 0.15, 0.3, 0.01, 0.15, 0.85, 20, rapid_failed_per_day=0.05),
    "sloppy": Behaviour("sloppy", 0.8, 0.5, 1.0, 0.05, 0.4, 0.5, 70, rapid_failed_per_day=0.1),
    "neglected": Behaviour("neglected", 1.5, 1.0, 2.0, 0.15, 1.0, 0.2, 180, rapid_failed_per_day=0.25),
}


@dataclass
class TruthAlert:
    alert_id: str
    rule: str
    severity: str
    site: str
    subject: str
    opened_ms: int
    resolved_ms: int | None
    acked_ms: int | None = None
    notify: bool = True
    limit: float | None = None
    peak: float | None = None
    retrospective: bool = False
    arrives_ms: int = 0
    verdict: str | None = None
    verdict_ms: int | None = None
    #: (step index >= 1, deadline ms, roles) of each escalation step entered.
    steps: list[tuple[int, int, list[str]]] = field(default_factory=list)

    @classmethod
    def of(
        cls, rule: str, severity: str, site: str, subject: str, opened_ms: int, resolved_ms: int | None, **more: Any
    ) -> TruthAlert:
        """The alert with the id the detector gives it (rule, subject, opening time)."""
        return cls(alert_id(rule, subject, opened_ms), rule, severity, site, subject, opened_ms, resolved_ms, **more)


def site_config(n_sites: int, seed: int = 7, devices: int = 3, cameras: int = 1) -> SiteConfig:
    """``n_sites`` sites over stations of 5 sites and districts of 4 stations, with varied static facts."""
    return SiteConfig.model_validate(site_doc(n_sites, seed, devices, cameras))


def site_doc(n_sites: int, seed: int = 7, devices: int = 3, cameras: int = 1) -> dict[str, Any]:
    """The site file (contract 5) of :func:`site_config`, as a document to write out as JSON."""
    rng = random.Random(seed)
    types = ["school_canteen", "restaurant", "cold_store", "hospital_canteen", "retail", "central_kitchen", None]
    sites: dict[str, Any] = {}
    for i in range(n_sites):
        sid = f"S{i:05d}"
        station = f"ST{i // 5:04d}"
        g: dict[str, Any] = {}
        btype = types[i % len(types)]
        if btype:
            g["business_type"] = btype
        if i % 3 == 0:
            g["diners_per_day"] = rng.choice([50, 150, 400, 1500])
        elif i % 3 == 1:
            g["floor_area_m2"] = rng.choice([80.0, 200.0, 800.0, 4000.0])
        if btype in ("school_canteen", "hospital_canteen") or i % 11 == 0:
            g["vulnerable_consumers"] = ["students"] if btype == "school_canteen" else ["patients"]
        sites[sid] = {
            "station": station,
            "district": f"D{i // 20:03d}",
            "assets": {"a1": {"profile": "chilled"}},
            "devices": {f"{sid}-d{j}": {"asset": "a1", "secret": "s3cret-s3cret"} for j in range(devices)},
            "kitchens": {f"{sid}-k1": {"service_hours": ["06:00-14:00", "16:00-20:00"]}},
            "cameras": {f"{sid}-c{j}": {"kitchen": f"{sid}-k1", "secret": "s3cret-s3cret"} for j in range(cameras)},
            "grading": g,
        }
    return {"version": 1, "sites": sites}


def behaviour_of(site_index: int) -> Behaviour:
    order = ["exemplary", "average", "average", "sloppy", "neglected"]
    return BEHAVIOURS[order[site_index % len(order)]]


def _steps(severity: str, policy: EscalationPolicy) -> list[tuple[float, list[str]]]:
    steps = policy.critical if severity == "critical" else policy.warning
    return [(s.after_min, list(s.roles)) for s in steps]


def simulate(cfg: SiteConfig, start_ms: int, days: int = 30, seed: int = 1) -> list[TruthAlert]:
    """Every alert of ``days`` days from ``start_ms`` at every site of ``cfg``, drawn per site's behaviour."""
    rng = random.Random(seed)
    truth: list[TruthAlert] = []
    end_ms = start_ms + days * DAY_MS
    for index, (sid, site) in enumerate(sorted(cfg.sites.items())):
        b = behaviour_of(index)
        devs = sorted(site.devices)
        kitchen = f"{sid}/{sid}-k1"
        made: list[TruthAlert] = []

        def draw(rate: float) -> list[int]:
            n = _poisson(rng, rate * days)
            return sorted(start_ms + rng.randrange(days * DAY_MS) for _ in range(n))

        for t in draw(b.excursions_per_day):
            dev = rng.choice(devs)
            critical = rng.random() < 0.3
            rule, limit = ("coldchain.high_high", 12.0) if critical else ("coldchain.high", 8.0)
            dur = rng.randrange(10, 600) * MIN_MS
            a = TruthAlert.of(
                rule,
                "critical" if critical else "warning",
                sid,
                dev,
                t,
                t + dur,
                limit=limit,
                peak=round(limit + rng.uniform(0.3, 6.0), 1),
            )
            a.retrospective = rng.random() < 0.15
            made.append(a)
        for t in draw(b.unattended_per_day):
            dur = rng.randrange(1, 40) * MIN_MS
            made.append(TruthAlert.of("kitchen.unattended", "warning", sid, kitchen, t, t + dur))
            if dur > 10 * MIN_MS:  # the critical alert of the same episode (critical_min 15 after its start)
                tc = t + 10 * MIN_MS
                made.append(TruthAlert.of("kitchen.unattended", "critical", sid, kitchen, tc, t + dur))
        for rule, rate, sev in (
            ("kitchen.hygiene.no_hat", b.hygiene_per_day, "warning"),
            ("kitchen.hygiene.rodent", b.rodents_per_day, "critical"),
        ):
            for t in draw(rate):
                a = TruthAlert.of(rule, sev, sid, kitchen, t, t + 10 * MIN_MS)
                r = rng.random()
                if r < 0.85:
                    a.verdict = "confirmed" if rng.random() < b.confirm_prob else "false_positive"
                    a.verdict_ms = t + rng.randrange(5, 600) * MIN_MS
                made.append(a)
        for t in draw(b.offline_per_day):
            dev = rng.choice(devs)
            dur = rng.randrange(5, 900) * MIN_MS
            resolved: int | None = t + dur
            if t + dur > end_ms:
                resolved = None  # still offline at the end of the month
            made.append(TruthAlert.of("liveness.offline", "warning", sid, dev, t, resolved))
        for a in made:
            if rng.random() < b.ack_prob:
                delay = max(0.2, rng.expovariate(1.0 / b.ack_median_min) * 1.44)
                a.acked_ms = a.opened_ms + int(delay * MIN_MS)
            handled = min(x for x in (a.acked_ms, a.resolved_ms, end_ms + 365 * DAY_MS) if x is not None)
            for i, (after, roles) in enumerate(_steps(a.severity, site.escalation)):
                deadline = a.opened_ms + int(after * MIN_MS)
                if i >= 1 and deadline < handled and deadline < end_ms:
                    a.steps.append((i, deadline, roles))
            a.arrives_ms = a.opened_ms + (6 * 3_600_000 if a.retrospective else 0)
        truth.extend(made)
        # Rapid tests from a generator of their own, so the other draws (and every test built on them) stay as
        # they were before rapid tests existed.
        truth.extend(_rapid_tests(sid, site, b, start_ms, days, random.Random(f"{seed}/{sid}/rapid")))
    # Two alerts of one subject opening at one instant would share an id; keep the first.
    seen: set[str] = set()
    unique = []
    for a in truth:
        if a.alert_id not in seen:
            seen.add(a.alert_id)
            unique.append(a)
    return unique


def _rapid_tests(sid: str, site: Any, b: Behaviour, start_ms: int, days: int, rng: random.Random) -> list[TruthAlert]:
    """Failed rapid tests (the ``rapidtest.*`` alerts the detector would open): per failed sample a
    ``rapidtest.positive`` (warning) at the test; then a negative recheck within 1-3 h resolves it (half), or no
    recheck comes within 4 h and ``rapidtest.recheck_overdue`` (critical) opens, resolved by the recheck 5-8 h
    after the test (a quarter), or a lab confirms it 5-24 h after the test: ``rapidtest.positive`` resolves
    and ``rapidtest.confirmed`` (critical) opens, resolved by the disposition an hour later (a quarter)."""
    end_ms = start_ms + days * DAY_MS
    made: list[TruthAlert] = []
    n = _poisson(rng, b.rapid_failed_per_day * days)
    for i, t in enumerate(sorted(start_ms + rng.randrange(days * DAY_MS) for _ in range(n))):
        sample = f"{sid}/RT{i:04d}"
        fate = rng.random()
        if fate < 0.5:
            recheck = t + rng.randrange(60, 180) * MIN_MS
            made.append(TruthAlert.of(R.RAPIDTEST_POSITIVE, "warning", sid, sample, t, recheck))
        elif fate < 0.75:
            recheck = t + rng.randrange(300, 480) * MIN_MS
            due = t + 240 * MIN_MS
            made.append(TruthAlert.of(R.RAPIDTEST_POSITIVE, "warning", sid, sample, t, recheck))
            made.append(TruthAlert.of(R.RAPIDTEST_RECHECK_OVERDUE, "critical", sid, sample, due, recheck))
        else:
            lab = t + rng.randrange(300, 1440) * MIN_MS
            made.append(TruthAlert.of(R.RAPIDTEST_POSITIVE, "warning", sid, sample, t, lab))
            made.append(TruthAlert.of(R.RAPIDTEST_CONFIRMED, "critical", sid, sample, lab, lab + 60 * MIN_MS))
    made = [a for a in made if a.opened_ms < end_ms]  # an overdue recheck or a lab result after the period
    for a in made:
        if rng.random() < b.ack_prob:
            a.acked_ms = a.opened_ms + int(max(0.2, rng.expovariate(1.0 / b.ack_median_min) * 1.44) * MIN_MS)
        handled = min(x for x in (a.acked_ms, a.resolved_ms, end_ms + 365 * DAY_MS) if x is not None)
        for i, (after, roles) in enumerate(_steps(a.severity, site.escalation)):
            deadline = a.opened_ms + int(after * MIN_MS)
            if i >= 1 and deadline < handled and deadline < end_ms:
                a.steps.append((i, deadline, roles))
        a.arrives_ms = a.opened_ms
    return made


def rapid_results(
    cfg: SiteConfig,
    truth: list[TruthAlert],
    start_ms: int,
    days: int = 30,
    seed: int = 1,
    tests_per_day: float = 4.0,
    duplicates: float = 0.1,
) -> list[dict[str, Any]]:
    """The rapid-tests topic's items (contract 6 results as the hooks enrich them) behind ``truth``: per site
    about ``tests_per_day`` negative initial results; per failed sample of ``truth`` its positive or suspect
    initial result at the ``rapidtest.positive`` opening, then a negative recheck when that alert resolved, or a
    positive lab result when ``rapidtest.confirmed`` opened. A share ``duplicates`` of the results is delivered
    twice (an instrument's retry after a lost answer: the same ``result_id``). In arrival order."""
    rng = random.Random(seed)
    confirmed = {a.subject: a.opened_ms for a in truth if a.rule == "rapidtest.confirmed"}
    failed: dict[str, list[TruthAlert]] = {}
    for a in truth:
        if a.rule == "rapidtest.positive":
            failed.setdefault(a.site, []).append(a)
    out: list[dict[str, Any]] = []
    for sid in sorted(cfg.sites):
        instrument = f"{sid}-rt1"
        made: list[tuple[int, str, str, str]] = []  # (tested at, sample, result, stage)
        n = _poisson(rng, tests_per_day * days)
        for i, t in enumerate(sorted(start_ms + rng.randrange(days * DAY_MS) for _ in range(n))):
            made.append((t, f"N{i:05d}", "negative", "initial"))
        for a in failed.get(sid, []):
            sample = a.subject.split("/", 1)[1]
            made.append((a.opened_ms, sample, rng.choice(("positive", "suspect")), "initial"))
            if a.subject in confirmed:
                made.append((confirmed[a.subject], sample, "positive", "lab_confirmed"))
            elif a.resolved_ms is not None:
                made.append((a.resolved_ms, sample, "negative", "recheck"))
        made.sort()
        for i, (t, sample, result, stage) in enumerate(made):
            received = t + rng.randrange(1_000, 120_000)
            item: dict[str, Any] = {
                "instrument": instrument,
                "instrument_type": "enzyme_inhibition",
                "site": sid,
                "result_id": f"{instrument}-{i:05d}",
                "sample_id": sample,
                "sample_name": "菠菜",
                "food_category": "vegetable",
                "test_item": "organophosphate/carbamate",
                "method": "GB/T 5009.199",
                "result_type": "qualitative",
                "result": result,
                "stage": stage,
                "operator": "检测员",
                "ts_ms": t,
                "received_ms": received,
            }
            out.append(item)
            if rng.random() < duplicates:
                out.append({**item, "received_ms": received + rng.randrange(1_000, 600_000)})
    out.sort(key=lambda d: (d["received_ms"], d["site"], d["result_id"]))
    return out


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth for small means, normal approximation above (rates here are at most ~60 a month).
    if lam > 50:
        return max(0, round(rng.gauss(lam, lam**0.5)))
    limit, k, p = pow(2.718281828459045, -lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def events(truth: list[TruthAlert], until_ms: int | None = None) -> list[dict[str, Any]]:
    """The alerts-topic records of every truth alert, in arrival order (ties by alert id and transition)."""
    out: list[tuple[int, str, int, dict[str, Any]]] = []
    for a in truth:
        base = {
            "alert_id": a.alert_id,
            "rule": a.rule,
            "severity": a.severity,
            "site": a.site,
            "subject": a.subject,
            "opened_at": ms_to_iso(a.opened_ms),
            "notify": a.notify,
        }
        ev: dict[str, Any] = {}
        if a.limit is not None:
            ev = {"limit": a.limit, "value": round(a.limit + 0.2, 1)}
        if a.retrospective:
            ev["retrospective"] = True
        delay = a.arrives_ms - a.opened_ms

        def rec(
            seq: int,
            state: str,
            at: int,
            evidence: dict[str, Any],
            resolved: int | None = None,
            base: dict[str, Any] = base,
            delay: int = delay,
            aid: str = a.alert_id,
        ) -> None:
            r = {
                **base,
                "state": state,
                "at_ms": at,
                "resolved_at": ms_to_iso(resolved) if resolved else None,
                "evidence": evidence,
            }
            out.append((at + delay, aid, seq, r))

        rec(0, "open", a.opened_ms, ev)
        for i, deadline, roles in a.steps:
            rec(i, "escalated", deadline, {"step": i, "roles": roles})
        if a.acked_ms is not None:
            rec(50, "acknowledged", a.acked_ms, {"by": "someone", "via": "link", "note": "moved the stock"})
        if a.resolved_ms is not None:
            end_ev = dict(ev)
            if a.peak is not None:
                end_ev["peak"] = a.peak
            rec(60, "resolved", a.resolved_ms, end_ev, a.resolved_ms)
        if a.verdict is not None and a.verdict_ms is not None:
            rec(
                70,
                "resolved",
                a.verdict_ms,
                {"verdict": a.verdict, "verdict_at": ms_to_iso(a.verdict_ms), "verdict_by": "inspector"},
                a.resolved_ms,
            )
    out.sort(key=lambda t: (t[0], t[1], t[2]))
    return [r for arrives, _, _, r in out if until_ms is None or arrives <= until_ms]
