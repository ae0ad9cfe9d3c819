"""All per-device rules in one pure detector: levels, cumulative budget, rate of rise, MKT, door, masks,
liveness (offline, gap, stuck, battery), lateness and exact de-duplication by ``seq``.

How the agent uses it (one :class:`DeviceDetector` per device, built from
:func:`pipeline.siteconfig.resolve_device_rules`; one :class:`DeviceState` per device in a Faust table)::

    det = DeviceDetector(rules)
    state = det.state_from_bytes(raw) if raw else det.initial()
    new, outputs = det.on_reading_dict(state, item, now_ms)   # fast path: a RecordBatch item (plain dict)
    # or det.on_event(state, reading, now_ms) with a schemas.Reading
    new, outputs = det.on_tick(new, now_ms)                    # on a tick record / timer
    if new is not state: table[key] = det.state_to_bytes(new)  # the SAME object means nothing changed

``now_ms`` must come from the one clock abstraction (:mod:`pipeline.clock`): wall time live, the replay's
tick time in replay. It only moves the *frontier* (below); every alert carries event times.

Event time, lateness and the frontier
-------------------------------------
Readings are not processed on arrival: they wait in a small buffer in the state, sorted by ``(ts, seq)``, until
the frontier passes them. The frontier ``P`` only moves forward; it becomes ``max event ts seen - allowed_lateness``
when a reading arrives and ``max(event ts seen, now_ms) - allowed_lateness`` on a tick, whenever something is
committed (a reading never moves it by ``now_ms``: the rest of a store-and-forward batch may still be coming,
so one silence stays one offline alert): a buffered reading with
``ts < P`` is processed, or a timer with deadline ``<= P`` fires (offline, gap, level delays, ...). Timers fire
before a reading with the same time (a reading at exactly ``since + delay`` does not cancel the alert).

* A reading with ``ts >= P`` on arrival (not late) goes into the buffer; its arrival order among others within
  the lateness therefore changes nothing.
* A reading with ``ts < P`` is **late**: the past it belongs to is already decided. It is not processed by the
  rules; it is reported as an :class:`~pipeline.schemas.Annotation` of kind ``late`` (with its value, seq and
  how late it was) and counted in the state (``late_count``).
* ``on_tick`` that neither processes a buffered reading nor fires a timer returns the *same* state (``P`` is
  not stored): nothing depends on the interval it skipped, so a reading that later arrives in it is processed
  exactly as if it had been on time. Hence ticks never force a table write, and a tick at any time up to the
  next event's ts never changes the outputs (property-tested).
* The buffer is bounded (:data:`BUFFER_MAX`); when a burst overflows it, the oldest reading is processed early
  and ``P`` moves to its ts.

De-duplication is exact for any ``seq`` within :data:`SEQ_WINDOW` of the highest seen (a 256-bit bitmap); a
duplicate returns the same state and no outputs. A seq further below that is processed if it is newer than
every reading seen (a device that restarted its counter: the bitmap restarts) and otherwise handled as usual
(late if before the frontier).

Sample and hold: a reading's value holds until the next reading, for at most ``offline_k x interval``; past
that the value is unknown, so no level, rate, stuck or door deadline fires on stale data and windowed
aggregates (cumulative, MKT) stop counting. The offline alert takes over.

State size: a few hundred bytes of JSON (MKT and cumulative keep 24 bucket aggregates each, never readings).
"""

from __future__ import annotations

import math
from operator import attrgetter
from typing import Any

from pipeline import serde
from pipeline.detectors.aggregates import GAS_R, AggregatesMixin
from pipeline.detectors.base import Output
from pipeline.detectors.device_state import (
    BUCKETS,
    BUFFER_MAX,
    HIGH,
    HIGH_HIGH,
    LOW,
    LOW_LOW,
    SEQ_MASK,
    SEQ_WINDOW,
    BufItem,
    DeviceState,
)
from pipeline.detectors.engine import NEG, AlertFactory, ms, tuples, wake_time
from pipeline.detectors.history import HIST_MAX, PENDING_MAX, HistoryMixin
from pipeline.detectors.levels import Level, LevelsMixin, outside_levels
from pipeline.detectors.liveness import LivenessMixin, silence_delays
from pipeline.detectors.masks import MasksMixin
from pipeline.detectors.rules import DeviceRules
from pipeline.schemas import Reading

__all__ = ["BUFFER_MAX", "NEG", "SEQ_WINDOW", "DeviceDetector", "DeviceState", "wake_time"]


class DeviceDetector(AlertFactory):
    """Pure detector for one device. See the module docstring for the contract."""

    name = "device"
    #: Arrivals that release nothing skip the working copy (:meth:`_arrive`); the property tests turn this
    #: off to check the shortcuts against the general path, state by state.
    shortcuts = True

    def __init__(self, config: DeviceRules) -> None:
        c = config
        self.config = c
        self.site = c.site
        self.subject = c.device
        self.flags_snapshot = c.flags == "snapshot"
        self.lateness = ms(c.allowed_lateness_min)
        self.interval_ms = round(c.interval_s * 1000)
        self.hole_ms = self.interval_ms * 3 // 2
        self.hold, self.gap_ms = silence_delays(c)
        self.silence_min = min(self.hold, self.gap_ms)
        lv: list[Level | None] = [None] * 5
        for slot, rule, high in (
            (HIGH, c.high, True),
            (HIGH_HIGH, c.high_high, True),
            (LOW, c.low, False),
            (LOW_LOW, c.low_low, False),
        ):
            if rule.limit is not None:
                lv[slot] = Level(rule, high)
        self.levels = lv
        # Fast path: a reading strictly inside every level (and its deadband) with no condition in progress
        # cannot change any level.
        highs = [x.limit - x.deadband for x in lv[:4] if x is not None and x.high]
        lows = [x.limit + x.deadband for x in lv[:4] if x is not None and not x.high]
        self.safe_hi = min(highs) if highs else math.inf
        self.safe_lo = max(lows) if lows else -math.inf
        r = c.rate_of_rise
        self.ror_limit = r.limit_c_per_min
        self.ror_window = ms(r.window_min)
        self.ror_delay = ms(r.delay_min)
        self.ror_clear = ms(r.clear_delay_min)
        d = c.door
        self.door_warn_ms = None if d.warn_min is None else ms(d.warn_min)
        self.door_crit_ms = None if d.critical_min is None else ms(d.critical_min)
        self.door_max = ms(c.masks.door_max_min)
        self.defrost_max = ms(c.masks.defrost_max_min)
        self.startup_ms = ms(c.masks.startup_min)
        self.sched = c.defrost_schedule
        self.tz = c.timezone
        lvn = c.liveness
        self.stuck_ms = None if lvn.stuck_min is None else ms(lvn.stuck_min)
        self.stuck_eps = lvn.stuck_epsilon
        self.batt_low = lvn.battery_low
        self.batt_band = lvn.battery_deadband
        cu = c.cumulative
        self.cum_on = cu.limit is not None
        self.cum_limit = cu.limit if cu.limit is not None else 0.0
        self.cum_above = cu.direction == "above"
        self.cum_budget = ms(cu.budget_min)
        self.cum_bucket = max(1, ms(cu.window_min) // BUCKETS)
        m = c.mkt
        self.mkt_on = m.limit is not None
        self.mkt_limit = m.limit if m.limit is not None else 0.0
        self.mkt_a = m.delta_h_kj_per_mol * 1000.0 / GAS_R  # ΔH/R in kelvin
        self.mkt_bucket = max(1, ms(m.window_min) // BUCKETS)
        self.mkt_need = m.min_coverage * self.mkt_bucket * BUCKETS

    # -- protocol ------------------------------------------------------------------------------------------------

    def initial(self) -> DeviceState:
        return DeviceState()

    def on_event(self, state: DeviceState, event: Reading, now_ms: int) -> tuple[DeviceState, list[Output]]:
        return self._arrive(
            state, event.ts_ms, event.seq, event.temp_c, event.door_open, event.defrost, event.battery, now_ms
        )

    def on_reading_dict(self, state: DeviceState, d: dict[str, Any], now_ms: int) -> tuple[DeviceState, list[Output]]:
        """Fast path for a RecordBatch item (the dict form of :class:`~pipeline.schemas.Reading`), no pydantic.

        Types are checked here, on arrival (``ValueError``: the runner dead-letters the item): a reading that is
        buffered and fails only when released would fail every later call for its device."""
        ts, seq, temp = d["ts_ms"], d["seq"], d["temp_c"]
        door, defrost, battery = d.get("door_open"), d.get("defrost"), d.get("battery")
        if (
            type(ts) is not int
            or type(seq) is not int
            or (type(temp) is not float and type(temp) is not int)
            or (door is not None and type(door) is not bool)
            or (defrost is not None and type(defrost) is not bool)
            or (battery is not None and type(battery) is not float and type(battery) is not int)
        ):
            raise ValueError("a reading needs integer ts_ms and seq, a numeric temp_c and battery, boolean flags")
        return self._arrive(state, ts, seq, temp, door, defrost, battery, now_ms)

    #: The :class:`~pipeline.detectors.base.Detector` protocol's name for the RecordBatch fast path.
    on_item = on_reading_dict

    def on_tick(self, state: DeviceState, now_ms: int) -> tuple[DeviceState, list[Output]]:
        max_ts = state.max_ts
        target = (max_ts if max_ts > now_ms else now_ms) - self.lateness  # not max(): a builtin call per visit
        if state.pending:
            w = _Work(self, state, clock=True)
            w.release(max(target, state.frontier))
            return w.freeze(), w.out
        if target <= state.frontier:
            return state, []
        buf = state.buf
        if not (buf and buf[0][0] < target) and (state.due is None or state.due > target):
            if target < max_ts + self.silence_min:  # heard from recently: most ticks end here
                return state, []
            sd = silence_due(state, self.hold, self.gap_ms)
            if sd is None or sd > target:
                return state, []
        w = _Work(self, state, clock=True)
        w.release(target)
        return w.freeze(), w.out

    def wake_ms(self, state: DeviceState) -> int | None:
        """The earliest ``now_ms`` at which :meth:`on_tick` can change ``state``; ``None``: not before the next
        reading. The runner's timer index leaves the device alone until then (the early returns of
        :meth:`on_tick`, solved for ``now_ms``)."""
        # :func:`silence_due` and :func:`~pipeline.detectors.engine.wake_time` written out: the runner asks this
        # twice per reading (after its arrival and after the tick that releases it).
        if state.pending:
            return NEG  # late readings to evaluate: at the next tick
        due = state.due
        max_ts = state.max_ts
        if max_ts != NEG:
            sd: int | None
            if state.offline_open is None:
                hold = self.hold
                sd = max_ts + (hold if state.gap_open is not None or hold <= self.gap_ms else self.gap_ms)
            else:
                sd = None if state.gap_open is not None else max_ts + self.gap_ms
            if sd is not None and (due is None or sd < due):
                due = sd
        buf = state.buf
        if buf:
            first = buf[0][0] + 1
            if due is None or first < due:
                due = first
        elif due is None:
            return None
        frontier = state.frontier
        need = (due if due > frontier else frontier + 1) + self.lateness
        return need if max_ts < need else NEG

    @staticmethod
    def state_to_bytes(state: DeviceState) -> bytes:
        """The same for every device: the runner's flush calls it without the device's detector."""
        # The bitmap in hex (JSON has no 256-bit integers). ``"%x" %`` on a copy: ~15 % fewer instructions than
        # ``format`` and a list built from slices (cachegrind); the same bytes.
        fields: list[Any] = list(state)
        fields[3] = "%x" % state.seq_bits  # noqa: UP031 (see above)
        return serde.dumps(fields)

    def state_from_bytes(self, data: bytes) -> DeviceState:
        raw = serde.loads(data)
        raw[3] = int(raw[3], 16)
        return DeviceState(*(tuples(x) for x in raw))

    # -- arrival ---------------------------------------------------------------------------------------------------

    def _arrive(
        self,
        state: DeviceState,
        ts: int,
        seq: int,
        temp: float,
        door: bool | None,
        defrost: bool | None,
        battery: float | None,
        now_ms: int,
    ) -> tuple[DeviceState, list[Output]]:
        sm = state.seq_max
        bits = state.seq_bits
        if seq > sm:
            bits = ((bits << (seq - sm)) | 1) & SEQ_MASK if sm >= 0 else 1
            sm = seq
        elif seq > sm - SEQ_WINDOW:
            flag = 1 << (sm - seq)
            if bits & flag:
                return state, []
            bits |= flag
        elif ts > state.max_ts:
            sm, bits = seq, 1  # the device restarted its sequence
        item: BufItem = (ts, seq, temp, door, defrost, battery)
        lateness = self.lateness
        max_ts = state.max_ts
        if ts < state.frontier or ts < now_ms - lateness:
            return self._late(state, item, sm, bits, now_ms)
        buf = state.buf
        # Arrivals are usually in order: append; otherwise re-sort the small buffer.
        buf = (*buf, item) if not buf or (ts, seq) >= buf[-1][:2] else tuple(sorted((*buf, item), key=_buf_key))
        if ts > max_ts:
            max_ts = ts
        # A reading moves the frontier by event time only; ``now_ms`` moves it on ticks. A store-and-forward batch
        # arrives item by item long after its readings were taken: moving to ``now_ms - lateness`` after its
        # first item would fire offline/gap deadlines the rest of the batch is about to disprove (an offline
        # alert resolving and re-opening within one upload) and turn the rest of the batch into late data.
        target = max_ts - lateness
        if len(buf) <= BUFFER_MAX and self.shortcuts and not state.pending:
            # Built positionally (frontier, max_ts, seq_max, seq_bits, buf, ...) by ``tuple.__new__``: a third of
            # the cost of ``_replace`` (the namedtuple's ``__new__`` is a Python function of 27 parameters), and
            # these are nearly every reading's paths. A tuple concatenation, not ``(..., *state[5:])``, which
            # builds a list and a tuple on the way (~1,000 instructions more, cachegrind).
            if target <= state.frontier:
                return _new_state(DeviceState, (state.frontier, max_ts, sm, bits, buf) + state[5:]), []  # noqa: RUF005
            due = state.due
            if buf[0][0] >= target and (due is None or due > target):
                # The newest reading moves the frontier and nothing is due before it: what ``release`` would do
                # (no buffered reading, no deadline up to ``target``), without a working copy. A live reading
                # taken after the last tick lands here, i.e. most of them.
                return _new_state(DeviceState, (target, max_ts, sm, bits, buf) + state[5:]), []  # noqa: RUF005
        w = _Work(self, state)
        w.seq_max, w.seq_bits, w.buf, w.max_ts = sm, bits, buf, max_ts
        w.release(target)
        return w.freeze(), w.out

    def _late(
        self, state: DeviceState, item: BufItem, sm: int, bits: int, now_ms: int
    ) -> tuple[DeviceState, list[Output]]:
        """A reading behind the frontier (or behind ``now_ms - lateness``: the rest of an upload arriving after
        the live clock moved on). After the checkpoint it waits in ``pending`` for a re-run (module
        :mod:`~pipeline.detectors.history`); before it, it is beyond the history bound: annotated and counted."""
        ts = item[0]
        out: list[Output] = []
        if not state.pending:
            # What a tick at now_ms would do first (buffered readings, timers up to now_ms - lateness): the late
            # reading is then evaluated against that past, not against timers that merely had not run yet.
            state, out = self.on_tick(state, now_ms)
        ck = state.ckpt
        bound = ck[0] if ck is not None else state.last_ts
        if ts <= bound and bound != NEG:
            count = state.late_count + 1
            ann = self.late_annotation(
                ts,
                max(state.frontier, now_ms - self.lateness),
                count,
                {
                    "seq": item[1],
                    "temp_c": item[2],
                    "outside_levels": outside_levels(self.levels, item[2]),
                    "beyond_history": True,
                },
            )
            # Positionally, as in ``_arrive`` (``_replace`` goes through the 27-parameter ``__new__``).
            head = (state.frontier, state.max_ts, sm, bits)
            fields = head + state[4:LATE_COUNT] + (count,) + state[LATE_COUNT + 1 :]
            return _new_state(DeviceState, fields), [*out, ann]
        if ts > state.max_ts and (state.offline_open is not None or state.gap_open is not None):
            # Newer than anything heard: the logger is heard again now (in event time: the frontier), even if
            # what it sends is old (an upload, a reordered delivery); its readings go to the rules below.
            w = _Work(self, state)
            w.silence_end(max(state.frontier, now_ms - self.lateness))
            state = w.freeze()
            out = [*out, *w.out]
        pending = (*state.pending, item)
        head = (state.frontier, max(state.max_ts, ts), sm, bits)
        new = _new_state(DeviceState, head + state[4:PENDING] + (pending,))
        if len(pending) >= PENDING_MAX:
            w = _Work(self, new)
            w.release(state.frontier)
            return w.freeze(), [*out, *w.out]
        return new, out


def silence_due(state: DeviceState, hold: int, gap_ms: int) -> int | None:
    """The clock's next liveness deadline (not part of ``due``, which readings also use)."""
    heard = state.max_ts
    if heard == NEG:
        return None
    if state.offline_open is None:
        return heard + hold if state.gap_open is not None or hold <= gap_ms else heard + gap_ms
    return heard + gap_ms if state.gap_open is None else None


def _buf_key(item: BufItem) -> tuple[int, int]:
    return item[0], item[1]


#: Positions in :class:`DeviceState` of the fields a late reading changes (built positionally, see ``_late``).
LATE_COUNT = DeviceState._fields.index("late_count")
PENDING = DeviceState._fields.index("pending")  # the last field

#: A DeviceState from a tuple of its fields without the namedtuple's Python-level ``__new__`` (what ``_make``
#: calls after a method lookup): every reading builds one or two.
_new_state = tuple.__new__

#: A working copy's fields as a :class:`DeviceState` tuple (in C: :meth:`_Work.freeze` ends every call that
#: does work, on the per-reading hot path).
_state_fields_of = attrgetter(*DeviceState._fields)


class _Work(LevelsMixin, MasksMixin, AggregatesMixin, LivenessMixin, HistoryMixin):
    """A mutable working copy of :class:`DeviceState` for one call; :meth:`freeze` makes the new state.

    The rule families (mixins) each own their part of :meth:`next_deadline`, :meth:`fire` and :meth:`apply`;
    this class drives time (release, advance) and calls them in a fixed order, so outputs at one instant come
    out in the same order every time."""

    __slots__ = (*DeviceState._fields, "abandon", "clock", "d", "due_ok", "later", "now", "orig", "out", "retro")
    d: DeviceDetector  # the rule families (mixins) see it untyped: they cannot import this module

    def __init__(self, d: DeviceDetector, s: DeviceState, clock: bool = False) -> None:
        self.d = d
        self.orig = s
        self.out: list[Output] = []
        self.later = []
        self.now = s.frontier
        #: Driven by the clock (a tick): silence deadlines (not part of the cached ``due``) may fire. Driven by a
        #: reading: they may not (liveness follows arrivals, docs/rules.md).
        self.clock = clock
        self.due_ok = True
        self.retro = False
        self.abandon = NEG
        (
            self.frontier,
            self.max_ts,
            self.seq_max,
            self.seq_bits,
            self.buf,
            self.last_ts,
            self.last_temp,
            self.offline_open,
            self.gap_open,
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
            self.late_count,
            self.due,
            self.last_seq,
            self.ckpt,
            self.hist,
            self.pending,
        ) = s

    def freeze(self) -> DeviceState:
        if self.later:
            self.report_later()
        if not self.due_ok:
            self.due = self.next_deadline()
            self.due_ok = True
        new = _new_state(DeviceState, _state_fields_of(self))
        return self.orig if new == self.orig else new

    # -- driving time ----------------------------------------------------------------------------------------------

    def release(self, target: int) -> None:
        """Process buffered readings before ``target`` and fire timers up to it, in event-time order. Late
        readings waiting for evaluation go first: they are older than anything buffered."""
        if self.pending:
            newest = max(p[0] for p in self.pending)
            k = 0
            while k < len(self.buf) and self.buf[k][0] <= newest:
                k += 1
            if k:  # buffered readings older than a late one are evaluated with it, in event-time order
                self.pending, self.buf = (*self.pending, *self.buf[:k]), self.buf[k:]
            self.reevaluate()
        buf = self.buf
        i = 0
        n = len(buf)
        while i < n and (buf[i][0] < target or n - i > BUFFER_MAX):
            item = buf[i]
            i += 1
            self.advance(item[0])
            self.apply(item)
            if item[0] > target:
                target = item[0]  # overflow: processed early, the frontier follows
        self.buf = buf[i:] if i else buf
        self.advance(target)
        if target > self.frontier:
            self.frontier = target
        if len(self.hist) > HIST_MAX:
            self.reevaluate(abandon=True)

    def advance(self, t: int) -> None:
        dl = self.due if self.due_ok else self.next_deadline()
        if self.clock and not self.retro and self.max_ts + self.d.silence_min <= t:
            # The silence deadlines (offline, gap) run on the clock only and are not part of ``due``.
            sd = self.silence_deadline()
            while True:
                m = dl if sd is None or (dl is not None and dl <= sd) else max(sd, self.now)
                if m is None or m > t:
                    break
                self.fire(m)
                dl = self.next_deadline()
                sd = self.silence_deadline()
        else:
            while dl is not None and dl <= t:
                self.fire(dl)
                dl = self.next_deadline()
        self.due = dl
        self.due_ok = True
        if t > self.now:
            self.now = t

    def next_deadline(self) -> int | None:
        """The earliest deadline of any rule family. One that passed while the data was stale (a door still open
        when data returns) fires at the first instant it is known, never in the past: outputs stay in event-time
        order."""
        d = self.d
        last = self.last_ts
        if last == NEG:
            return None
        fresh = last + d.hold
        best: int | None = None
        mask_end = NEG
        if self.mask is not None or d.sched:
            _, mask_end, nxt = self.mask_parts(self.now)
            if nxt is not None and (best is None or nxt < best):
                best = nxt
        for x in (
            self.door_deadline(fresh),
            self.levels_deadline(mask_end, fresh) if self.conds != _NO_CONDS else None,
            self.stuck_deadline(fresh),
            self.aggregates_deadline(fresh),
        ):
            if x is not None and (best is None or x < best):
                best = x
        if best is not None and best < self.now:
            best = self.now
        return best

    def fire(self, t: int) -> None:
        """Every deadline due at ``t``, family by family."""
        d = self.d
        if self.later:
            self.report_later(t)
        self.now = t
        if self.ckpt is None:
            self.ckpt = self.rules_snapshot()  # the state after the last reading, for late readings before t
        fresh = self.last_ts + d.hold
        if self.mask is not None or d.sched:
            self.update_mask(t)
        if self.clock and not self.retro:
            self.silence_fire(t)
        self.door_fire(t, fresh)
        if self.conds != _NO_CONDS:
            self.levels_fire(t, fresh, self.mask_parts(t)[1] if self.mask is not None else NEG)
        self.stuck_fire(t, fresh)
        self.aggregates_fire(t)

    def apply(self, item: BufItem) -> None:
        """One reading, at its event time (every deadline before it has fired). The family calls are guarded
        here so that a plain in-order reading (nothing open, no flags, no hole) makes as few calls as possible:
        this is the per-reading hot path."""
        d = self.d
        t, seq, x, door, defrost, battery = item
        if self.later:
            self.report_later(t)
        prev = self.last_ts
        ls = self.last_seq
        hole = seq > ls + 1 and ls >= 0 and t - prev > d.hole_ms and self.opens_hole(t, seq)
        self.now = t
        self.due_ok = False
        if self.cum is not None or self.mkt is not None or ((d.cum_on or d.mkt_on) and prev != NEG):
            self.aggregates_account(t, prev)
        if (self.offline_open is not None or self.gap_open is not None) and not self.retro:
            self.silence_end(t)
        stale = prev != NEG and t - prev > d.hold
        # The loading window follows the data: the first reading, and the first after a break in it (not the
        # offline alert, which follows arrivals: an outage filled by an upload has no break in the data).
        startup = prev == NEG or stale
        if startup and d.startup_ms:
            self.startup_until = t + d.startup_ms
        if d.flags_snapshot:
            # ``flags: snapshot``: every reading carries its flags, an omitted one is false.
            door = door is True
            defrost = defrost is True
        if door is not None or defrost is not None:
            self.flags_apply(t, door, defrost)
        if self.mask is not None or self.door_since is not None or self.defrost_since is not None or startup or d.sched:
            self.update_mask(t)
        if self.mask is not None:
            self.mask_count(x)
        self.levels_apply(x, t, stale)
        if d.stuck_ms is not None or (battery is not None and d.batt_low is not None):
            self.sensor_apply(x, t, stale, battery)
        self.last_ts = t
        self.last_temp = x
        self.last_seq = seq
        if self.cum is None or self.mkt is None:
            self.aggregates_start(t)
        if hole or self.hist:
            self.hist = (*self.hist, item)
        else:
            self.ckpt = None  # the state after this reading is the checkpoint


_NO_CONDS: tuple[None, ...] = (None, None, None, None, None)
