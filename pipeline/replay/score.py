"""Score an alert timeline against a simulator's ground truth: per-rule precision, recall and detection delay.

Pure functions, no I/O. Matching rules (documented in docs/simulators.md):

* A truth is **detected** by an ``open`` alert of the same rule, site and subject whose opening event time lies
  in ``[truth.opened_at - tolerance, truth.opened_at + max_delay + tolerance]``; ``max_delay`` is the rule's
  delay (the truth line's ``max_delay_s``, or ``delays[rule]``). Each alert detects at most one truth.
* An unmatched alert on a subject in the same rule family (``coldchain``, ``liveness``, ``kitchen``) that
  opens while one of that subject's true conditions of the family holds (or up to that truth's delay, at least
  10 min, before its onset) is **corroborating** -- a critical level or a rate-of-rise rule firing during or
  just ahead of a true excursion: not a false positive, not a detection.
* Every other alert is a **false positive**; every undetected truth a **miss**.
* Detection delay = alert ``opened_at`` - truth ``opened_at`` (event time).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.contracts.models import Alert, AlertState, ts_to_ms
from pipeline.contracts.replay import Truth


@dataclass
class RuleScore:
    rule: str
    truths: int = 0
    detected: int = 0
    false_positives: int = 0
    corroborating: int = 0
    delays_s: list[float] = field(default_factory=list)
    resolved_ok: int = 0
    resolved_expected: int = 0

    @property
    def precision(self) -> float:
        hits = self.detected
        return hits / (hits + self.false_positives) if hits + self.false_positives else 1.0

    @property
    def recall(self) -> float:
        return self.detected / self.truths if self.truths else 1.0

    @property
    def mean_delay_s(self) -> float | None:
        return sum(self.delays_s) / len(self.delays_s) if self.delays_s else None

    @property
    def max_delay_s(self) -> float | None:
        return max(self.delays_s) if self.delays_s else None


@dataclass
class Match:
    truth: Truth
    alert: Alert | None
    delay_s: float | None
    resolved_at_ms: int | None = None


@dataclass
class Score:
    rules: dict[str, RuleScore]
    matches: list[Match]
    false_positives: list[Alert]
    corroborating: list[Alert]

    @property
    def misses(self) -> list[Truth]:
        return [m.truth for m in self.matches if m.alert is None]

    @property
    def perfect(self) -> bool:
        return not self.misses and not self.false_positives


#: How long before a true condition's onset a same-family alert still counts as corroborating it.
EARLY_WARNING_MS = 10 * 60_000


def subject_of(alert: Alert) -> str:
    """Kitchen alerts name their subject ``<site>/<kitchen>``; the truth names the kitchen."""
    return alert.subject.rsplit("/", 1)[-1]


def family(rule: str) -> str:
    return rule.split(".", 1)[0]


def score(
    truth: Iterable[Truth],
    alerts: Iterable[Alert],
    *,
    delays: dict[str, float] | None = None,
    tolerance_s: float = 2.0,
) -> Score:
    delays = delays or {}
    tol = int(tolerance_s * 1000)
    events = list(alerts)
    # An alert that late data withdrew (docs/rules.md, "Late data") was never a finding; an id opened again by
    # late data is one alert.
    withdrawn = {a.alert_id for a in events if a.evidence.get("withdrawn")}
    first_open: dict[str, Alert] = {}
    for a in events:
        if a.state is AlertState.OPEN and a.alert_id not in withdrawn:
            first_open.setdefault(a.alert_id, a)
    opens = sorted(first_open.values(), key=lambda a: (a.at_ms, a.alert_id))
    resolved_at = {a.alert_id: a.at_ms for a in events if a.state is AlertState.RESOLVED}
    truths = sorted(truth, key=lambda t: (t.opened_at_ms, t.rule, t.subject))
    rules: dict[str, RuleScore] = {}
    used: set[str] = set()
    matches: list[Match] = []
    for t in truths:
        rs = rules.setdefault(t.rule, RuleScore(t.rule))
        rs.truths += 1
        max_delay = int((t.max_delay_s or delays.get(t.rule, 0.0)) * 1000)
        best: Alert | None = None
        for a in opens:
            if a.alert_id in used or a.rule != t.rule or not _same_subject(a, t):
                continue
            if t.opened_at_ms - tol <= _opened_ms(a) <= t.opened_at_ms + max_delay + tol:
                best = a
                break
        if best is None:
            matches.append(Match(t, None, None))
            continue
        used.add(best.alert_id)
        delay = (_opened_ms(best) - t.opened_at_ms) / 1000
        rs.detected += 1
        rs.delays_s.append(delay)
        res = resolved_at.get(best.alert_id)
        if t.resolved_at_ms is not None:
            rs.resolved_expected += 1
            rs.resolved_ok += res is not None
        matches.append(Match(t, best, delay, res))
    fps: list[Alert] = []
    corr: list[Alert] = []
    for a in opens:
        if a.alert_id in used:
            continue
        rs = rules.setdefault(a.rule, RuleScore(a.rule))
        if any(_during(a, t, tol) for t in truths):
            rs.corroborating += 1
            corr.append(a)
        else:
            rs.false_positives += 1
            fps.append(a)
    return Score(dict(sorted(rules.items())), matches, fps, corr)


def _opened_ms(a: Alert) -> int:
    return ts_to_ms(a.opened_at)


def _same_subject(a: Alert, t: Truth) -> bool:
    return a.site == t.site and (a.subject == t.subject or subject_of(a) == t.subject)


def _during(a: Alert, t: Truth, tol: int) -> bool:
    """Opened while ``t``'s condition held, or shortly before it (an early-warning rule such as rate of rise
    may precede the level breach by up to the level's own delay)."""
    if family(a.rule) != family(t.rule) or not _same_subject(a, t):
        return False
    lead = max(int(t.max_delay_s * 1000), EARLY_WARNING_MS)
    end = t.resolved_at_ms if t.resolved_at_ms is not None else 1 << 62
    return t.opened_at_ms - lead - tol <= _opened_ms(a) <= end + tol
