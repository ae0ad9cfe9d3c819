"""The event-time machinery every detector shares: time units, the frontier's wake time, sorted buffers, late-data
annotations and the alert factory.

The rule families (:mod:`~pipeline.detectors.levels`, :mod:`~pipeline.detectors.aggregates`,
:mod:`~pipeline.detectors.masks`, :mod:`~pipeline.detectors.liveness`, :mod:`~pipeline.detectors.kitchen`) only
decide *what* happens at an event time; this module holds *when* (the frontier, wake times) and *how it is
reported* (alerts with deterministic ids, annotations). See ``docs/rules.md``, "Time, lateness, determinism".
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

from pipeline.detectors.base import Output
from pipeline.schemas import Alert, AlertState, Annotation, Severity, alert_id, ms_to_iso

#: "Never" / "before everything" in event-time ms (fits a JSON integer and a signed 64-bit field).
NEG = -(1 << 62)
MIN_MS = 60_000

T = TypeVar("T", bound=tuple[Any, ...])


def ms(minutes: float) -> int:
    """Minutes (the site file's unit) to event-time milliseconds."""
    return round(minutes * MIN_MS)


def dur_min(a: int, b: int) -> float:
    """The minutes from ``a`` to ``b``, to the ms (evidence fields)."""
    return round((b - a) / MIN_MS, 3)


def tuples(x: Any) -> Any:
    """JSON lists back to the tuples the states are made of (states compare by value, and tuples hash)."""
    if isinstance(x, list):
        return tuple(tuples(y) for y in x)
    return x


def insert_sorted(buf: tuple[T, ...], item: T, key: Callable[[T], Any]) -> tuple[T, ...]:
    """``buf`` (sorted by ``key``) with ``item`` added. Arrivals are usually in order: an append."""
    if not buf or key(item) >= key(buf[-1]):
        return (*buf, item)
    return tuple(sorted((*buf, item), key=key))


def wake_time(buf: tuple[Any, ...], due: int | None, frontier: int, max_ts: int, lateness: int) -> int | None:
    """When a tick has work: ``target = max(max_ts, now) - lateness`` must pass the frontier and reach the
    first buffered event (``buf[0][0] < target``) or the next deadline (``due <= target``).

    ``None``: nothing until the next event; ``NEG``: due now."""
    if buf:
        first = buf[0][0] + 1
        m = first if due is None or first < due else due
    elif due is None:
        return None
    else:
        m = due
    need = max(m, frontier + 1) + lateness
    return need if max_ts < need else NEG


# -- de-duplication and buffering by (event time, sender, id): the kitchen and rapid-test detectors ------------

#: Remembered (hash of sender|id, event ts) pairs, oldest first.
Seen = tuple[tuple[int, int], ...]


class SeenIds:
    """Exact de-duplication by (sender, id) (camera event ids, rapid-test result ids), remembered for
    ``horizon_ms`` of event time behind the frontier, at most ``most`` of them (a duplicate older than that is
    behind the frontier: late, never applied twice). Kept as 56-bit hashes so the state stays small."""

    def __init__(self, horizon_ms: int, most: int) -> None:
        self.horizon_ms = horizon_ms
        self.most = most

    @staticmethod
    def remember(seen: Seen, sender: str, ident: str, ts: int) -> Seen | None:
        """``seen`` with (sender, id) added at ``ts``; ``None`` for a duplicate (the state stays as it is)."""
        h = int.from_bytes(hashlib.blake2b(f"{sender}|{ident}".encode(), digest_size=7).digest(), "big")
        for sh, _ in seen:
            if sh == h:
                return None
        return (*seen, (h, ts))

    def trim(self, seen: Seen, frontier: int) -> Seen:
        """Forget what is past the horizon behind ``frontier``, keeping at most the newest ``most``."""
        horizon = frontier - self.horizon_ms
        if len(seen) > self.most or (seen and seen[0][1] < horizon):
            kept = sorted((s for s in seen if s[1] >= horizon), key=lambda s: s[1])
            return tuple(kept[-self.most :])
        return seen


def _by_ts_sender_id(item: tuple[Any, ...]) -> tuple[Any, ...]:
    return item[:3]


def buffer_event(buf: tuple[T, ...], item: T) -> tuple[T, ...]:
    """``buf`` with an item ``(ts, sender, id, ...)`` added in (event time, sender, id) order: a stable order
    for items of the same instant, whatever their arrival order."""
    return insert_sorted(buf, item, _by_ts_sender_id)


class BufferedWork:
    """The release loop of a working copy whose state buffers items ``(ts, ...)`` until the frontier passes
    them (kitchen and rapid-test detectors; the device detector's has lateness re-runs of its own)."""

    #: Most items buffered: past it the oldest is processed early and the frontier follows it.
    buffer_max: int
    buf: tuple[Any, ...]
    frontier: int

    def advance(self, t: int) -> None:
        """Fire the deadlines due before an item at ``t``."""
        raise NotImplementedError

    def apply(self, item: Any) -> None:
        """One item, in event-time order."""
        raise NotImplementedError

    def release(self, target: int) -> None:
        """Process the buffered items before ``target`` (and any over :attr:`buffer_max`), firing deadlines
        between them, then move the frontier to ``target``."""
        buf = self.buf
        i, n = 0, len(buf)
        while i < n and (buf[i][0] < target or n - i > self.buffer_max):
            item = buf[i]
            i += 1
            self.advance(item[0])
            self.apply(item)
            target = max(target, item[0])
        self.buf = buf[i:] if i else buf
        self.advance(target)
        self.frontier = max(self.frontier, target)


class Emits:
    """What a working copy reports through: its detector ``d`` (an :class:`AlertFactory`) and its outputs."""

    d: Any
    out: list[Output]

    def emit_open(self, rule: str, severity: Severity, *, at: int, notify: bool, evidence: dict[str, Any]) -> None:
        self.out.append(self.d.open_alert(rule, severity, at=at, notify=notify, evidence=evidence))

    def emit_resolved(
        self, rule: str, severity: Severity, *, opened: int, at: int, notify: bool, evidence: dict[str, Any]
    ) -> None:
        self.out.append(self.d.resolve_alert(rule, severity, opened=opened, at=at, notify=notify, evidence=evidence))

    def emit_resolved_stages(
        self, rule: str, warn: int | None, crit: int | None, *, at: int, notify: bool, evidence: dict[str, Any]
    ) -> None:
        """Resolve a two-stage alert (a warning after T1, a critical after T2: door, unattended stove): each stage
        still open, warning first, each with its own copy of the evidence."""
        for opened, severity in ((warn, Severity.WARNING), (crit, Severity.CRITICAL)):
            if opened is not None:
                self.emit_resolved(rule, severity, opened=opened, at=at, notify=notify, evidence=dict(evidence))


class EmitsInOrder(Emits):
    """:class:`Emits` for a working copy whose alerts can be resolved at the instant they opened: it holds a
    resolution stamped past that instant until time reaches its stamp, so one subject's outputs stay in event-time
    order (base.py).

    A deadline fires before an event at the same time (docs/rules.md), so an event at ``t`` can clear what a
    deadline opened at ``t``; the no-zero-duration rule stamps that resolution ``t + 1``. Reported at once, it
    would come before what the same instant still emits (the rest of that event, the next events at ``t``,
    deadlines due at ``t`` after it). Nothing else is stamped past the instant being processed, so holding just
    these keeps the order without sorting every call's outputs. The held list lives in the working copy only:
    the durable state never holds it (a call reports everything it holds before it ends).

    The working copy sets :attr:`later` to ``[]``, calls :meth:`report_later` with ``t`` before it fires a
    deadline or applies an event at ``t``, and without ``t`` when its call (or a re-run) ends."""

    #: Resolutions stamped after the instant that resolved them, not yet reported (oldest first).
    later: list[Alert]

    def emit_resolved(
        self, rule: str, severity: Severity, *, opened: int, at: int, notify: bool, evidence: dict[str, Any]
    ) -> None:
        rec: Alert = self.d.resolve_alert(rule, severity, opened=opened, at=at, notify=notify, evidence=evidence)
        if rec.at_ms > at:
            self.later.append(rec)
        else:
            self.out.append(rec)

    def report_later(self, t: int | None = None) -> None:
        """Report the held resolutions stamped at or before ``t`` (all of them: ``None``, the end of a call),
        before anything at ``t`` is."""
        later = self.later
        if t is None or all(a.at_ms <= t for a in later):
            self.out.extend(later)
            later.clear()
        else:
            self.out.extend(a for a in later if a.at_ms <= t)
            later[:] = [a for a in later if a.at_ms > t]


class AlertFactory:
    """Alert records for one subject (``site`` and ``subject`` are set by the detector, per device or kitchen).

    Ids are ``alert_id(rule, subject, opened)``: the same condition found live, in a replay or retrospectively
    from late data is the same alert. No record has zero duration: a resolution at (or, by a clock step, before)
    its opening instant is stamped 1 ms after it, so ``resolved_at > opened_at`` always holds and the record is
    never mistaken for a repeat of the opening (docs/rules.md)."""

    site: str
    subject: str

    def __init__(self, site: str, subject: str) -> None:
        self.site = site
        self.subject = subject

    def open_alert(self, rule: str, severity: Severity, *, at: int, notify: bool, evidence: dict[str, Any]) -> Alert:
        """The ``open`` transition of an alert whose condition was met at event time ``at``."""
        return self._transition(rule, severity, AlertState.OPEN, at, None, notify, evidence)

    def resolve_alert(
        self, rule: str, severity: Severity, *, opened: int, at: int, notify: bool, evidence: dict[str, Any]
    ) -> Alert:
        """The ``resolved`` transition of the alert opened at ``opened``, its condition cleared at ``at``."""
        return self._transition(rule, severity, AlertState.RESOLVED, opened, max(at, opened + 1), notify, evidence)

    def _transition(
        self,
        rule: str,
        severity: Severity,
        state: AlertState,
        opened: int,
        resolved: int | None,
        notify: bool,
        evidence: dict[str, Any],
    ) -> Alert:
        """An alert record of this subject. Its id is ``alert_id(rule, subject, opened)`` (replay-safe); no alert
        ever has zero duration, so a resolution is at least 1 ms after the opening."""
        return Alert(
            alert_id=alert_id(rule, self.subject, opened),
            rule=rule,
            severity=severity,
            site=self.site,
            subject=self.subject,
            state=state,
            opened_at=ms_to_iso(opened),
            resolved_at=None if resolved is None else ms_to_iso(resolved),
            at_ms=opened if resolved is None else resolved,
            notify=notify,
            evidence=evidence,
        )

    def late_annotation(self, ts: int, frontier: int, count: int, detail: dict[str, Any]) -> Annotation:
        """An event that arrived behind the frontier and beyond what can be re-evaluated: reported, counted."""
        return Annotation(
            kind="late",
            site=self.site,
            subject=self.subject,
            start_ms=ts,
            end_ms=ts,
            detail=detail | {"frontier_ms": frontier, "late_by_ms": frontier - ts, "late_count": count},
        )
