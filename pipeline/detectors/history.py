"""Late data re-evaluated in event time: the checkpoint, the bounded history and the retrospective re-run.

Why: a reading behind the frontier (a store-and-forward upload after an outage, a delivery reordered by more
than the allowed lateness, a retransmit after a reconnect) carries the food's real history. It must be judged by
the rules it bears on, at its own event time, not only annotated.

How (per device, all in the state, see ``docs/rules.md`` "Late data"):

* **Checkpoint.** ``ckpt`` is the device's rule fields right after the last applied reading before the oldest
  *hole*. A hole opens when an applied reading's ``seq`` jumps over missing ones and more than 1.5 reporting
  intervals passed since the previous one (they may still come); the open end of the data (a silence) is one
  too. An in-order device has no hole: its checkpoint is its current
  state (``ckpt = None``, nothing stored) until a timer fires after its last reading, then ~1 KB until its next
  reading.
* **History.** ``hist`` holds the readings applied since the checkpoint, only while a hole is open, at most
  :data:`HIST_MAX` of them; past that the oldest holes are given up (the checkpoint moves to the first hole in
  the newer half, by one re-run that emits nothing new).
* **Re-run.** A late reading after the checkpoint waits in ``pending`` (a store-and-forward batch arrives item by
  item: it is evaluated once, at the next tick or release). Then the rules run twice from the checkpoint up to
  the frontier: over the history as it was (what has been reported) and over the history with the late
  readings merged in. The difference is emitted: alert transitions the late data reveals, with their true
  event times and ``evidence.retrospective: true``, ``detected_at`` and ``detection_delay_min``; a resolution
  moved by late data; an alert the late data disproves is **withdrawn** (a resolved record with
  ``evidence.withdrawn: true``, never zero-duration); masked intervals the late data adds. Ids are those of
  in-order processing (``alert_id(rule, subject, opened)``), so any arrival order within the bound ends with the
  same alerts.
* Liveness (offline, gap) follows *arrivals* and is not re-run: an upload does not erase an outage.
* **Beyond the bound** (before the checkpoint): annotated ``late`` with ``beyond_history: true`` and counted in
  ``late_count``, as before: never silent.
"""

from __future__ import annotations

from datetime import datetime
from operator import attrgetter
from typing import Any

from pipeline.contracts import rules as R
from pipeline.detectors.base import Output
from pipeline.detectors.device_state import ROR, RULE_FIELDS, BufItem, Ckpt, WorkFields
from pipeline.detectors.engine import NEG, dur_min
from pipeline.detectors.levels import COND_RULES
from pipeline.schemas import Alert, AlertState, Annotation, Severity, alert_id, ms_to_iso

#: Readings kept while a hole is open (~45 bytes each as JSON): 128 = 2 h of one-minute readings applied after
#: a reconnect before the backlog arrives.
HIST_MAX = 128
#: Late readings waiting for evaluation before one is forced (a store-and-forward batch holds up to 1,000).
PENDING_MAX = 2048


#: The rule fields of a working copy as a :data:`Ckpt` tuple (in C: it runs whenever a timer fires).
_rule_fields_of = attrgetter(*RULE_FIELDS)


def _key(item: BufItem) -> tuple[int, int]:
    return item[0], item[1]


def merge(hist: tuple[BufItem, ...], late: tuple[BufItem, ...]) -> tuple[BufItem, ...]:
    """The history with late readings merged in, in (ts, seq) order, each (ts, seq) once (retransmits)."""
    seen: set[tuple[int, int]] = set()
    out = []
    for item in sorted((*hist, *late), key=_key):
        k = item[:2]
        if k not in seen:
            seen.add(k)
            out.append(item)
    return tuple(out)


class HistoryMixin(WorkFields):
    def apply(self, item: BufItem) -> None:  # implemented by device._Work
        raise NotImplementedError

    def advance(self, t: int) -> None:  # implemented by device._Work
        raise NotImplementedError

    # -- the checkpoint ----------------------------------------------------------------------------------------

    def rules_snapshot(self) -> Ckpt:
        ckpt: Ckpt = _rule_fields_of(self)
        return ckpt

    def load_rules(self, c: Ckpt) -> None:
        # One unpacking into the slots, in :data:`RULE_FIELDS` order (a unit test holds the two together): every
        # re-run loads a checkpoint, and a ``setattr`` loop over the names took ~15 % of a late reading's cost.
        (
            self.last_ts,
            self.last_temp,
            self.door_since,
            self.defrost_since,
            self.startup_until,
            self.mask,
            self.door_warn,
            self.door_crit,
            self.conds,
            self.ror_anchors,
            self.stuck,
            self.battery_open,
            self.cum,
            self.mkt,
            self.last_seq,
        ) = c

    def hold_checkpoint(self) -> None:
        """Before a timer changes the rule fields: keep the state right after the last reading."""
        if self.ckpt is None:
            self.ckpt = self.rules_snapshot()

    def opens_hole(self, t: int, seq: int) -> bool:
        """Whether applying ``seq`` at ``t`` leaves a hole behind it (called before :meth:`apply`)."""
        ls = self.last_seq
        # A hole: seqs skipped *and* more than 1.5 intervals of event time since the last reading (devices whose
        # counter skips numbers but report on time have none; a missing reading leaves two intervals).
        if ls < 0 or seq <= ls + 1 or self.hist or t < self.abandon or t - self.last_ts <= self.d.hole_ms:
            return False
        self.hold_checkpoint()  # the state before this reading: where a late one in the hole starts from
        return True

    # -- the re-run --------------------------------------------------------------------------------------------

    def _rerun(self, base: Ckpt, items: tuple[BufItem, ...], until: int, abandon: int) -> HistoryMixin:
        """A working copy from ``base`` over ``items`` up to ``until``, liveness frozen (``retro``)."""
        w = type(self).__new__(type(self))
        w.d = self.d
        w.out = []
        w.later = []
        w.due_ok = False
        w.due = None
        w.clock = False
        w.retro = True
        w.abandon = abandon
        w.frontier, w.max_ts, w.seq_max, w.seq_bits, w.buf = (
            self.frontier,
            self.max_ts,
            self.seq_max,
            self.seq_bits,
            self.buf,
        )
        w.offline_open, w.gap_open, w.late_count = self.offline_open, self.gap_open, self.late_count
        w.load_rules(base)
        w.ckpt, w.hist, w.pending = None, (), ()
        w.now = base[0]
        for item in items:
            w.advance(item[0])
            w.apply(item)
        w.advance(until)
        if w.later:
            w.report_later()
        return w

    def reevaluate(self, abandon: bool = False) -> None:
        """Evaluate the pending late readings (or, with ``abandon``, give up the oldest holes) and emit what
        changes, marked retrospective. See the module docstring."""
        base = self.ckpt if self.ckpt is not None else self.rules_snapshot()
        # Late readings are behind ``now - lateness`` when they arrive, so the frontier may move up to them.
        until = max(self.frontier, max(p[0] for p in self.pending) if self.pending else NEG)
        self.frontier = until
        if abandon:
            items = self.hist
            cut = items[len(items) // 2][0]
            new = self._rerun(base, items, until, cut)
        else:
            items = merge(self.hist, self.pending)
            old = self._rerun(base, self.hist, until, NEG)
            new = self._rerun(base, items, until, NEG)
            self.out.extend(self._diff(old, new, max(until, items[-1][0])))
        self.load_rules(new.rules_snapshot())
        self.ckpt, self.hist, self.pending = new.ckpt, new.hist, ()
        self.due_ok = False
        if new.now > self.now:
            self.now = new.now

    # -- what changed ------------------------------------------------------------------------------------------

    def open_alerts(self) -> dict[str, tuple[str, Severity, int]]:
        """Alerts open in this state: id -> (rule, severity, opened)."""
        d = self.d
        out: dict[str, tuple[str, Severity, int]] = {}

        def add(rule: str, sev: Severity, opened: int | None) -> None:
            if opened is not None:
                out[alert_id(rule, d.subject, opened)] = (rule, sev, opened)

        for slot, c in enumerate(self.conds):
            if c is not None and c[1] is not None:
                if slot == ROR:
                    sev = d.config.rate_of_rise.severity
                else:
                    lv = d.levels[slot]
                    assert lv is not None
                    sev = lv.sev
                add(COND_RULES[slot], sev, c[1])
        add(R.COLDCHAIN_DOOR_OPEN, Severity.WARNING, self.door_warn)
        add(R.COLDCHAIN_DOOR_OPEN, Severity.CRITICAL, self.door_crit)
        if self.stuck is not None:
            add(R.LIVENESS_STUCK, Severity.WARNING, self.stuck[2])
        add(R.LIVENESS_BATTERY_LOW, Severity.WARNING, self.battery_open)
        if self.cum is not None:
            add(R.COLDCHAIN_CUMULATIVE, d.config.cumulative.severity, self.cum[4])
        if self.mkt is not None:
            add(R.COLDCHAIN_MKT, d.config.mkt.severity, self.mkt[5])
        return out

    def _diff(self, old: HistoryMixin, new: HistoryMixin, at: int) -> list[Output]:
        """What ``new`` (with the late data) reports beyond what ``old`` (already reported) did, at event time
        ``at`` (the detection instant, for the evidence)."""
        if self.d.shortcuts and not old.out and not new.out and _open_key(old) == _open_key(new):
            # Nothing reported either way and the same alerts open: nothing to emit. The usual case of a reading
            # delayed a little past the lateness (no rule touched), without building both open-alert maps.
            return []
        d = self.d
        old_alerts = [o for o in old.out if isinstance(o, Alert)]
        new_alerts = [o for o in new.out if isinstance(o, Alert)]
        reported = {(a.alert_id, a.state, a.at_ms) for a in old_alerts}
        old_last = {a.alert_id: a for a in old_alerts}
        new_last = {a.alert_id: a for a in new_alerts}
        old_open, new_open = old.open_alerts(), new.open_alerts()
        out: list[Output] = []
        for a in new_alerts:
            if (a.alert_id, a.state, a.at_ms) not in reported:
                out.append(_retrospective(a, at))
        emitted_open = {o.alert_id for o in out if isinstance(o, Alert) and o.state is AlertState.OPEN}
        for aid, (rule, sev, opened) in new_open.items():
            before = old_last.get(aid)
            if before is not None and before.state is AlertState.RESOLVED and aid not in emitted_open:
                # Reported resolved, but the late data shows it still holds: open again (same id).
                now = new_last.get(aid)
                rec = now if now is not None else d.open_alert(rule, sev, at=opened, notify=True, evidence={})
                rec = rec.model_copy(update={"evidence": rec.evidence | {"reopened": True}})
                out.append(_retrospective(rec, at))
        for aid in (old_last.keys() | old_open.keys()) - (new_last.keys() | new_open.keys()):
            prev = old_last.get(aid)
            if prev is not None:
                rule, sev, opened_at = prev.rule, prev.severity, _opened_ms(old, prev)
                end = prev.at_ms if prev.state is AlertState.RESOLVED else at
            else:
                rule, sev, opened_at = old_open[aid]
                end = at
            rec = d.resolve_alert(
                rule,
                sev,
                opened=opened_at,
                at=end,
                notify=True,
                evidence={"withdrawn": True, "reason": "late readings show the condition did not hold"},
            )
            out.append(_retrospective(rec, at))
        reported_ann = {(a.kind, a.start_ms, a.end_ms) for a in old.out if isinstance(a, Annotation)}
        for o in new.out:
            if isinstance(o, Annotation) and (o.kind, o.start_ms, o.end_ms) not in reported_ann:
                out.append(o.model_copy(update={"detail": o.detail | {"retrospective": True}}))
        out.sort(key=lambda o: o.at_ms if isinstance(o, Alert) else o.end_ms)
        return out


def _open_key(w: HistoryMixin) -> tuple[Any, ...]:
    """The fields :meth:`HistoryMixin.open_alerts` reads (each open alert's opening instant): equal keys, equal
    open alerts (same device, same rules)."""
    stuck, cum, mkt = w.stuck, w.cum, w.mkt
    return (
        [c[1] if c else None for c in w.conds],  # a list comprehension: half a generator's cost
        w.door_warn,
        w.door_crit,
        None if stuck is None else stuck[2],
        w.battery_open,
        None if cum is None else cum[4],
        None if mkt is None else mkt[5],
    )


def _opened_ms(w: HistoryMixin, a: Alert) -> int:
    """The opening instant of an alert record (its id is derived from it)."""
    return round(datetime.fromisoformat(a.opened_at).timestamp() * 1000)


def _retrospective(a: Alert, at: int) -> Alert:
    detected = max(at, a.at_ms)
    ev: dict[str, Any] = a.evidence | {
        "retrospective": True,
        "detected_at": ms_to_iso(detected),
        "detection_delay_min": dur_min(a.at_ms, detected),
    }
    return a.model_copy(update={"evidence": ev})


def net_alerts(outputs: list[Output] | list[Alert]) -> dict[str, Alert]:
    """The alerts a stream of outputs ends with: the last record of each id, without withdrawn ones. Any arrival
    order within the history bound gives the same net alerts as in-order arrival (property-tested)."""
    last: dict[str, Alert] = {}
    for o in outputs:
        if isinstance(o, Alert):
            last[o.alert_id] = o
    return {k: a for k, a in last.items() if not a.evidence.get("withdrawn")}
