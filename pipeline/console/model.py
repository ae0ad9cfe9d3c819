"""The console's read model: the alerts, acks, deliveries, annotations, verdicts and resolutions topics folded
into one view per alert and per site. Rebuilt from the start of every topic when the console starts (so it
survives restarts without a store of its own), then updated live; each change wakes the server-sent-event streams.

Pure and synchronous: :meth:`ReadModel.apply` takes one decoded record; the I/O is in :mod:`.app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from pipeline.console.records import ResolutionRecord, VerdictRecord
from pipeline.detectors.kitchen import VerdictError, apply_verdict
from pipeline.schemas import Ack, Alert, AlertState, Annotation, Delivery
from pipeline.topics import Topics

log = logging.getLogger("larder.console")

#: Open alerts by age, the buckets of the overview.
AGE_BUCKETS: tuple[tuple[str, int], ...] = (("< 1 h", 3600), ("1-4 h", 4 * 3600), ("4-24 h", 24 * 3600), ("> 24 h", 0))
_RANK = {AlertState.OPEN: 0, AlertState.ESCALATED: 1, AlertState.ACKNOWLEDGED: 2, AlertState.RESOLVED: 3}
ANNOTATIONS_PER_SUBJECT = 200


@dataclass
class MessageView:
    """One notification message of the delivery ledger: who, which tier (role and step), when, how it went."""

    planned: Delivery
    attempts: list[Delivery] = field(default_factory=list)
    closed: Delivery | None = None

    @property
    def status(self) -> str:
        if self.closed is not None:
            return self.closed.kind
        return "sending" if self.attempts else "planned"

    def steps(self, alert_id: str) -> list[str]:
        """The tier tags of this message for one alert (``0``, ``1``, ``1r2`` reminders, ``resolved``)."""
        return [k.split("|")[1] for k in self.planned.keys if k.split("|")[0] == alert_id]


@dataclass
class AlertView:
    alert_id: str
    first: Alert
    latest: Alert
    state: AlertState
    transitions: list[Alert] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    verdicts: list[VerdictRecord] = field(default_factory=list)
    resolution: ResolutionRecord | None = None
    #: The alert with every verdict folded in through :func:`apply_verdict` (``evidence["verdict"]`` ...).
    judged: Alert | None = None

    @property
    def site(self) -> str:
        return self.first.site

    @property
    def rule(self) -> str:
        return self.first.rule

    @property
    def severity(self) -> str:
        return self.latest.severity.value

    @functools.cached_property
    def opened_ms(self) -> int:
        """The opening event time (``opened_at`` of contract 4, whatever record came first)."""
        return int(datetime.fromisoformat(self.first.opened_at.replace("Z", "+00:00")).timestamp() * 1000)

    @property
    def resolved_ms(self) -> int | None:
        for t in self.transitions:
            if t.state is AlertState.RESOLVED:
                return t.at_ms
        return None

    @property
    def is_open(self) -> bool:
        """Still needs people: not resolved by its rule and not closed by a resolution in the console."""
        return self.state is not AlertState.RESOLVED and self.resolution is None

    @property
    def acknowledged(self) -> bool:
        return bool(self.acks) or any(t.state is AlertState.ACKNOWLEDGED for t in self.transitions)

    @property
    def retrospective(self) -> bool:
        return bool(self.first.evidence.get("retrospective"))

    @property
    def verdict(self) -> str | None:
        return (self.judged or self.latest).evidence.get("verdict") if self.judged else None

    @property
    def camera(self) -> bool:
        return self.rule.startswith("kitchen.hygiene.")

    def status(self) -> str:
        if self.resolution is not None:
            return "closed"
        if self.state is AlertState.RESOLVED:
            return "resolved"
        if self.acknowledged:
            return "acknowledged"
        return self.state.value

    def summary(self, now_ms: int) -> dict[str, Any]:
        """The queue's and the API's row: contract 4 plus what the console adds."""
        rec = self.latest.record()
        rec["state"] = self.state.value
        rec["opened_at"] = self.first.opened_at
        rec["evidence"] = (self.judged or self.latest).evidence
        return rec | {
            "status": self.status(),
            "age_s": max(0, (now_ms - self.opened_ms) // 1000),
            "acknowledged": self.acknowledged,
            "retrospective": self.retrospective,
            "verdict": self.verdict,
            "closed": self.resolution is not None,
        }


@dataclass
class ReadModel:
    topics: Topics
    alerts: dict[str, AlertView] = field(default_factory=dict)
    messages: dict[str, MessageView] = field(default_factory=dict)
    by_site: dict[str, set[str]] = field(default_factory=dict)
    rules_by_site: dict[str, set[str]] = field(default_factory=dict)
    open_ids: set[str] = field(default_factory=set)
    #: Per open alert, what the overview counts: (site, severity, opened ms, rule, subject). Kept next to
    #: ``open_ids`` so the overview of 1,000 sites sums plain tuples instead of walking the alert views.
    open_facts: dict[str, tuple[str, str, int, str, str]] = field(default_factory=dict)
    annotations: dict[str, deque[Annotation]] = field(default_factory=dict)
    #: Acks, verdicts and resolutions that came before their alert (another partition, or a topic read earlier).
    _early: dict[str, list[Any]] = field(default_factory=dict)
    skipped: int = 0
    _listeners: set[asyncio.Queue[str]] = field(default_factory=set)

    # -- folding ------------------------------------------------------------------------------------------------

    def apply_record(self, topic: str, value: bytes | None) -> str | None:
        """Fold one Kafka record; returns the id of the alert that changed, if any. Bad records are counted."""
        if value is None:
            return None
        t = self.topics
        try:
            if topic == t.alerts:
                return self.on_alert(Alert.model_validate_json(value))
            if topic == t.acks:
                return self.on_ack(Ack.model_validate_json(value))
            if topic == t.deliveries:
                return self.on_delivery(Delivery.model_validate_json(value))
            if topic == t.annotations:
                self.on_annotation(Annotation.model_validate_json(value))
                return None
            if topic == t.verdicts:
                return self.on_verdict(VerdictRecord.model_validate_json(value))
            if topic == t.resolutions:
                return self.on_resolution(ResolutionRecord.model_validate_json(value))
        except (ValueError, ValidationError) as exc:
            self.skipped += 1
            log.warning("skipping undecodable record on %s: %s", topic, str(exc)[:200])
        return None

    def on_alert(self, a: Alert) -> str:
        view = self.alerts.get(a.alert_id)
        if view is None:
            view = AlertView(a.alert_id, a, a, a.state, [a])
            self.alerts[a.alert_id] = view
            self.by_site.setdefault(a.site, set()).add(a.alert_id)
            self.rules_by_site.setdefault(a.site, set()).add(a.rule)
            for early in self._early.pop(a.alert_id, []):
                self._attach(view, early)
        else:
            if any(t.state is a.state and t.at_ms == a.at_ms for t in view.transitions):
                return a.alert_id  # the same transition again (a redelivered record)
            view.transitions.append(a)
            view.transitions.sort(key=lambda x: (x.at_ms, _RANK[x.state]))
            if _RANK[a.state] >= _RANK[view.state]:
                view.state = a.state
            if a.state in (AlertState.OPEN, AlertState.RESOLVED):
                view.latest = a
        self._refold_verdicts(view)
        self._index(view)
        return a.alert_id

    def _index(self, view: AlertView) -> None:
        if view.is_open:
            self.open_ids.add(view.alert_id)
            f = view.first
            self.open_facts[view.alert_id] = (f.site, view.severity, view.opened_ms, f.rule, f.subject)
        else:
            self.open_ids.discard(view.alert_id)
            self.open_facts.pop(view.alert_id, None)

    def _attach(self, view: AlertView, rec: Any) -> None:
        # Equal records are one record: the console folds what it wrote at once and again when Kafka returns it.
        if isinstance(rec, str):  # a planned message's id, folded before its alert
            if rec not in view.messages:
                view.messages.append(rec)
        elif isinstance(rec, Ack):
            if rec not in view.acks:
                view.acks.append(rec)
        elif isinstance(rec, VerdictRecord):
            if rec in view.verdicts:
                return
            view.verdicts.append(rec)
            self._refold_verdicts(view)
        elif isinstance(rec, ResolutionRecord) and view.resolution is None:
            view.resolution = rec  # the first resolution closes the case; later ones are in the audit

    def _early_or_attach(self, alert_id: str, rec: Any) -> str | None:
        view = self.alerts.get(alert_id)
        if view is None:
            self._early.setdefault(alert_id, []).append(rec)
            return None
        self._attach(view, rec)
        self._index(view)
        return alert_id

    def on_ack(self, ack: Ack) -> str | None:
        return self._early_or_attach(ack.alert_id, ack)

    def on_verdict(self, v: VerdictRecord) -> str | None:
        return self._early_or_attach(v.alert_id, v)

    def on_resolution(self, r: ResolutionRecord) -> str | None:
        return self._early_or_attach(r.alert_id, r)

    def _refold_verdicts(self, view: AlertView) -> None:
        if not view.verdicts:
            return
        judged = view.latest
        for v in sorted(view.verdicts, key=lambda x: x.at_ms):
            with contextlib.suppress(VerdictError):
                judged = apply_verdict(judged, v.verdict, v.at_ms, by=v.by)
        view.judged = judged

    def on_delivery(self, d: Delivery) -> str | None:
        if d.kind == "planned":
            if d.message_id in self.messages:
                return None
            m = MessageView(d)
            self.messages[d.message_id] = m
            changed = None
            for aid in d.alert_ids:
                view = self.alerts.get(aid)
                if view is not None:
                    view.messages.append(d.message_id)
                    changed = aid
                else:
                    self._early.setdefault(aid, []).append(d.message_id)
            return changed
        m2 = self.messages.get(d.message_id)
        if m2 is None:
            return None
        if d.kind == "attempt":
            m2.attempts.append(d)
        elif m2.closed is None:
            m2.closed = d
        return m2.planned.alert_ids[0] if m2.planned.alert_ids else None

    def on_annotation(self, a: Annotation) -> None:
        q = self.annotations.setdefault(a.subject, deque(maxlen=ANNOTATIONS_PER_SUBJECT))
        q.append(a)

    def fix_early_messages(self) -> None:
        """Planned messages folded before their alert (the deliveries topic is read first): link them now."""
        for aid, items in list(self._early.items()):
            view = self.alerts.get(aid)
            if view is None:
                continue
            for it in items:
                self._attach(view, it)
            self._index(view)
            del self._early[aid]

    # -- queries ------------------------------------------------------------------------------------------------

    def visible(self, alert_id: str, scope: frozenset[str]) -> AlertView | None:
        view = self.alerts.get(alert_id)
        return view if view is not None and view.site in scope else None

    def open_in(self, scope: Iterable[str]) -> list[AlertView]:
        out: list[AlertView] = []
        if len(self.open_ids) < 4 * len(self.by_site):
            sc = set(scope)
            return [v for aid in self.open_ids if (v := self.alerts[aid]).site in sc]
        for site in scope:
            out.extend(v for aid in self.by_site.get(site, ()) if (v := self.alerts[aid]).is_open)
        return out

    def query(
        self,
        scope: frozenset[str],
        *,
        severity: str = "",
        rule: str = "",
        site: str = "",
        state: str = "open",
        retrospective: str = "",
    ) -> list[AlertView]:
        """Filtered alerts, oldest first (the queue's order: the longest waiting on top)."""
        prefix = rule.rstrip("*").rstrip(".") + "."
        if state in ("", "open"):
            # From the open facts: thousands of open alerts are filtered and sorted as tuples, not views.
            sites = ({site} & scope) if site else scope
            facts = [
                (opened, aid)
                for aid, (s, sev, opened, r, _subject) in self.open_facts.items()
                if s in sites and (not severity or sev == severity) and (not rule or r == rule or r.startswith(prefix))
            ]
            facts.sort()
            views = [self.alerts[aid] for _opened, aid in facts]
            if retrospective in ("yes", "no"):
                want = retrospective == "yes"
                views = [v for v in views if v.retrospective == want]
            return views
        else:
            sites = ({site} & scope) if site else scope
            views = [self.alerts[a] for s in sites for a in self.by_site.get(s, ())]
            if state != "all":
                views = [v for v in views if v.status() == state]
        if severity:
            views = [v for v in views if v.severity == severity]
        if rule:
            views = [v for v in views if v.rule == rule or v.rule.startswith(prefix)]
        if retrospective in ("yes", "no"):
            want = retrospective == "yes"
            views = [v for v in views if v.retrospective == want]
        views.sort(key=lambda v: (v.opened_ms, v.alert_id))
        return views

    # -- live updates -------------------------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[str]:
        q: asyncio.Queue[str] = asyncio.Queue(maxsize=10_000)
        self._listeners.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[str]) -> None:
        self._listeners.discard(q)

    def publish(self, alert_id: str) -> None:
        for q in list(self._listeners):
            with contextlib.suppress(asyncio.QueueFull):  # a stalled browser misses updates, never blocks the model
                q.put_nowait(alert_id)


def age_bucket(age_s: int) -> str:
    for name, limit in AGE_BUCKETS:
        if limit and age_s < limit:
            return name
    return AGE_BUCKETS[-1][0]
