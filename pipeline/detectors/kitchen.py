"""Per-kitchen pure detector: unattended stove, hygiene events, exact de-duplication by camera event id.

Subject: ``"<site>/<kitchen>"`` (kitchen ids are unique only within a site). The agent should key its kitchen
table by the same string (as bytes). Usage mirrors :mod:`pipeline.detectors.device`::

    det = KitchenDetector(resolve_kitchen_rules(cfg, site, kitchen))
    new, outputs = det.on_event(state, kitchen_event, now_ms)      # schemas.KitchenEvent
    new, outputs = det.on_event_dict(state, item, now_ms)          # fast path: a RecordBatch item (dict)
    new, outputs = det.on_tick(new, now_ms)
    if new is not state: table[key] = det.state_to_bytes(new)

Event time, allowed lateness, the frontier and late events work exactly as for devices (see that module):
events wait in a bounded buffer sorted by ``(ts, camera, event_id)`` until the frontier passes them; an event
before the frontier is reported as an Annotation ``late`` and counted, not applied.

De-duplication: ``(camera, event_id)`` pairs are remembered (as 56-bit hashes) for :data:`DEDUP_HORIZON_MS`
of event time behind the frontier, at most :data:`DEDUP_MAX` of them; a duplicate returns the same state and
no outputs. A duplicate older than that horizon is before the frontier anyway, so it is reported as late,
never applied twice.

:func:`apply_verdict` is the pure transition for marking a hygiene alert confirmed or a false positive.
"""

from __future__ import annotations

from enum import StrEnum
from operator import attrgetter
from typing import Any, NamedTuple

from pipeline import serde
from pipeline.contracts import rules as R
from pipeline.detectors.base import Output
from pipeline.detectors.calendar import window_state
from pipeline.detectors.engine import (
    NEG,
    AlertFactory,
    BufferedWork,
    EmitsInOrder,
    SeenIds,
    buffer_event,
    tuples,
    wake_time,
)
from pipeline.detectors.rules import KitchenRules
from pipeline.schemas import Alert, KitchenEvent, KitchenEventType, Severity, alert_id, ms_to_iso

BUFFER_MAX = 256
DEDUP_HORIZON_MS = 3_600_000
DEDUP_MAX = 512
_DEDUP = SeenIds(DEDUP_HORIZON_MS, DEDUP_MAX)
_MIN = 60_000

_PRESENT = KitchenEventType.PERSON_PRESENT.value
_ABSENT = KitchenEventType.PERSON_ABSENT.value
_COUNT = KitchenEventType.PERSON_COUNT.value
_ON = KitchenEventType.STOVE_ON.value
_OFF = KitchenEventType.STOVE_OFF.value

# ts, camera, event_id, type, zone, confidence, count, image_url
KItem = tuple[int, str, str, str, str | None, float | None, int | None, str | None]
# type, opened, count, max confidence
HygieneOpen = tuple[str, int, int, float]


class KitchenState(NamedTuple):
    frontier: int = NEG
    max_ts: int = NEG
    #: (hash of camera|event_id, ts), oldest first
    seen: tuple[tuple[int, int], ...] = ()
    buf: tuple[KItem, ...] = ()
    stove_since: int | None = None
    #: latest presence per cook-zone camera: (camera, present)
    presence: tuple[tuple[str, bool], ...] = ()
    unattended_since: int | None = None
    unattended_warn: int | None = None
    unattended_crit: int | None = None
    hygiene: tuple[HygieneOpen, ...] = ()
    late_count: int = 0


class KitchenDetector(AlertFactory):
    name = "kitchen"

    def __init__(self, config: KitchenRules) -> None:
        self.config = config
        self.site = config.site
        self.subject = config.subject
        self.lateness = round(config.allowed_lateness_min * _MIN)
        u = config.unattended
        self.warn_ms = round(u.warn_min * _MIN)
        self.crit_ms = round(u.critical_min * _MIN)
        self.zones = frozenset(u.cook_zones)
        h = config.hygiene
        self.min_conf = h.min_confidence
        self.dedup_ms = round(h.dedup_min * _MIN)
        self.hyg_sev: dict[str, Severity] = {t.value: s for t, s in h.severities.items() if s is not None}
        self.tz = config.timezone
        self.hours = config.service_hours

    # -- protocol ------------------------------------------------------------------------------------------------

    def initial(self) -> KitchenState:
        return KitchenState()

    def on_event(self, state: KitchenState, event: KitchenEvent, now_ms: int) -> tuple[KitchenState, list[Output]]:
        item: KItem = (
            event.ts_ms,
            event.camera,
            event.event_id,
            event.type.value,
            event.zone,
            event.confidence,
            event.count,
            event.image_url,
        )
        return self._arrive(state, item, now_ms)

    def on_event_dict(self, state: KitchenState, d: dict[str, Any], now_ms: int) -> tuple[KitchenState, list[Output]]:
        """Fast path for a RecordBatch item. Types are checked on arrival (``ValueError``: the runner
        dead-letters the item): an event buffered with a bad field would fail every later call for its kitchen."""
        item: KItem = (
            d["ts_ms"],
            d["camera"],
            d["event_id"],
            d["type"],
            d.get("zone"),
            d.get("confidence"),
            d.get("count"),
            d.get("image_url"),
        )
        ts, camera, event_id, kind, zone, confidence, count, image_url = item
        if (
            type(ts) is not int
            or type(camera) is not str
            or type(event_id) is not str
            or type(kind) is not str
            or (zone is not None and type(zone) is not str)
            or (confidence is not None and type(confidence) is not float and type(confidence) is not int)
            or (count is not None and type(count) is not int)
            or (image_url is not None and type(image_url) is not str)
        ):
            raise ValueError("an event needs integer ts_ms and count, string ids, type and zone, numeric confidence")
        return self._arrive(state, item, now_ms)

    #: The :class:`~pipeline.detectors.base.Detector` protocol's name for the RecordBatch fast path.
    on_item = on_event_dict

    def on_verdict_dict(self, state: KitchenState, d: dict[str, Any], now_ms: int) -> tuple[KitchenState, list[Output]]:
        """A person's verdict on one of this kitchen's hygiene alerts (a ``kitchen_verdicts`` item,
        :class:`~pipeline.contracts.models.KitchenVerdict`), applied on arrival.

        A false positive on an episode still open ends it (resolved at the kitchen's frontier, evidence saying
        why): further events of that type within the de-dup window would otherwise be counted into an alert a
        person has just dismissed; now the next one opens an alert of its own. ``confirmed`` changes nothing
        here (the episode goes on), nor does a verdict on an episode already over or on another kitchen's
        alert: the same state, no outputs, so a redelivered verdict is harmless."""
        alert, verdict, by, at = d["alert_id"], d["verdict"], d.get("by", ""), d["at_ms"]
        if type(alert) is not str or verdict not in ("confirmed", "false_positive") or type(at) is not int:
            raise ValueError("a verdict needs a string alert_id, confirmed or false_positive, integer at_ms")
        if verdict != "false_positive":
            return state, []
        for i, (typ, opened, count, conf) in enumerate(state.hygiene):
            rule = R.hygiene(typ)
            if alert_id(rule, self.subject, opened) != alert:
                continue
            ev = {
                "type": typ,
                "events": count,
                "max_confidence": conf,
                "dedup_min": self.config.hygiene.dedup_min,
                "verdict": verdict,
                "verdict_at": ms_to_iso(at),
                "verdict_by": by,
                "reason": "false_positive",
            }
            end = max(state.frontier, opened)
            out = self.resolve_alert(rule, self.hyg_sev[typ], opened=opened, at=end, notify=False, evidence=ev)
            return state._replace(hygiene=(*state.hygiene[:i], *state.hygiene[i + 1 :])), [out]
        return state, []

    def on_tick(self, state: KitchenState, now_ms: int) -> tuple[KitchenState, list[Output]]:
        target = max(state.max_ts, now_ms) - self.lateness
        if target <= state.frontier:
            return state, []
        if not (state.buf and state.buf[0][0] < target):
            dl = _KWork(self, state).next_deadline()
            if dl is None or dl > target:
                return state, []
        w = _KWork(self, state)
        w.release(target)
        return w.freeze(), w.out

    def wake_ms(self, state: KitchenState) -> int | None:
        """The earliest ``now_ms`` at which :meth:`on_tick` can change ``state`` (see the device detector's)."""
        return wake_time(state.buf, _KWork(self, state).next_deadline(), state.frontier, state.max_ts, self.lateness)

    def state_to_bytes(self, state: KitchenState) -> bytes:
        return serde.dumps(list(state))

    def state_from_bytes(self, data: bytes) -> KitchenState:
        return KitchenState(*(tuples(x) for x in serde.loads(data)))

    # -- arrival ---------------------------------------------------------------------------------------------------

    def _arrive(self, state: KitchenState, item: KItem, now_ms: int) -> tuple[KitchenState, list[Output]]:
        ts = item[0]
        seen = _DEDUP.remember(state.seen, item[1], item[2], ts)
        if seen is None:
            return state, []
        if ts < state.frontier:
            count = state.late_count + 1
            ann = self.late_annotation(
                ts, state.frontier, count, {"camera": item[1], "event_id": item[2], "type": item[3]}
            )
            return state._replace(seen=_DEDUP.trim(seen, state.frontier), late_count=count), [ann]
        buf = state.buf
        buf = buffer_event(buf, item)
        max_ts = max(ts, state.max_ts)
        # Event time only, as for devices: an upload of a backlog arrives event by event long after it was
        # recorded, and moving to ``now_ms - lateness`` after its first event would make the rest of it late
        # (or not, depending on where the last tick fell: live and replay could differ). Ticks move it by now.
        target = max_ts - self.lateness
        if target <= state.frontier and len(buf) <= BUFFER_MAX:
            return state._replace(seen=_DEDUP.trim(seen, state.frontier), buf=buf, max_ts=max_ts), []
        w = _KWork(self, state)
        w.buf, w.max_ts = buf, max_ts
        w.release(target)
        w.seen = _DEDUP.trim(seen, w.frontier)
        return w.freeze(), w.out


#: A working copy's fields as a :class:`KitchenState` tuple.
_state_fields_of = attrgetter(*KitchenState._fields)


class _KWork(BufferedWork, EmitsInOrder):
    __slots__ = (*KitchenState._fields, "d", "later", "now", "orig", "out")
    buffer_max = BUFFER_MAX

    def __init__(self, d: KitchenDetector, s: KitchenState) -> None:
        self.d = d
        self.orig = s
        self.out: list[Output] = []
        self.later = []
        self.now = s.frontier
        (
            self.frontier,
            self.max_ts,
            self.seen,
            self.buf,
            self.stove_since,
            self.presence,
            self.unattended_since,
            self.unattended_warn,
            self.unattended_crit,
            self.hygiene,
            self.late_count,
        ) = s

    def freeze(self) -> KitchenState:
        if self.later:
            self.report_later()
        new = KitchenState._make(_state_fields_of(self))
        return self.orig if new == self.orig else new

    def advance(self, t: int) -> None:
        while True:
            dl = self.next_deadline()
            if dl is None or dl > t:
                break
            self.fire(dl)
        self.now = max(self.now, t)

    # -- unattended ----------------------------------------------------------------------------------------------

    def _in_service(self, t: int) -> tuple[bool, int | None]:
        d = self.d
        if not d.hours:
            return True, None
        return window_state(d.tz, d.hours, t)

    def _update_unattended(self, t: int) -> None:
        d = self.d
        in_service, _ = self._in_service(t)
        cond = self.stove_since is not None and in_service and not any(p for _, p in self.presence)
        if cond and self.unattended_since is None:
            self.unattended_since = t
        elif not cond and self.unattended_since is not None:
            since = self.unattended_since
            reason = (
                "stove_off"
                if self.stove_since is None
                else ("person_returned" if any(p for _, p in self.presence) else "service_hours_ended")
            )
            self.emit_resolved_stages(
                R.KITCHEN_UNATTENDED,
                self.unattended_warn,
                self.unattended_crit,
                at=t,
                notify=d.config.unattended.notify_on_clear,
                evidence={"unattended_since": ms_to_iso(since), "unattended_min": (t - since) / _MIN, "reason": reason},
            )
            self.unattended_since = self.unattended_warn = self.unattended_crit = None

    def next_deadline(self) -> int | None:
        d = self.d
        cands: list[int] = []
        s = self.unattended_since
        if s is not None:
            if self.unattended_warn is None:
                cands.append(s + d.warn_ms)
            if self.unattended_crit is None:
                cands.append(s + d.crit_ms)
        if self.stove_since is not None and d.hours:
            _, change = self._in_service(self.now)
            if change is not None:
                cands.append(change)
        for h in self.hygiene:
            cands.append(h[1] + d.dedup_ms)
        return min(cands) if cands else None

    def fire(self, t: int) -> None:
        d = self.d
        if self.later:
            self.report_later(t)
        self.now = t
        if self.stove_since is not None and d.hours:
            self._update_unattended(t)
        s = self.unattended_since
        if s is not None:
            for stage, ms, sev in (
                ("warning", d.warn_ms, Severity.WARNING),
                ("critical", d.crit_ms, Severity.CRITICAL),
            ):
                opened = self.unattended_warn if stage == "warning" else self.unattended_crit
                if opened is None and s + ms == t:
                    ev = {
                        "stove_on_since": ms_to_iso(self.stove_since or s),
                        "unattended_since": ms_to_iso(s),
                        "unattended_min": (t - s) / _MIN,
                        "stage": stage,
                    }
                    self.emit_open(R.KITCHEN_UNATTENDED, sev, at=t, notify=True, evidence=ev)
                    if stage == "warning":
                        self.unattended_warn = t
                    else:
                        self.unattended_crit = t
        if self.hygiene:
            keep = []
            for typ, opened, count, conf in self.hygiene:
                if opened + d.dedup_ms == t:
                    ev = {"type": typ, "events": count, "max_confidence": conf, "dedup_min": d.config.hygiene.dedup_min}
                    self.emit_resolved(R.hygiene(typ), d.hyg_sev[typ], opened=opened, at=t, notify=False, evidence=ev)
                else:
                    keep.append((typ, opened, count, conf))
            self.hygiene = tuple(keep)

    # -- one event -----------------------------------------------------------------------------------------------------

    def apply(self, item: KItem) -> None:
        d = self.d
        t, camera, event_id, typ, zone, conf, count, image_url = item
        if self.later:
            self.report_later(t)
        self.now = t
        if typ in (_ON, _OFF):
            if typ == _ON and self.stove_since is None:
                self.stove_since = t
            elif typ == _OFF:
                self.stove_since = None
            self._update_unattended(t)
        elif typ in (_PRESENT, _ABSENT, _COUNT):
            if zone is None or zone in d.zones:
                present = typ == _PRESENT or (typ == _COUNT and (count or 0) > 0)
                pres = dict(self.presence)
                pres[camera] = present
                self.presence = tuple(sorted(pres.items()))
                self._update_unattended(t)
        elif typ in d.hyg_sev:
            c = 1.0 if conf is None else conf
            if c < d.min_conf:
                return
            for i, (htyp, opened, n, mc) in enumerate(self.hygiene):
                if htyp == typ:
                    self.hygiene = (*self.hygiene[:i], (htyp, opened, n + 1, max(mc, c)), *self.hygiene[i + 1 :])
                    return
            self.hygiene = (*self.hygiene, (typ, t, 1, c))
            ev: dict[str, Any] = {
                "type": typ,
                "confidence": conf,
                "min_confidence": d.min_conf,
                "camera": camera,
                "event_id": event_id,
                "zone": zone,
                "dedup_min": d.config.hygiene.dedup_min,
            }
            if image_url:
                ev["image_url"] = image_url
            self.emit_open(R.hygiene(typ), d.hyg_sev[typ], at=t, notify=d.config.hygiene.notify, evidence=ev)


# ---------------------------------------------------------------------------------------------------------------
# Verdicts on hygiene alerts
# ---------------------------------------------------------------------------------------------------------------


class Verdict(StrEnum):
    CONFIRMED = "confirmed"
    FALSE_POSITIVE = "false_positive"


class VerdictError(ValueError):
    pass


def apply_verdict(alert: Alert, verdict: Verdict | str, at_ms: int, by: str | None = None) -> Alert:
    """Mark a hygiene alert confirmed or a false positive: a pure transition on the alert record.

    * Only ``kitchen.hygiene.*`` alerts take a verdict (:class:`VerdictError` otherwise, or for an unknown verdict).
    * Unreviewed -> confirmed | false_positive. The same verdict again returns the *same* object (idempotent, so a
      repeated click or a redelivered API call changes nothing). A different verdict later is a correction: the
      previous one is kept in ``evidence["verdict_history"]``.
    * The verdict lives in ``evidence`` (``verdict``, ``verdict_at``, ``verdict_by``); the lifecycle ``state`` is
      untouched, so it composes with acknowledge/resolve in any order.
    """
    if not alert.rule.startswith(R.KITCHEN_HYGIENE + "."):
        raise VerdictError(f"only kitchen.hygiene.* alerts take a verdict, not {alert.rule}")
    try:
        v = Verdict(verdict)
    except ValueError:
        raise VerdictError(f"unknown verdict {verdict!r} (confirmed or false_positive)") from None
    ev = dict(alert.evidence)
    previous = ev.get("verdict")
    if previous == v.value:
        return alert
    if previous is not None:
        ev["verdict_history"] = [
            *ev.get("verdict_history", []),
            {"verdict": previous, "at": ev.get("verdict_at"), "by": ev.get("verdict_by")},
        ]
    ev |= {"verdict": v.value, "verdict_at": ms_to_iso(at_ms), "verdict_by": by}
    return alert.model_copy(update={"evidence": ev})
