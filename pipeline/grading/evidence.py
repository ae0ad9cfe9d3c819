"""Per-site evidence for the risk grade, folded from alert lifecycle events and grade overrides. Pure, no Faust.

``fold(state, event) -> state`` keeps, per site, one compact :class:`Facts` row per alert of the last 90 days
(event time) and the latest station override. Every fact is an order-insensitive merge (earliest ack, highest
peak, "reached the station" as a flag, the latest verdict by its own time), so the same events in any
interleaving, or an event read twice after a crash, give the same state: a replay gives the same grades.

Sources (all on the alerts topic, keyed by site, so one partitioning serves the whole fold):

* ``open`` / ``resolved`` from the detectors: rule, severity, subject, opening and resolution event times,
  ``evidence.peak``/``limit`` (how far beyond the limit), ``evidence.retrospective`` (late data);
* ``escalated`` from the notifier: ``evidence.roles`` tells whether the station or the district was reached;
* ``acknowledged`` from the notifier (it folds the acks topic into these): the ack's event time. The acks topic
  itself carries the same instants, and the deliveries ledger only the messages; neither adds a fact here;
* a hygiene alert republished with ``evidence.verdict`` (``confirmed`` / ``false_positive``, the console's
  :func:`pipeline.detectors.kitchen.apply_verdict`);
* ``liveness.offline`` alerts: offline intervals of devices (and of cameras, should a camera liveness rule name
  a camera as subject), for the online share;
* :class:`Override` records from the grade-overrides topic.

And from the **rapid-tests topic** (contract 6 record batches, keyed by site, the same partitioning): every
*initial* rapid-test result, passing or not, for the rollup's pass rate (:func:`fold_rapid_test`). A negative
result opens no alert, so the alerts topic cannot give that figure. One row per result, identified by a 63-bit
hash of (instrument, ``result_id``), so a redelivered or re-read result counts once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline import serde

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
DAY_MS = 86_400_000
WINDOW_MS = 90 * DAY_MS
#: Facts are dropped this long after they stopped mattering to any window ending at the watermark: a grade as of
#: a day in the recent past (an overdue daily grade, a rollup for last month) still sees its evidence.
KEEP_MS = WINDOW_MS + 7 * DAY_MS
#: Pruning runs when the watermark has moved this far since the last one (amortised; not per event).
PRUNE_EVERY_MS = DAY_MS

Grade = Literal["A", "B", "C", "D"]
GRADES: tuple[Grade, ...] = ("A", "B", "C", "D")


class Override(BaseModel):
    """A station user's override of a site's grade, with the reason (audited: it is a Kafka record, kept)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    kind: Literal["override"] = "override"
    site: str = Field(min_length=1, max_length=128)
    #: ``None`` clears an earlier override (the computed grade applies again).
    grade: Grade | None
    reason: str = Field(min_length=3, max_length=2000)
    by: str = Field(min_length=1, max_length=200)
    role: Literal["station", "district", "admin"] = "station"
    at_ms: int = Field(ge=0)


@dataclass(frozen=True, slots=True)
class Facts:
    """What the grade and the rollups need to know about one alert; every field merges order-insensitively."""

    alert_id: str
    rule: str
    severity: str
    subject: str
    notify: bool
    opened_ms: int
    acked_ms: int | None = None
    resolved_ms: int | None = None
    #: Escalation entered a step naming the station / the district (``escalated`` events' ``evidence.roles``).
    reached_station: bool = False
    reached_district: bool = False
    #: Highest ``|peak - limit|`` seen on the alert's events (cold-chain levels), degrees.
    beyond: float = 0.0
    retrospective: bool = False
    verdict: str | None = None
    verdict_ms: int = -1

    def to_row(self) -> list[Any]:
        return [
            self.alert_id,
            self.rule,
            self.severity,
            self.subject,
            self.notify,
            self.opened_ms,
            self.acked_ms,
            self.resolved_ms,
            self.reached_station,
            self.reached_district,
            self.beyond,
            self.retrospective,
            self.verdict,
            self.verdict_ms,
        ]

    @classmethod
    def from_row(cls, row: list[Any]) -> Facts:
        return cls(*row)


@dataclass(frozen=True, slots=True)
class SiteEvidence:
    site: str
    alerts: dict[str, Facts]
    #: Highest event time seen (alert transitions and overrides): the state's own clock.
    watermark_ms: int = 0
    pruned_at_ms: int = 0
    #: The latest override by event time (``None``: none, or cleared); history lives on the overrides topic.
    override: Override | None = None
    #: Events about alerts already pruned away, ignored (counted so the loss is visible).
    ignored: int = 0
    #: The day boundary (site-local midnight, ms) of the latest daily grade record emitted (0: none yet).
    graded_ms: int = 0
    #: Initial rapid-test results of the last ``KEEP_MS`` of test time: :func:`result_key` -> (tested at ms,
    #: passed). ~30 bytes a result in the table.
    tests: dict[int, tuple[int, bool]] = field(default_factory=dict)
    #: Latest ``tested_at`` seen (the rapid tests' own clock: it does not move ``watermark_ms``, so rapid tests
    #: change neither the daily grade records nor the default ``as_of``) and when their rows were last pruned.
    tests_ms: int = 0
    tests_pruned_ms: int = 0


def empty(site: str) -> SiteEvidence:
    return SiteEvidence(site=site, alerts={})


def _min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _beyond(evidence: dict[str, Any]) -> float:
    limit = evidence.get("limit")
    peak = evidence.get("peak", evidence.get("value"))
    if isinstance(limit, int | float) and isinstance(peak, int | float) and not isinstance(peak, bool):
        return abs(float(peak) - float(limit))
    return 0.0


def fold_alert(state: SiteEvidence, event: dict[str, Any]) -> SiteEvidence:
    """Merge one alert lifecycle event (contract 4 plus ``at_ms``, as a dict straight from the topic)."""
    aid = event["alert_id"]
    at = int(event["at_ms"])
    kind = event["state"]
    ev = event.get("evidence") or {}
    old = state.alerts.get(aid)
    watermark = max(state.watermark_ms, at)
    if old is None:
        opened = iso_ms(event["opened_at"])
        if opened < watermark - KEEP_MS:
            # Older than anything we keep: its facts were pruned, or it belongs to no window we serve.
            return replace(state, ignored=state.ignored + 1, watermark_ms=watermark)
        old = Facts(
            alert_id=aid,
            rule=event["rule"],
            severity=event["severity"],
            subject=event["subject"],
            notify=bool(event.get("notify", True)),
            opened_ms=opened,
        )
    acked, resolved = old.acked_ms, old.resolved_ms
    station, district = old.reached_station, old.reached_district
    verdict, verdict_ms = old.verdict, old.verdict_ms
    if ev.get("verdict_at") is not None and iso_ms(ev["verdict_at"]) == at:
        # A verdict republication (the console's apply_verdict): its ``state`` is whatever the alert's was and
        # its time the verdict's, so it is not a transition (an "acknowledged" one would move the ack time).
        kind = "verdict"
    if kind == "acknowledged":
        acked = _min(acked, at)
    elif kind == "resolved":
        # ``resolved_at`` (the record's own resolution time), not ``at_ms``: a resolved alert republished later
        # with a verdict carries the verdict's time as ``at_ms``.
        resolved_at = event.get("resolved_at")
        resolved = _min(resolved, iso_ms(resolved_at) if resolved_at else at)
    elif kind == "escalated":
        roles = ev.get("roles") or ()
        station = station or "station" in roles
        district = district or "district" in roles
    beyond = max(old.beyond, _beyond(ev)) if ev else old.beyond
    retro = old.retrospective or ev.get("retrospective") is True
    v = ev.get("verdict")
    if v in ("confirmed", "false_positive"):
        v_ms = iso_ms(ev["verdict_at"]) if ev.get("verdict_at") else at
        # The latest verdict by its own time wins (a correction); ties by value, so any order agrees.
        if (v_ms, v) > (verdict_ms, verdict or ""):
            verdict, verdict_ms = v, v_ms
    facts = Facts(
        old.alert_id,
        old.rule,
        old.severity,
        old.subject,
        old.notify,
        old.opened_ms,
        acked,
        resolved,
        station,
        district,
        beyond,
        retro,
        verdict,
        verdict_ms,
    )
    if facts == state.alerts.get(aid) and watermark == state.watermark_ms:
        return state  # nothing new (a duplicate): the same object, so the adapter writes nothing
    alerts = dict(state.alerts)
    alerts[aid] = facts
    # Built directly: ``dataclasses.replace`` costs more than the rest of the fold.
    new = SiteEvidence(
        state.site,
        alerts,
        watermark,
        state.pruned_at_ms,
        state.override,
        state.ignored,
        state.graded_ms,
        state.tests,
        state.tests_ms,
        state.tests_pruned_ms,
    )
    return _maybe_prune(new) if watermark - state.pruned_at_ms >= PRUNE_EVERY_MS else new


def iso_ms(value: Any) -> int:
    """Milliseconds of an RFC 3339 time (the alert record's ``opened_at``) or of a number already in ms."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    # Integer arithmetic: ``timestamp() * 1000`` can land a millisecond short (float rounding).
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS


def fold_override(state: SiteEvidence, override: Override) -> SiteEvidence:
    """The latest override by its time wins (ties by content, so any order agrees).

    An override's time is when the station user made it (wall time), not an event time of the alerts: it does
    not move the watermark, so overriding today a site whose evidence is a replayed month grades that month
    as before (the override applies from its own time on)."""
    cur = state.override
    newer = cur is None or (override.at_ms, override.model_dump_json()) > (cur.at_ms, cur.model_dump_json())
    if not newer:
        return state
    return replace(state, override=override)


def fold(state: SiteEvidence, event: dict[str, Any]) -> SiteEvidence:
    """One record of either source: an alert event, or an override (``"kind": "override"``)."""
    if event.get("kind") == "override":
        return fold_override(state, Override.model_validate(event))
    return fold_alert(state, event)


_RESULTS = ("negative", "positive", "suspect")
_STAGES = ("initial", "recheck", "lab_confirmed")


def result_key(instrument: str, result_id: str) -> int:
    """A result's identity in the state: 63 bits of BLAKE2b of (instrument, result id). A site keeps a few
    thousand results, so a collision (~n^2 / 2^64) is not a practical concern; the ids themselves would triple
    the state."""
    digest = hashlib.blake2b(f"{instrument}\x1f{result_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def fold_rapid_test(state: SiteEvidence, item: dict[str, Any]) -> SiteEvidence:
    """Merge one item of a rapid-tests record batch (contract 6 result plus ``instrument``, ``site``, ``ts_ms``).

    Only ``initial`` results are tests of a sample (a ``recheck`` or ``lab_confirmed`` result is a follow-up of
    the same sample and is not counted again): kept as (tested at, passed = ``result == "negative"``). The same
    result twice keeps the smaller (time, passed) pair, so any order agrees. ``ValueError`` for an item without
    the fields the fold needs (the adapter dead-letters it)."""
    ts, instrument, rid = item.get("ts_ms"), item.get("instrument"), item.get("result_id")
    result, stage = item.get("result"), item.get("stage", "initial")
    if type(ts) is not int or type(instrument) is not str or type(rid) is not str:
        raise ValueError("rapid-test item needs integer ts_ms, string instrument and result_id")
    if result not in _RESULTS or stage not in _STAGES:
        raise ValueError(f"rapid-test item with result {result!r} and stage {stage!r}")
    if stage != "initial":
        return state
    latest = max(state.tests_ms, ts)
    if ts < latest - KEEP_MS:
        return replace(state, ignored=state.ignored + 1, tests_ms=latest)
    key = result_key(instrument, rid)
    row = (ts, result == "negative")
    old = state.tests.get(key)
    if old is not None and old <= row:
        return state if latest == state.tests_ms else replace(state, tests_ms=latest)
    tests = dict(state.tests)
    tests[key] = row
    new = replace(state, tests=tests, tests_ms=latest)
    if latest - new.tests_pruned_ms >= PRUNE_EVERY_MS:
        horizon = latest - KEEP_MS
        new = replace(new, tests={k: r for k, r in tests.items() if r[0] >= horizon}, tests_pruned_ms=latest)
    return new


def fold_all(records: Iterable[dict[str, Any]], rapid_tests: Iterable[dict[str, Any]] = ()) -> dict[str, SiteEvidence]:
    """Every site's state after ``records`` (alert events and overrides, :func:`fold`) and then ``rapid_tests``
    (rapid-tests items, :func:`fold_rapid_test`), each in order into its own site's state: the pure counterpart
    of what the grading worker's table holds once it has read them."""
    states: dict[str, SiteEvidence] = {}
    for record in records:
        site = record["site"]
        states[site] = fold(states.get(site) or empty(site), record)
    for item in rapid_tests:
        site = item["site"]
        states[site] = fold_rapid_test(states.get(site) or empty(site), item)
    return states


def rapid_tests_between(state: SiteEvidence, start_ms: int, end_ms: int) -> tuple[int, int]:
    """(initial rapid tests, of which passed) tested in ``[start_ms, end_ms)``."""
    n = passed = 0
    for ts, ok in state.tests.values():
        if start_ms <= ts < end_ms:
            n += 1
            passed += ok
    return n, passed


def _maybe_prune(state: SiteEvidence) -> SiteEvidence:
    if state.watermark_ms - state.pruned_at_ms < PRUNE_EVERY_MS:
        return state
    horizon = state.watermark_ms - KEEP_MS
    keep = {
        k: f
        for k, f in state.alerts.items()
        # An alert still open (or unresolved) keeps counting as open and offline: never prune it.
        if f.resolved_ms is None or max(f.resolved_ms, f.opened_ms) >= horizon
    }
    return replace(state, alerts=keep, pruned_at_ms=state.watermark_ms)


# -- bytes for the table -------------------------------------------------------------------------------------


def to_bytes(state: SiteEvidence) -> bytes:
    return serde.dumps(
        {
            "v": 1,
            "site": state.site,
            "w": state.watermark_ms,
            "p": state.pruned_at_ms,
            "i": state.ignored,
            "g": state.graded_ms,
            "o": state.override.model_dump() if state.override else None,
            "a": [f.to_row() for f in state.alerts.values()],
            "t": [[k, ts, ok] for k, (ts, ok) in state.tests.items()],
            "tm": state.tests_ms,
            "tp": state.tests_pruned_ms,
        }
    )


def from_bytes(data: bytes) -> SiteEvidence:
    doc = serde.loads(data)
    alerts = {row[0]: Facts.from_row(row) for row in doc["a"]}
    override = Override.model_validate(doc["o"]) if doc["o"] else None
    # "t", "tm", "tp" (rapid tests) are absent from states written before the worker read the rapid-tests topic.
    tests = {k: (ts, bool(ok)) for k, ts, ok in doc.get("t", ())}
    return SiteEvidence(
        doc["site"],
        alerts,
        doc["w"],
        doc["p"],
        override,
        doc["i"],
        doc.get("g", 0),
        tests,
        doc.get("tm", 0),
        doc.get("tp", 0),
    )
