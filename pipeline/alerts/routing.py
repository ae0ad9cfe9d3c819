"""Who hears about an alert, when, and in how many messages: pure functions of (state, event, now_ms).

The notifier (:mod:`pipeline.alerts.notifier`) feeds four kinds of input into a :class:`Router` and carries out
the actions it returns; nothing here reads a clock, a socket or a file, so every timing rule is tested on a
controlled clock and a restarted notifier rebuilds exactly the same state by folding the same records.

* ``on_alert`` -- a lifecycle record from the alerts topic. ``open`` starts tracking (notifications are
  planned on the next tick, not here, so a rebuild that folds the whole topic plans nothing twice);
  ``resolved`` stops escalation and tells the people already notified that it cleared (unless someone had
  acknowledged it); ``escalated``/``acknowledged`` (the notifier's own earlier output) restore progress.
* ``on_ack`` -- an acknowledgement: stop escalation and reminders, drop what was waiting to go out, emit the
  ``acknowledged`` transition with who, how and the corrective-action note.
* ``on_planned`` -- a ``planned`` record of the delivery ledger (rebuild): those notification keys are done.
* ``on_tick`` -- time passed: enter escalation steps whose deadline passed, plan reminders, and flush each
  recipient's outbox into one message when its group window closed, quiet hours are over and the rate limit
  allows.

Rules (docs/alerts.md has the full policy):

* Step ``i`` of the site's policy for the alert's severity is entered at ``opened + after_min`` while the alert
  is neither acknowledged nor resolved; step ``i > 0`` is an ``escalated`` transition stamped with that deadline.
  Reminders go to the current step's roles every ``reminder_min`` after the step was entered; after a long
  outage only the latest due reminder goes out.
* A notification is identified by ``<alert>|<step>|<recipient>`` (``<step>`` is ``0``, ``1``, ... ``1r2`` for the
  second reminder at step 1, ``resolved``). Each key is planned once, ever.
* Notifications wait in a per-recipient outbox: everything for one person inside ``group_window`` goes out as
  one message, across sites (a station supervisor hears about 100 offline sites once, in a summary).
* Quiet hours (site-local) hold back non-critical notifications until they end; critical ones pass.
* A recipient gets at most ``rate_limit`` messages per ``rate_window``; what is held back is merged into the
  next message. Critical alerts are grouped but not rate-limited (a fire does not wait an hour).
* ``info`` alerts and alerts with ``notify: false`` are tracked (and land in InfluxDB) but notify nobody.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from pipeline.schemas import Ack, Alert, AlertState, Severity
from pipeline.siteconfig import ROLES, Recipient, Site, SiteConfig, TimeWindow

MINUTE_MS = 60_000


def recipient_id(r: Recipient) -> str:
    """A stable id for a person: the same name and addresses in several sites are one recipient (grouping)."""
    ident = "|".join([r.name, r.phone or "", r.webhook or "", r.dingtalk or "", r.wecom or ""])
    return "rcp-" + hashlib.blake2b(ident.encode(), digest_size=6).hexdigest()


def message_id(keys: list[str]) -> str:
    """Deterministic from the notification keys it carries, so a resend keeps its idempotency key."""
    return "m" + hashlib.blake2b("\n".join(sorted(keys)).encode(), digest_size=8).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Configuration (resolved once from the site file and settings)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    role: str
    recipient: Recipient
    rate_limit: int


@dataclass(frozen=True)
class Step:
    after_ms: int
    roles: tuple[str, ...]


@dataclass(frozen=True)
class SitePolicy:
    site: str
    tz: ZoneInfo
    quiet: TimeWindow | None
    steps: Mapping[str, tuple[Step, ...]]  # severity -> steps
    reminder_ms: int
    people: Mapping[str, tuple[Person, ...]]  # role -> people


@dataclass(frozen=True)
class RoutingConfig:
    sites: Mapping[str, SitePolicy]
    group_window_ms: int = 30_000
    rate_limit: int = 6
    rate_window_ms: int = 3_600_000
    #: Resolved tracks are forgotten this long after resolution (late acks with a note are still recorded).
    keep_resolved_ms: int = 24 * 3_600_000

    @classmethod
    def from_sites(
        cls,
        config: SiteConfig,
        *,
        group_window_ms: int = 30_000,
        rate_limit: int = 6,
        rate_window_ms: int = 3_600_000,
        keep_resolved_ms: int = 24 * 3_600_000,
    ) -> RoutingConfig:
        sites = {sid: _site_policy(sid, site, rate_limit) for sid, site in config.sites.items()}
        return cls(sites, group_window_ms, rate_limit, rate_window_ms, keep_resolved_ms)

    def person(self, pid: str) -> Person | None:
        for pol in self.sites.values():
            for people in pol.people.values():
                for p in people:
                    if p.id == pid:
                        return p
        return None


def _site_policy(sid: str, site: Site, default_limit: int) -> SitePolicy:
    def steps(raw: list) -> tuple[Step, ...]:  # type: ignore[type-arg]
        return tuple(
            sorted((Step(int(s.after_min * MINUTE_MS), tuple(s.roles)) for s in raw), key=lambda s: s.after_ms)
        )

    people: dict[str, tuple[Person, ...]] = {
        role: tuple(
            Person(recipient_id(r), r.name, role, r, r.rate_limit or default_limit)
            for r in site.recipients.get(role, [])
        )
        for role in ROLES
    }
    return SitePolicy(
        site=sid,
        tz=ZoneInfo(site.timezone),
        quiet=site.quiet_hours,
        steps={"warning": steps(site.escalation.warning), "critical": steps(site.escalation.critical)},
        reminder_ms=int(site.escalation.reminder_min * MINUTE_MS),
        people=people,
    )


# ---------------------------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Track:
    alert: Alert  # the latest detector record (open, or resolved)
    opened_ms: int
    step: int = -1  # highest escalation step entered
    step_ms: int = 0  # deadline at which that step was entered
    reminders: int = 0  # reminders planned at the current step
    acked: bool = False
    resolved_ms: int | None = None
    notified: frozenset[str] = frozenset()  # person ids that were sent something about this alert
    next_ms: int = 0  # nothing can happen before this (next step or reminder): idle ticks skip the track


@dataclass(frozen=True)
class Pending:
    key: str  # <alert>|<step>|<person>
    alert: Alert
    kind: str  # open | escalated | reminder | resolved
    step: int
    enqueued_ms: int
    not_before_ms: int  # end of quiet hours, or enqueued_ms

    @property
    def critical(self) -> bool:
        return self.alert.severity is Severity.CRITICAL


@dataclass(frozen=True)
class RouterState:
    tracks: Mapping[str, Track] = field(default_factory=dict)
    outbox: Mapping[str, tuple[Pending, ...]] = field(default_factory=dict)  # person id -> waiting
    planned: frozenset[str] = frozenset()  # notification keys ever planned
    sent: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # person id -> message times (rate window)
    #: Rebuild: who the ledger says was notified about alerts whose open record is not read yet (the ledger is
    #: read first); a track created for such an alert starts with them, so its resolution notice reaches them.
    notified_before: Mapping[str, frozenset[str]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """Publish this lifecycle event (``escalated`` or ``acknowledged``) to the alerts topic."""

    alert: Alert


@dataclass(frozen=True)
class Send:
    """Deliver one message to one person, covering ``items`` (all keys become planned now)."""

    message_id: str
    person: Person
    items: tuple[Pending, ...]
    at_ms: int

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.items]

    @property
    def ackable(self) -> list[str]:
        """Alert ids this message can acknowledge (not the ones it only reports as resolved)."""
        return sorted({p.alert.alert_id for p in self.items if p.kind != "resolved"})


Action = Transition | Send


# ---------------------------------------------------------------------------------------------------------------
# The router
# ---------------------------------------------------------------------------------------------------------------


def quiet_until(policy: SitePolicy, now_ms: int) -> int | None:
    """End of the quiet window containing ``now_ms`` (site-local), or None if not in quiet hours."""
    q = policy.quiet
    if q is None:
        return None
    local = datetime.fromtimestamp(now_ms / 1000, tz=UTC).astimezone(policy.tz)
    if not q.contains(local.time().replace(tzinfo=None)):
        return None
    end = local.replace(hour=q.end.hour, minute=q.end.minute, second=0, microsecond=0)
    if end <= local:
        end += timedelta(days=1)
    return int(end.timestamp() * 1000)


class Router:
    def __init__(self, config: RoutingConfig) -> None:
        self.config = config

    # -- inputs ------------------------------------------------------------------------------------------------

    def on_alert(self, state: RouterState, alert: Alert, now_ms: int) -> tuple[RouterState, list[Action]]:
        track = state.tracks.get(alert.alert_id)
        if alert.state is AlertState.OPEN:
            if track is not None:
                return state, []  # a duplicate open (replayed topic): nothing new
            new = Track(
                alert=alert,
                opened_ms=_opened_ms(alert),
                notified=state.notified_before.get(alert.alert_id, frozenset()),
            )
            return replace(state, tracks={**state.tracks, alert.alert_id: new}), []
        if track is None:
            return state, []  # a transition for an alert we never saw opened (older than the topic's retention)
        if alert.state is AlertState.ESCALATED:
            step = alert.evidence.get("step")
            if isinstance(step, int) and step > track.step:
                track = replace(track, step=step, step_ms=alert.at_ms, reminders=0, next_ms=0)
            return self._put(state, track), []
        if alert.state is AlertState.ACKNOWLEDGED:
            return self._put(state, replace(track, acked=True)), []
        # resolved
        if track.resolved_ms is not None:
            return state, []
        track = replace(track, alert=alert, resolved_ms=alert.at_ms)
        state = self._drop_pending(self._put(state, track), alert.alert_id)
        if not track.acked:
            policy = self.config.sites.get(alert.site)
            people = {p.id: p for ps in (policy.people.values() if policy else ()) for p in ps}
            for pid in sorted(track.notified):
                if pid in people:
                    state = self._enqueue(state, people[pid], alert, "resolved", track.step, now_ms, policy)
        return state, []

    def on_ack(self, state: RouterState, ack: Ack, now_ms: int) -> tuple[RouterState, list[Action]]:
        track = state.tracks.get(ack.alert_id)
        if track is None or track.acked:
            return state, []
        track = replace(track, acked=True)
        state = self._drop_pending(self._put(state, track), ack.alert_id)
        evidence = {
            **track.alert.evidence,
            "step": track.step,
            "opened_ms": track.opened_ms,
            "by": ack.by,
            "role": ack.role,
            "via": ack.via,
            "note": ack.note,
        }
        if track.resolved_ms is not None:
            evidence["after_resolved"] = True
        out = track.alert.model_copy(
            update={"state": AlertState.ACKNOWLEDGED, "at_ms": ack.at_ms, "evidence": evidence}
        )
        return state, [Transition(out)]

    def on_planned(self, state: RouterState, person_id: str, keys: list[str], at_ms: int) -> RouterState:
        """Rebuild: a message that was planned before a restart (its keys are done, it counts for the rate)."""
        return self.on_planned_many(state, [(person_id, keys, at_ms)])

    def on_planned_many(self, state: RouterState, records: list[tuple[str, list[str], int]]) -> RouterState:
        """:meth:`on_planned` for a whole ledger at once (one copy of the state, not one per record)."""
        tracks = dict(state.tracks)
        planned = set(state.planned)
        sent = dict(state.sent)
        before = dict(state.notified_before)
        for person_id, keys, at_ms in sorted(records, key=lambda r: r[2]):
            for key in keys:
                aid = key.split("|", 1)[0]
                if aid in tracks:
                    tracks[aid] = replace(tracks[aid], notified=tracks[aid].notified | {person_id})
                else:
                    before[aid] = before.get(aid, frozenset()) | {person_id}
            planned.update(keys)
            sent[person_id] = (*sent.get(person_id, ()), at_ms)
        return replace(state, tracks=tracks, planned=frozenset(planned), sent=sent, notified_before=before)

    def on_tick(self, state: RouterState, now_ms: int, busy: Collection[str] = ()) -> tuple[RouterState, list[Action]]:
        """Advance every alert to ``now_ms`` and send what is due. ``busy``: ids of alerts in messages planned
        and not yet delivered (the notifier's ledger), whose tracks their delivery still reads."""
        actions: list[Action] = []
        for aid in sorted(state.tracks):
            state, acts = self._advance(state, state.tracks[aid], now_ms)
            actions.extend(acts)
        state, sends = self._flush(state, now_ms)
        actions.extend(sends)
        # The messages planned just now are not in the ledger yet: their alerts are as busy.
        planned_now = {p.alert.alert_id for send in sends if isinstance(send, Send) for p in send.items}
        return self._forget(state, now_ms, planned_now.union(busy)), actions

    # -- internals ---------------------------------------------------------------------------------------------

    def _put(self, state: RouterState, track: Track) -> RouterState:
        return replace(state, tracks={**state.tracks, track.alert.alert_id: track})

    def _drop_pending(self, state: RouterState, alert_id: str) -> RouterState:
        outbox = {}
        for pid, items in state.outbox.items():
            kept = tuple(p for p in items if p.alert.alert_id != alert_id or p.kind == "resolved")
            if kept:
                outbox[pid] = kept
        return replace(state, outbox=outbox)

    def _enqueue(
        self,
        state: RouterState,
        person: Person,
        alert: Alert,
        kind: str,
        step: int,
        now_ms: int,
        policy: SitePolicy | None,
        tag: str | None = None,
    ) -> RouterState:
        key = f"{alert.alert_id}|{tag if tag is not None else ('resolved' if kind == 'resolved' else step)}|{person.id}"
        waiting = state.outbox.get(person.id, ())
        if key in state.planned or any(p.key == key for p in waiting):
            return state
        not_before = now_ms
        if policy is not None and alert.severity is not Severity.CRITICAL:
            not_before = quiet_until(policy, now_ms) or now_ms
        item = Pending(key, alert, kind, step, now_ms, not_before)
        return replace(state, outbox={**state.outbox, person.id: (*waiting, item)})

    def _advance(self, state: RouterState, track: Track, now_ms: int) -> tuple[RouterState, list[Action]]:
        original = track
        alert = track.alert
        if track.acked or track.resolved_ms is not None or not alert.notify or track.next_ms > now_ms:
            return state, []
        policy = self.config.sites.get(alert.site)
        steps = policy.steps.get(alert.severity.value, ()) if policy else ()
        if policy is None or not steps:
            return state, []
        actions: list[Action] = []
        for i, step in enumerate(steps):
            deadline = track.opened_ms + step.after_ms
            if deadline > now_ms:
                continue
            if i <= track.step:
                # Entered already — maybe before a restart, with its notifications still in the outbox (quiet
                # hours, the group window, a rate hold) and not in the ledger: queue what was never planned.
                for role in step.roles:
                    for person in policy.people.get(role, ()):
                        kind = "open" if i == 0 else "escalated"
                        state = self._enqueue(state, person, alert, kind, i, now_ms, policy)
                continue
            track = replace(track, step=i, step_ms=deadline, reminders=0)
            if i > 0:
                evidence = {**alert.evidence, "step": i, "roles": list(step.roles), "opened_ms": track.opened_ms}
                actions.append(
                    Transition(
                        alert.model_copy(
                            update={"state": AlertState.ESCALATED, "at_ms": deadline, "evidence": evidence}
                        )
                    )
                )
            for role in step.roles:
                for person in policy.people.get(role, ()):
                    state = self._enqueue(state, person, alert, "open" if i == 0 else "escalated", i, now_ms, policy)
        if track.step >= 0 and policy.reminder_ms > 0:
            due = (now_ms - track.step_ms) // policy.reminder_ms
            if due > track.reminders:
                track = replace(track, reminders=due)
                for role in steps[track.step].roles:
                    for person in policy.people.get(role, ()):
                        state = self._enqueue(
                            state, person, alert, "reminder", track.step, now_ms, policy, tag=f"{track.step}r{due}"
                        )
        upcoming = [track.opened_ms + s.after_ms for s in steps[track.step + 1 :]]
        if track.step >= 0 and policy.reminder_ms > 0:
            upcoming.append(track.step_ms + (track.reminders + 1) * policy.reminder_ms)
        nxt = min(upcoming, default=2**62)
        if nxt != track.next_ms:
            track = replace(track, next_ms=nxt)
        # Most ticks change nothing; copying the tracks map only on change keeps a tick O(alerts).
        return (state if track is original else self._put(state, track)), actions

    def _flush(self, state: RouterState, now_ms: int) -> tuple[RouterState, list[Action]]:
        cfg = self.config
        window = cfg.group_window_ms
        if not any(
            p.not_before_ms <= now_ms and max(p.enqueued_ms, p.not_before_ms) + window <= now_ms
            for items in state.outbox.values()
            for p in items
        ):
            return state, []
        outbox = dict(state.outbox)
        sent = dict(state.sent)
        tracks = dict(state.tracks)
        planned = set(state.planned)
        actions: list[Action] = []
        for pid in sorted(state.outbox):
            items = state.outbox[pid]
            ready = [p for p in items if p.not_before_ms <= now_ms]
            if not ready:
                continue
            opened = min(max(p.enqueued_ms, p.not_before_ms) for p in ready)
            if now_ms < opened + cfg.group_window_ms:
                continue
            person = self._person(ready[0])
            if person is None:  # the person left the site file: nobody to tell
                outbox[pid] = tuple(p for p in items if p not in ready)
                continue
            history = tuple(t for t in sent.get(pid, ()) if t > now_ms - cfg.rate_window_ms)
            if len(history) >= person.rate_limit and not any(p.critical for p in ready):
                sent[pid] = history
                continue  # held: merged into the message that goes out when the window frees up
            msg = Send(message_id([p.key for p in ready]), person, tuple(ready), now_ms)
            actions.append(msg)
            rest = tuple(p for p in items if p not in ready)
            if rest:
                outbox[pid] = rest
            else:
                outbox.pop(pid, None)
            sent[pid] = (*history, now_ms)
            planned.update(msg.keys)
            for p in ready:
                t = tracks.get(p.alert.alert_id)
                if t is not None:
                    tracks[p.alert.alert_id] = replace(t, notified=t.notified | {pid})
        return replace(state, outbox=outbox, sent=sent, tracks=tracks, planned=frozenset(planned)), actions

    def _person(self, item: Pending) -> Person | None:
        pid = item.key.rsplit("|", 1)[1]
        policy = self.config.sites.get(item.alert.site)
        if policy is not None:
            for people in policy.people.values():
                for p in people:
                    if p.id == pid:
                        return p
        return self.config.person(pid)

    def _forget(self, state: RouterState, now_ms: int, busy: Collection[str] = ()) -> RouterState:
        """Drop the tracks of alerts resolved ``keep_resolved_ms`` before ``now_ms`` (event time: a resolution
        uploaded after a long outage is that old on arrival), unless a notification of theirs is still queued or
        on its way (``busy``): its message is built from the track when it is delivered."""
        horizon = now_ms - self.config.keep_resolved_ms
        old = [aid for aid, t in state.tracks.items() if t.resolved_ms is not None and t.resolved_ms < horizon]
        if not old:
            return state
        waiting = {p.alert.alert_id for items in state.outbox.values() for p in items}.union(busy)
        gone = set(old) - waiting
        if not gone:
            return state
        tracks = {aid: t for aid, t in state.tracks.items() if aid not in gone}
        # Their keys can never be planned again (the tracks are resolved), so the ledger's memory can go too.
        planned = frozenset(k for k in state.planned if k.split("|", 1)[0] not in gone)
        return replace(state, tracks=tracks, planned=planned)


def _opened_ms(alert: Alert) -> int:
    """Escalation counts from the opening event time (deterministic across restarts and replays)."""
    try:
        return int(datetime.fromisoformat(alert.opened_at.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return alert.at_ms
