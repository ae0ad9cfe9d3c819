"""Per-site pure detector for rapid-test results (contract 6): the ``rapidtest.*`` rule family.

Subject of the state: the site (the rapid-tests topic is keyed by site). Subject of each alert:
``"<site>/<sample_id>"``; every result of one sample is linked to that sample's alerts (``evidence.results``).

Rules (exact semantics in ``docs/rules.md``):

* ``rapidtest.positive`` (warning): a positive or suspect initial or recheck result opens it at the result's
  ``tested_at``. Resolved by a negative recheck, a lab confirmation (superseded by ``rapidtest.confirmed``), a
  negative lab result, or a disposition (the food left sale).
* ``rapidtest.recheck_overdue`` (critical: the escalation): an initial positive/suspect not rechecked within
  ``recheck_within_min`` (default 240) opens it at exactly ``tested_at + recheck_within``. Resolved by any recheck
  or lab result of the sample, or a disposition.
* ``rapidtest.confirmed`` (critical): a positive lab-confirmed result. Resolved only by a disposition or a
  negative lab result.

Event time as for devices and kitchens (:mod:`pipeline.detectors.engine`): results wait in a buffer sorted by
``(tested_at, instrument, result_id)`` until the frontier (latest ``tested_at`` or tick, minus the allowed
lateness) passes them, so a recheck that arrives a little after another sample's later result is still seen
before the deadline fires. A result *behind* the frontier is evidence, not noise: it is applied at once (its
alerts are marked ``retrospective``), never dropped. De-duplication by (instrument, result_id), remembered for
:data:`DEDUP_HORIZON_MS` of event time. Alert ids are ``alert_id(rule, subject, opened)``: replay-safe.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pipeline import serde
from pipeline.contracts import rules as R
from pipeline.detectors.base import Output
from pipeline.detectors.engine import NEG, AlertFactory, BufferedWork, SeenIds, buffer_event, ms, tuples, wake_time
from pipeline.schemas import Severity, alert_id, ms_to_iso

BUFFER_MAX = 512
#: (instrument, result_id) pairs are remembered this long of event time behind the frontier (the hooks' LRU
#: catches an instrument's immediate retries; this catches Kafka redeliveries and other hook processes).
DEDUP_HORIZON_MS = 48 * 3_600_000
DEDUP_MAX = 4096
_DEDUP = SeenIds(DEDUP_HORIZON_MS, DEDUP_MAX)
#: Linked result ids kept per sample (evidence).
LINKED_MAX = 32

_POSITIVE = frozenset(("positive", "suspect"))
_EVIDENCE_FIELDS = (
    "sample_name",
    "food_category",
    "stall",
    "supplier",
    "trace_code",
    "test_item",
    "method",
    "result_type",
    "value",
    "unit",
    "limit",
    "limit_basis",
    "operator",
    "instrument",
    "instrument_type",
)

#: Fields of the opening result repeated in the escalation's evidence.
_FOUND = ("sample_name", "stall", "supplier", "trace_code", "test_item", "value", "unit", "limit", "limit_basis")

# ts, instrument, result_id, the item (a plain dict from the topic)
RItem = tuple[int, str, str, dict[str, Any]]


class Sample(NamedTuple):
    """A sample with at least one open alert."""

    sample_id: str
    #: opened ``rapidtest.positive`` (event ms) and the recheck deadline (None once rechecked or escalated)
    positive: int | None = None
    recheck_due: int | None = None
    overdue: int | None = None
    confirmed: int | None = None
    results: tuple[str, ...] = ()
    #: What the opening positive found, as (field, value) pairs: the escalation's evidence and message.
    found: tuple[tuple[str, Any], ...] = ()


class RapidTestState(NamedTuple):
    frontier: int = NEG
    max_ts: int = NEG
    seen: tuple[tuple[int, int], ...] = ()
    buf: tuple[RItem, ...] = ()
    #: open samples, sorted by id
    samples: tuple[Sample, ...] = ()
    late_count: int = 0


class RapidTestDetector:
    name = "rapidtest"

    def __init__(self, site: str, recheck_within_min: float = 240.0, allowed_lateness_min: float = 5.0) -> None:
        self.site = site
        self.subject = site
        self.recheck_ms = ms(recheck_within_min)
        self.recheck_within_min = recheck_within_min
        self.lateness = ms(allowed_lateness_min)

    # -- protocol ------------------------------------------------------------------------------------------------

    def initial(self) -> RapidTestState:
        return RapidTestState()

    def on_item(self, state: RapidTestState, d: dict[str, Any], now_ms: int) -> tuple[RapidTestState, list[Output]]:
        """One RecordBatch item of the rapid-tests topic. ``ValueError`` for wrong types (dead-lettered by the
        runner): a buffered item with a bad field would fail every later call for its site."""
        ts, instrument, result_id = d.get("ts_ms"), d.get("instrument"), d.get("result_id")
        if (
            type(ts) is not int
            or type(instrument) is not str
            or type(result_id) is not str
            or type(d.get("sample_id")) is not str
            or d.get("result") not in ("negative", "positive", "suspect")
            or d.get("stage", "initial") not in ("initial", "recheck", "lab_confirmed")
            or not (d.get("disposition") is None or isinstance(d["disposition"], dict))
        ):
            raise ValueError("a rapid-test item needs integer ts_ms, string ids, a known result and stage")
        return self._arrive(state, (ts, instrument, result_id, d), now_ms)

    on_event = on_item

    def on_tick(self, state: RapidTestState, now_ms: int) -> tuple[RapidTestState, list[Output]]:
        target = max(state.max_ts, now_ms) - self.lateness
        if target <= state.frontier:
            return state, []
        w = _Work(self, state)
        if not (state.buf and state.buf[0][0] < target):
            dl = w.next_deadline()
            if dl is None or dl >= target:
                return state, []
        w.release(target)
        return w.freeze(), w.out

    def wake_ms(self, state: RapidTestState) -> int | None:
        dl = _Work(self, state).next_deadline()
        # A deadline fires once the frontier is past it (dl < target), hence dl + 1.
        return wake_time(state.buf, None if dl is None else dl + 1, state.frontier, state.max_ts, self.lateness)

    def state_to_bytes(self, state: RapidTestState) -> bytes:
        # orjson writes plain tuples only, not NamedTuples such as Sample.
        return serde.dumps([*state[:4], [tuple(x) for x in state.samples], state.late_count])

    def state_from_bytes(self, data: bytes) -> RapidTestState:
        f, m, seen, buf, samples, late = serde.loads(data)
        return RapidTestState(
            f,
            m,
            tuples(seen),
            tuple((t, i, r, d) for t, i, r, d in buf),
            tuple(Sample(s[0], s[1], s[2], s[3], s[4], tuple(s[5]), tuples(s[6])) for s in samples),
            late,
        )

    # -- arrival ---------------------------------------------------------------------------------------------------

    def _arrive(self, state: RapidTestState, item: RItem, now_ms: int) -> tuple[RapidTestState, list[Output]]:
        ts = item[0]
        seen = _DEDUP.remember(state.seen, item[1], item[2], ts)
        if seen is None:
            return state, []
        w = _Work(self, state)
        if ts < state.frontier:
            # Late evidence: applied now, at its own event time; its alerts say they are retrospective.
            w.late_count += 1
            w.apply(item, retrospective=True)
            w.seen = _DEDUP.trim(seen, w.frontier)
            return w.freeze(), w.out
        buf = buffer_event(state.buf, item)
        max_ts = max(ts, state.max_ts)
        target = max_ts - self.lateness
        if target <= state.frontier and len(buf) <= BUFFER_MAX:
            return state._replace(seen=_DEDUP.trim(seen, state.frontier), buf=buf, max_ts=max_ts), []
        w.buf, w.max_ts = buf, max_ts
        w.release(target)
        w.seen = _DEDUP.trim(seen, w.frontier)
        return w.freeze(), w.out


class _Work(BufferedWork):
    """A mutable working copy of one site's state for one arrival or tick."""

    buffer_max = BUFFER_MAX

    def __init__(self, d: RapidTestDetector, s: RapidTestState) -> None:
        self.d = d
        self.orig = s
        self.out: list[Output] = []
        self.frontier, self.max_ts, self.seen, self.buf, samples, self.late_count = s
        self.samples: dict[str, Sample] = {x.sample_id: x for x in samples}

    def freeze(self) -> RapidTestState:
        new = RapidTestState(
            self.frontier,
            self.max_ts,
            self.seen,
            self.buf,
            tuple(self.samples[k] for k in sorted(self.samples)),
            self.late_count,
        )
        return self.orig if new == self.orig else new

    def next_deadline(self) -> int | None:
        dues = [s.recheck_due for s in self.samples.values() if s.recheck_due is not None]
        return min(dues) if dues else None

    def advance(self, t: int) -> None:
        """Fire every recheck deadline strictly before ``t`` (a recheck at the deadline itself is in time)."""
        while (dl := self.next_deadline()) is not None and dl < t:
            for sid in sorted(self.samples):
                s = self.samples[sid]
                if s.recheck_due == dl:
                    self._escalate(s, dl)

    def _escalate(self, s: Sample, at: int) -> None:
        d = self.d
        alerts = AlertFactory(d.site, f"{d.site}/{s.sample_id}")
        assert s.positive is not None
        ev = {
            "sample_id": s.sample_id,
            **dict(s.found),
            "positive_alert_id": alert_id(R.RAPIDTEST_POSITIVE, alerts.subject, s.positive),
            "positive_at": ms_to_iso(s.positive),
            "recheck_within_min": d.recheck_within_min,
            "results": list(s.results),
        }
        self.out.append(
            alerts.open_alert(R.RAPIDTEST_RECHECK_OVERDUE, Severity.CRITICAL, at=at, notify=True, evidence=ev)
        )
        self.samples[s.sample_id] = s._replace(recheck_due=None, overdue=at)

    def apply(self, item: RItem, *, retrospective: bool = False) -> None:
        d = self.d
        t, _, result_id, it = item
        sid: str = it["sample_id"]
        outcome: str = it["result"]
        stage: str = it.get("stage", "initial")
        s = self.samples.get(sid) or Sample(sid)
        results = s.results if result_id in s.results else (*s.results, result_id)[-LINKED_MAX:]
        s = s._replace(results=results)
        alerts = AlertFactory(d.site, f"{d.site}/{sid}")
        base = {
            "sample_id": sid,
            "result_id": result_id,
            "result": outcome,
            "stage": stage,
            "tested_at": ms_to_iso(t),
            **{k: it[k] for k in _EVIDENCE_FIELDS if it.get(k) is not None},
        }
        if retrospective:
            base["retrospective"] = True

        def resolve(rule: str, sev: Severity, opened: int, reason: str) -> None:
            ev = {**base, "reason": reason, "results": list(results)}
            if it.get("disposition") is not None:
                ev["disposition"] = it["disposition"]
            self.out.append(alerts.resolve_alert(rule, sev, opened=opened, at=t, notify=True, evidence=ev))

        if stage == "lab_confirmed":
            if outcome in _POSITIVE:
                if s.confirmed is None:
                    ev = {**base, "results": list(results)}
                    self.out.append(
                        alerts.open_alert(R.RAPIDTEST_CONFIRMED, Severity.CRITICAL, at=t, notify=True, evidence=ev)
                    )
                    s = s._replace(confirmed=t)
                if s.positive is not None:
                    resolve(R.RAPIDTEST_POSITIVE, Severity.WARNING, s.positive, "lab_confirmed")
                if s.overdue is not None:
                    resolve(R.RAPIDTEST_RECHECK_OVERDUE, Severity.CRITICAL, s.overdue, "lab_result")
                s = s._replace(positive=None, recheck_due=None, overdue=None)
            else:
                s = self._close_all(s, resolve, "lab_negative")
        elif outcome in _POSITIVE:
            if s.positive is None and s.confirmed is None:
                ev = {**base, "results": list(results)}
                if stage == "initial":
                    ev["recheck_by"] = ms_to_iso(t + d.recheck_ms)
                self.out.append(
                    alerts.open_alert(R.RAPIDTEST_POSITIVE, Severity.WARNING, at=t, notify=True, evidence=ev)
                )
                found = tuple((k, it[k]) for k in _FOUND if it.get(k) is not None)
                s = s._replace(found=found, positive=t, recheck_due=t + d.recheck_ms if stage == "initial" else None)
            elif stage == "recheck":
                # Rechecked, still positive: the escalation is answered, the positive stays until disposition.
                if s.overdue is not None:
                    resolve(R.RAPIDTEST_RECHECK_OVERDUE, Severity.CRITICAL, s.overdue, "recheck_positive")
                s = s._replace(recheck_due=None, overdue=None)
        elif stage == "recheck":
            if s.positive is not None:
                resolve(R.RAPIDTEST_POSITIVE, Severity.WARNING, s.positive, "recheck_negative")
            if s.overdue is not None:
                resolve(R.RAPIDTEST_RECHECK_OVERDUE, Severity.CRITICAL, s.overdue, "recheck_negative")
            s = s._replace(positive=None, recheck_due=None, overdue=None)
        if it.get("disposition") is not None:
            s = self._close_all(s, resolve, "disposition")
        if s.positive is None and s.overdue is None and s.confirmed is None:
            self.samples.pop(sid, None)
        else:
            self.samples[sid] = s

    @staticmethod
    def _close_all(s: Sample, resolve: Any, reason: str) -> Sample:
        if s.positive is not None:
            resolve(R.RAPIDTEST_POSITIVE, Severity.WARNING, s.positive, reason)
        if s.overdue is not None:
            resolve(R.RAPIDTEST_RECHECK_OVERDUE, Severity.CRITICAL, s.overdue, reason)
        if s.confirmed is not None:
            resolve(R.RAPIDTEST_CONFIRMED, Severity.CRITICAL, s.confirmed, reason)
        return s._replace(positive=None, recheck_due=None, overdue=None, confirmed=None)
