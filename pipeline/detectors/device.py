"""All per-device rules in one pure detector: levels, cumulative budget, rate of rise, MKT, door, masks,
liveness (offline, gap, stuck, battery), lateness and exact de-duplication by ``seq``.

How the agent uses it (one :class:`DeviceDetector` per device, built from
:func:`pipeline.profiles.resolve_device_rules`; one :class:`DeviceState` per device in a Faust table)::

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
from typing import Any, NamedTuple

from pipeline import serde
from pipeline.detectors.base import Output
from pipeline.detectors.calendar import window_state
from pipeline.detectors.rules import DeviceRules, LevelRule
from pipeline.schemas import Alert, AlertState, Annotation, Reading, Severity, alert_id, ms_to_iso

NEG = -(1 << 62)
SEQ_WINDOW = 256
_SEQ_MASK = (1 << SEQ_WINDOW) - 1
BUFFER_MAX = 128
BUCKETS = 24
_MIN = 60_000
_R = 8.314462618  # J/(mol K)
_T0 = 273.15

# Condition slots in DeviceState.conds
HIGH, HIGH_HIGH, LOW, LOW_LOW, ROR = range(5)
_COND_RULES = ("coldchain.high", "coldchain.high_high", "coldchain.low", "coldchain.low_low", "coldchain.rate_of_rise")

BufItem = tuple[int, int, float, bool | None, bool | None, float | None]  # ts, seq, temp, door, defrost, battery
Cond = tuple[int | None, int | None, int | None, float]  # since, opened, clear_since, peak


class DeviceState(NamedTuple):
    """One device's detector state: plain values only (JSON via :mod:`pipeline.serde`)."""

    frontier: int = NEG
    max_ts: int = NEG
    seq_max: int = -1
    seq_bits: int = 0
    buf: tuple[BufItem, ...] = ()
    last_ts: int = NEG
    last_temp: float = 0.0
    offline_open: int | None = None
    gap_open: int | None = None
    door_since: int | None = None
    defrost_since: int | None = None
    startup_until: int = NEG
    #: (start, reasons, readings, min, max) of the masked interval in progress
    mask: tuple[int, tuple[str, ...], int, float, float] | None = None
    door_warn: int | None = None
    door_crit: int | None = None
    conds: tuple[Cond | None, ...] = (None, None, None, None, None)
    ror_anchors: tuple[tuple[int, float], ...] = ()
    #: (value, since, opened)
    stuck: tuple[float, int, int | None] | None = None
    battery_open: int | None = None
    #: (bucket index, completed bucket ms (<= 23), current bucket ms, accounted-to, opened)
    cum: tuple[int, tuple[int, ...], int, int, int | None] | None = None
    #: (bucket index, completed (weight, ms) pairs flattened, current weight, current ms, accounted-to, opened)
    mkt: tuple[int, tuple[float, ...], float, int, int, int | None] | None = None
    late_count: int = 0
    #: The next timer deadline, cached so a tick that fires nothing is O(1) (derived; recomputed on change).
    due: int | None = None


def wake_time(buf: tuple[Any, ...], due: int | None, frontier: int, max_ts: int, lateness: int) -> int | None:
    """When a tick has work: ``target = max(max_ts, now) - lateness`` must pass the frontier and reach the
    first buffered event (``buf[0][0] < target``) or the next deadline (``due <= target``)."""
    if buf:
        first = buf[0][0] + 1
        m = first if due is None or first < due else due
    elif due is None:
        return None
    else:
        m = due
    need = max(m, frontier + 1) + lateness
    return need if max_ts < need else NEG


def _ms(minutes: float) -> int:
    return round(minutes * _MIN)


class _Level:
    __slots__ = ("clear_ms", "deadband", "delay_ms", "high", "limit", "maskable", "notify", "notify_clear", "sev")

    def __init__(self, rule: LevelRule, high: bool) -> None:
        assert rule.limit is not None
        self.limit = rule.limit
        self.high = high
        self.deadband = rule.deadband
        self.delay_ms = _ms(rule.delay_min)
        self.clear_ms = _ms(rule.clear_delay_min)
        self.sev = rule.severity
        self.notify = rule.notify
        self.notify_clear = rule.notify_on_clear
        self.maskable = rule.maskable


class DeviceDetector:
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
        self.lateness = _ms(c.allowed_lateness_min)
        self.interval_ms = round(c.interval_s * 1000)
        self.hold = max(1, round(c.liveness.offline_k * c.interval_s * 1000))
        self.gap_ms = _ms(c.liveness.gap_max_min)
        lv: list[_Level | None] = [None] * 5
        for slot, rule, high in (
            (HIGH, c.high, True),
            (HIGH_HIGH, c.high_high, True),
            (LOW, c.low, False),
            (LOW_LOW, c.low_low, False),
        ):
            if rule.limit is not None:
                lv[slot] = _Level(rule, high)
        self.levels = lv
        # Fast path: a reading strictly inside every level (and its deadband) with no condition in progress
        # cannot change any level.
        highs = [x.limit - x.deadband for x in lv[:4] if x is not None and x.high]
        lows = [x.limit + x.deadband for x in lv[:4] if x is not None and not x.high]
        self.safe_hi = min(highs) if highs else math.inf
        self.safe_lo = max(lows) if lows else -math.inf
        r = c.rate_of_rise
        self.ror_limit = r.limit_c_per_min
        self.ror_window = _ms(r.window_min)
        self.ror_delay = _ms(r.delay_min)
        self.ror_clear = _ms(r.clear_delay_min)
        d = c.door
        self.door_warn_ms = None if d.warn_min is None else _ms(d.warn_min)
        self.door_crit_ms = None if d.critical_min is None else _ms(d.critical_min)
        self.door_max = _ms(c.masks.door_max_min)
        self.defrost_max = _ms(c.masks.defrost_max_min)
        self.startup_ms = _ms(c.masks.startup_min)
        self.sched = c.defrost_schedule
        self.tz = c.timezone
        lvn = c.liveness
        self.stuck_ms = None if lvn.stuck_min is None else _ms(lvn.stuck_min)
        self.stuck_eps = lvn.stuck_epsilon
        self.batt_low = lvn.battery_low
        self.batt_band = lvn.battery_deadband
        cu = c.cumulative
        self.cum_on = cu.limit is not None
        self.cum_limit = cu.limit if cu.limit is not None else 0.0
        self.cum_above = cu.direction == "above"
        self.cum_budget = _ms(cu.budget_min)
        self.cum_bucket = max(1, _ms(cu.window_min) // BUCKETS)
        m = c.mkt
        self.mkt_on = m.limit is not None
        self.mkt_limit = m.limit if m.limit is not None else 0.0
        self.mkt_a = m.delta_h_kj_per_mol * 1000.0 / _R  # ΔH/R in kelvin
        self.mkt_bucket = max(1, _ms(m.window_min) // BUCKETS)
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

    def on_tick(self, state: DeviceState, now_ms: int) -> tuple[DeviceState, list[Output]]:
        target = max(state.max_ts, now_ms) - self.lateness
        if target <= state.frontier:
            return state, []
        buf = state.buf
        if not (buf and buf[0][0] < target) and (state.due is None or state.due > target):
            return state, []
        w = _Work(self, state)
        w.release(target)
        return w.freeze(), w.out

    def wake_ms(self, state: DeviceState) -> int | None:
        """The earliest ``now_ms`` at which :meth:`on_tick` can change ``state``; ``None``: not before the next
        reading. The runner's timer index leaves the device alone until then (the early returns of
        :meth:`on_tick`, solved for ``now_ms``)."""
        return wake_time(state.buf, state.due, state.frontier, state.max_ts, self.lateness)

    def state_to_bytes(self, state: DeviceState) -> bytes:
        return serde.dumps([*state[:3], format(state.seq_bits, "x"), *state[4:]])

    def state_from_bytes(self, data: bytes) -> DeviceState:
        raw = serde.loads(data)
        raw[3] = int(raw[3], 16)
        return DeviceState(*(_tuples(x) for x in raw))

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
            bits = ((bits << (seq - sm)) | 1) & _SEQ_MASK if sm >= 0 else 1
            sm = seq
        elif seq > sm - SEQ_WINDOW:
            flag = 1 << (sm - seq)
            if bits & flag:
                return state, []
            bits |= flag
        elif ts > state.max_ts:
            sm, bits = seq, 1  # the device restarted its sequence
        item: BufItem = (ts, seq, temp, door, defrost, battery)
        if ts < state.frontier:
            count = state.late_count + 1
            ann = Annotation(
                kind="late",
                site=self.site,
                subject=self.subject,
                start_ms=ts,
                end_ms=ts,
                detail={
                    "seq": seq,
                    "temp_c": temp,
                    "frontier_ms": state.frontier,
                    "late_by_ms": state.frontier - ts,
                    "late_count": count,
                    "outside_levels": self._outside(temp),
                },
            )
            return state._replace(seq_max=sm, seq_bits=bits, late_count=count), [ann]
        buf = state.buf
        # Arrivals are usually in order: append; otherwise re-sort the small buffer.
        buf = (*buf, item) if not buf or (ts, seq) >= buf[-1][:2] else tuple(sorted((*buf, item), key=_buf_key))
        max_ts = ts if ts > state.max_ts else state.max_ts
        # A reading moves the frontier by event time only; ``now_ms`` moves it on ticks. A store-and-forward batch
        # arrives item by item long after its readings were taken: moving to ``now_ms - lateness`` after its
        # first item would fire offline/gap deadlines the rest of the batch is about to disprove (an offline
        # alert resolving and re-opening within one upload) and turn the rest of the batch into late data.
        target = max_ts - self.lateness
        if len(buf) <= BUFFER_MAX and self.shortcuts:
            # Built positionally (frontier, max_ts, seq_max, seq_bits, buf, ...): half the cost of ``_replace``,
            # and these are nearly every reading's paths.
            if target <= state.frontier:
                return DeviceState(state.frontier, max_ts, sm, bits, buf, *state[5:]), []
            due = state.due
            if buf[0][0] >= target and (due is None or due > target):
                # The newest reading moves the frontier and nothing is due before it: what ``release`` would do
                # (no buffered reading, no deadline up to ``target``), without a working copy. A live reading
                # taken after the last tick lands here, i.e. most of them.
                return DeviceState(target, max_ts, sm, bits, buf, *state[5:]), []
        w = _Work(self, state)
        w.seq_max, w.seq_bits, w.buf, w.max_ts = sm, bits, buf, max_ts
        w.release(target)
        return w.freeze(), w.out

    def _outside(self, temp: float) -> list[str]:
        out = []
        for slot, lv in enumerate(self.levels[:4]):
            if lv is not None and ((temp > lv.limit) if lv.high else (temp < lv.limit)):
                out.append(_COND_RULES[slot])
        return out

    # -- outputs ----------------------------------------------------------------------------------------------------

    def alert(
        self,
        rule: str,
        severity: Severity,
        opened: int,
        at: int,
        resolved: bool,
        notify: bool,
        evidence: dict[str, Any],
    ) -> Alert:
        return Alert(
            alert_id=alert_id(rule, self.subject, opened),
            rule=rule,
            severity=severity,
            site=self.site,
            subject=self.subject,
            state=AlertState.RESOLVED if resolved else AlertState.OPEN,
            opened_at=ms_to_iso(opened),
            resolved_at=ms_to_iso(at) if resolved else None,
            at_ms=at,
            notify=notify,
            evidence=evidence,
        )


def _buf_key(item: BufItem) -> tuple[int, int]:
    return item[0], item[1]


def _tuples(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_tuples(y) for y in x)
    return x


def _dur_min(a: int, b: int) -> float:
    return round((b - a) / _MIN, 3)


class _Work:
    """A mutable working copy of :class:`DeviceState` for one call; :meth:`freeze` makes the new state."""

    __slots__ = (*DeviceState._fields, "d", "due_ok", "now", "orig", "out")

    def __init__(self, d: DeviceDetector, s: DeviceState) -> None:
        self.d = d
        self.orig = s
        self.out: list[Output] = []
        self.now = s.frontier
        self.due_ok = True
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
        ) = s

    def freeze(self) -> DeviceState:
        new = DeviceState(
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
            self.due if self.due_ok else self.next_deadline(),
        )
        return self.orig if new == self.orig else new

    # -- driving time ----------------------------------------------------------------------------------------------

    def release(self, target: int) -> None:
        """Process buffered readings before ``target`` and fire timers up to it, in event-time order."""
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

    def advance(self, t: int) -> None:
        dl = self.due if self.due_ok else self.next_deadline()
        while dl is not None and dl <= t:
            self.fire(dl)
            dl = self.next_deadline()
        self.due = dl
        self.due_ok = True
        if t > self.now:
            self.now = t

    # -- masks -------------------------------------------------------------------------------------------------------

    def _mask_parts(self, t: int) -> tuple[list[str], int, int | None]:
        """Causes active at ``t``, their provisional union end, and the earliest end (next re-evaluation)."""
        d = self.d
        reasons: list[str] = []
        ends: list[int] = []
        if self.door_since is not None and t < self.door_since + d.door_max:
            reasons.append("door")
            ends.append(self.door_since + d.door_max)
        if self.defrost_since is not None and t < self.defrost_since + d.defrost_max:
            reasons.append("defrost")
            ends.append(self.defrost_since + d.defrost_max)
        if t < self.startup_until:
            reasons.append("startup")
            ends.append(self.startup_until)
        nxt: int | None = None
        if d.sched:
            inside, change = window_state(d.tz, d.sched, t)
            if inside and change is not None:
                reasons.append("defrost_schedule")
                ends.append(change)
            elif change is not None:
                nxt = change
        if ends:
            return reasons, max(ends), min(ends)
        return reasons, NEG, nxt

    def update_mask(self, t: int) -> None:
        reasons, _, _ = self._mask_parts(t)
        m = self.mask
        if reasons and m is None:
            self.mask = (t, tuple(reasons), 0, 0.0, 0.0)
        elif reasons and m is not None:
            merged = tuple(sorted({*m[1], *reasons}))
            if merged != m[1]:
                self.mask = (m[0], merged, m[2], m[3], m[4])
        elif not reasons and m is not None:
            detail: dict[str, Any] = {"reasons": sorted(m[1]), "readings": m[2]}
            if m[2]:
                detail["min_c"] = m[3]
                detail["max_c"] = m[4]
            self.out.append(
                Annotation(
                    kind="masked", site=self.d.site, subject=self.d.subject, start_ms=m[0], end_ms=t, detail=detail
                )
            )
            self.mask = None
            # Maskable conditions in progress restart their delay where the mask ends.
            conds = list(self.conds)
            for slot, c in enumerate(conds):
                if c is not None and c[0] is not None and c[1] is None and c[0] < t and self._maskable(slot):
                    conds[slot] = (t, c[1], c[2], c[3])
            self.conds = tuple(conds)

    def _maskable(self, slot: int) -> bool:
        if slot == ROR:
            return self.d.config.rate_of_rise.maskable
        lv = self.d.levels[slot]
        return lv is not None and lv.maskable

    # -- deadlines ---------------------------------------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        d = self.d
        best: int | None = None
        last = self.last_ts
        if last == NEG:
            return None
        fresh = last + d.hold

        now = self.now

        def take(x: int | None) -> None:
            # A deadline that passed while the data was stale (door still open when data returns) fires at the
            # first instant it is known, never in the past: outputs stay in event-time order.
            nonlocal best
            if x is not None:
                if x < now:
                    x = now
                if best is None or x < best:
                    best = x

        if self.offline_open is None:
            take(last + d.hold)
        if self.gap_open is None:
            take(last + d.gap_ms)
        mask_end = NEG
        if self.mask is not None or d.sched:
            _, mask_end, nxt = self._mask_parts(self.now)
            take(nxt)
        if self.door_since is not None:
            if self.door_warn is None and d.door_warn_ms is not None and self.door_since + d.door_warn_ms <= fresh:
                take(self.door_since + d.door_warn_ms)
            if self.door_crit is None and d.door_crit_ms is not None and self.door_since + d.door_crit_ms <= fresh:
                take(self.door_since + d.door_crit_ms)
        for slot, c in enumerate(self.conds):
            if c is None:
                continue
            x = self._cond_deadline(slot, c, mask_end)
            if x is not None and x <= fresh:
                take(x)
        st = self.stuck
        if st is not None and st[2] is None and d.stuck_ms is not None and st[1] + d.stuck_ms <= fresh:
            take(st[1] + d.stuck_ms)
        cu = self.cum
        if cu is not None:
            boundary = (cu[0] + 1) * d.cum_bucket
            if cu[4] is not None:
                take(boundary)
            elif self._exposed() and cu[3] < fresh:
                total = sum(cu[1]) + cu[2]
                cross = max(cu[3], cu[3] + (d.cum_budget - total))
                if cross <= fresh:
                    take(min(cross, boundary))
                elif boundary <= fresh:
                    take(boundary)
        mk = self.mkt
        if mk is not None:
            take((mk[0] + 1) * d.mkt_bucket)
        return best

    def _cond_deadline(self, slot: int, c: Cond, mask_end: int) -> int | None:
        d = self.d
        since, opened, clear_since, _ = c
        if slot == ROR:
            delay, clear = d.ror_delay, d.ror_clear
        else:
            lv = d.levels[slot]
            assert lv is not None
            delay, clear = lv.delay_ms, lv.clear_ms
        if opened is None:
            if since is None:
                return None
            start = since
            if self.mask is not None and mask_end > start and self._maskable(slot):
                start = mask_end
            return start + delay
        if clear_since is not None:
            return clear_since + clear
        return None

    def _exposed(self) -> bool:
        d = self.d
        if self.last_ts == NEG:
            return False
        x = self.last_temp
        return x >= d.cum_limit if d.cum_above else x <= d.cum_limit

    # -- firing ---------------------------------------------------------------------------------------------------

    def fire(self, t: int) -> None:
        d = self.d
        self.now = t
        last = self.last_ts
        fresh = last + d.hold
        if self.mask is not None or d.sched:
            self.update_mask(t)
        if self.offline_open is None and last + d.hold <= t:
            self.offline_open = t
            self.out.append(
                d.alert(
                    "liveness.offline",
                    Severity.WARNING,
                    t,
                    t,
                    False,
                    True,
                    {
                        "last_seen": ms_to_iso(last),
                        "interval_s": d.interval_ms / 1000,
                        "k": d.config.liveness.offline_k,
                        "silent_min": _dur_min(last, t),
                    },
                )
            )
        if self.gap_open is None and last + d.gap_ms <= t:
            self.gap_open = t
            self.out.append(
                d.alert(
                    "liveness.gap",
                    Severity.INFO,
                    t,
                    t,
                    False,
                    False,
                    {"last_seen": ms_to_iso(last), "max_interval_min": d.config.liveness.gap_max_min},
                )
            )
        if self.door_since is not None:
            ds = self.door_since
            if self.door_warn is None and d.door_warn_ms is not None and ds + d.door_warn_ms <= min(t, fresh):
                self.door_warn = t
                self.out.append(
                    d.alert(
                        "coldchain.door_open",
                        Severity.WARNING,
                        t,
                        t,
                        False,
                        True,
                        {"door_open_since": ms_to_iso(ds), "open_min": _dur_min(ds, t), "stage": "warning"},
                    )
                )
            if self.door_crit is None and d.door_crit_ms is not None and ds + d.door_crit_ms <= min(t, fresh):
                self.door_crit = t
                self.out.append(
                    d.alert(
                        "coldchain.door_open",
                        Severity.CRITICAL,
                        t,
                        t,
                        False,
                        True,
                        {"door_open_since": ms_to_iso(ds), "open_min": _dur_min(ds, t), "stage": "critical"},
                    )
                )
        if any(c is not None for c in self.conds):
            mask_end = self._mask_parts(t)[1] if self.mask is not None else NEG
            conds = list(self.conds)
            for slot, c in enumerate(conds):
                if c is None:
                    continue
                x = self._cond_deadline(slot, c, mask_end)
                if x is None or x > t or x > fresh:
                    continue
                conds[slot] = self._cond_fire(slot, c, t)
            self.conds = tuple(conds)
        st = self.stuck
        if st is not None and st[2] is None and d.stuck_ms is not None and st[1] + d.stuck_ms <= min(t, fresh):
            self.stuck = (st[0], st[1], t)
            self.out.append(
                d.alert(
                    "liveness.stuck",
                    Severity.WARNING,
                    t,
                    t,
                    False,
                    True,
                    {"value_c": st[0], "since": ms_to_iso(st[1]), "stuck_min": d.config.liveness.stuck_min},
                )
            )
        if self.cum is not None:
            self._cum_account(t)
            self._cum_check(t)
        mk = self.mkt
        if mk is not None and (mk[0] + 1) * d.mkt_bucket <= t:
            self._mkt_boundary(t)

    def _cond_fire(self, slot: int, c: Cond, t: int) -> Cond | None:
        d = self.d
        since, opened, _, peak = c
        rule = _COND_RULES[slot]
        if slot == ROR:
            r = d.config.rate_of_rise
            sev, notify, notify_clear = r.severity, r.notify, r.notify_on_clear
            ev: dict[str, Any] = {"limit_c_per_min": d.ror_limit, "window_min": r.window_min}
            ev_peak = "peak_c_per_min"
        else:
            lv = d.levels[slot]
            assert lv is not None
            sev, notify, notify_clear = lv.sev, lv.notify, lv.notify_clear
            ev = {"limit_c": lv.limit, "deadband_c": lv.deadband}
            ev_peak = "peak_c"
        if opened is None:
            assert since is not None
            ev |= {"breach_since": ms_to_iso(since), "value_c": self.last_temp, ev_peak: peak}
            self.out.append(d.alert(rule, sev, t, t, False, notify, ev))
            return (since, t, None, peak)
        ev |= {ev_peak: peak, "open_min": _dur_min(opened, t)}
        self.out.append(d.alert(rule, sev, opened, t, True, notify_clear, ev))
        return None

    # -- applying one reading ---------------------------------------------------------------------------------------

    def apply(self, item: BufItem) -> None:
        d = self.d
        t, _seq, x, door, defrost, battery = item
        self.now = t
        self.due_ok = False
        prev = self.last_ts
        if self.cum is not None or (d.cum_on and prev != NEG):
            self._cum_account(t)
        if self.mkt is not None or (d.mkt_on and prev != NEG):
            self._mkt_account(t)
        startup = prev == NEG
        if self.offline_open is not None:
            opened = self.offline_open
            self.out.append(
                d.alert(
                    "liveness.offline",
                    Severity.WARNING,
                    opened,
                    t,
                    True,
                    True,
                    {"last_seen": ms_to_iso(prev), "silent_min": _dur_min(prev, t)},
                )
            )
            self.offline_open = None
            startup = True
        if self.gap_open is not None:
            self.out.append(
                d.alert(
                    "liveness.gap",
                    Severity.INFO,
                    self.gap_open,
                    t,
                    True,
                    False,
                    {
                        "gap_start": ms_to_iso(prev),
                        "gap_end": ms_to_iso(t),
                        "gap_min": _dur_min(prev, t),
                        "max_interval_min": d.config.liveness.gap_max_min,
                    },
                )
            )
            self.out.append(
                Annotation(
                    kind="compliance_gap",
                    site=d.site,
                    subject=d.subject,
                    start_ms=prev,
                    end_ms=t,
                    detail={"max_interval_min": d.config.liveness.gap_max_min, "gap_min": _dur_min(prev, t)},
                )
            )
            self.gap_open = None
        if startup and d.startup_ms:
            self.startup_until = t + d.startup_ms
        stale = prev != NEG and t - prev > d.hold
        # Door and defrost flags: None means "not reported", which keeps the last known state.
        if door is True and self.door_since is None:
            self.door_since = t
        elif door is False and self.door_since is not None:
            self._door_close(t)
        if defrost is True and self.defrost_since is None:
            self.defrost_since = t
        elif defrost is False:
            self.defrost_since = None
        if self.mask is not None or self.door_since is not None or self.defrost_since is not None or startup or d.sched:
            self.update_mask(t)
        m = self.mask
        if m is not None:
            if m[2]:
                self.mask = (m[0], m[1], m[2] + 1, min(m[3], x), max(m[4], x))
            else:
                self.mask = (m[0], m[1], 1, x, x)
        conds = self.conds
        if stale and any(c is not None for c in conds):
            # Continuity broke (no data for longer than the hold): pending delays restart.
            conds = tuple(None if c is None or c[1] is None else (c[0], c[1], None, c[3]) for c in conds)
        if conds is self.conds and d.safe_lo < x < d.safe_hi and conds[:4] == (None, None, None, None):
            pass
        else:
            lst = list(conds)
            for slot in range(4):
                lv = d.levels[slot]
                if lv is not None:
                    lst[slot] = self._level(slot, lv, lst[slot], x, t)
            conds = tuple(lst)
        if d.ror_limit is not None:
            conds = self._ror(conds, t, x, stale)
        self.conds = conds
        if d.stuck_ms is not None:
            st = self.stuck
            if st is None or abs(x - st[0]) > d.stuck_eps or stale:
                if st is not None and st[2] is not None:
                    self.out.append(
                        d.alert(
                            "liveness.stuck",
                            Severity.WARNING,
                            st[2],
                            t,
                            True,
                            True,
                            {"value_c": st[0], "new_value_c": x, "stuck_min": _dur_min(st[1], t)},
                        )
                    )
                self.stuck = (x, t, None)
        if battery is not None and d.batt_low is not None:
            if self.battery_open is None and battery < d.batt_low:
                self.battery_open = t
                self.out.append(
                    d.alert(
                        "liveness.battery_low",
                        Severity.WARNING,
                        t,
                        t,
                        False,
                        True,
                        {"battery": battery, "limit": d.batt_low},
                    )
                )
            elif self.battery_open is not None and battery >= d.batt_low + d.batt_band:
                self.out.append(
                    d.alert(
                        "liveness.battery_low",
                        Severity.WARNING,
                        self.battery_open,
                        t,
                        True,
                        False,
                        {"battery": battery, "limit": d.batt_low},
                    )
                )
                self.battery_open = None
        self.last_ts = t
        self.last_temp = x
        if d.cum_on and self.cum is None:
            self.cum = (t // d.cum_bucket, (), 0, t, None)
        if d.mkt_on and self.mkt is None:
            self.mkt = (t // d.mkt_bucket, (), 0.0, 0, t, None)

    def _door_close(self, t: int) -> None:
        d = self.d
        ds = self.door_since
        assert ds is not None
        for opened, sev in ((self.door_warn, Severity.WARNING), (self.door_crit, Severity.CRITICAL)):
            if opened is not None:
                self.out.append(
                    d.alert(
                        "coldchain.door_open",
                        sev,
                        opened,
                        t,
                        True,
                        d.config.door.notify_on_clear,
                        {"door_open_since": ms_to_iso(ds), "open_min": _dur_min(ds, t)},
                    )
                )
        self.door_since = self.door_warn = self.door_crit = None

    def _level(self, slot: int, lv: _Level, c: Cond | None, x: float, t: int) -> Cond | None:
        if lv.high:
            breach = x > lv.limit
            clear_ok = x <= lv.limit - lv.deadband
        else:
            breach = x < lv.limit
            clear_ok = x >= lv.limit + lv.deadband
        if c is None:
            return (t, None, None, x) if breach else None
        since, opened, clear_since, peak = c
        if breach:
            peak = max(peak, x) if lv.high else min(peak, x)
        if opened is None:
            return (since, None, None, peak) if breach else None
        if clear_ok:
            return c if clear_since is not None else (since, opened, t, peak)
        return (since, opened, None, peak)

    def _ror(self, conds: tuple[Cond | None, ...], t: int, x: float, stale: bool) -> tuple[Cond | None, ...]:
        d = self.d
        win = d.ror_window
        anchors = () if stale else tuple(a for a in self.ror_anchors if a[0] >= t - win)
        rate: float | None = None
        for a_ts, a_x in anchors:
            if t - a_ts >= win // 2:
                rate = (x - a_x) * _MIN / (t - a_ts)
                break
        if not anchors or t - anchors[-1][0] >= win // 4:
            anchors = (*anchors, (t, x))
        self.ror_anchors = anchors
        c = conds[ROR]
        assert d.ror_limit is not None
        breach = rate is not None and rate > d.ror_limit
        if c is None:
            if not breach:
                return conds
            assert rate is not None
            new: Cond | None = (t, None, None, round(rate, 4))
        else:
            since, opened, clear_since, peak = c
            if breach:
                assert rate is not None
                peak = max(peak, round(rate, 4))
            if opened is None:
                new = (since, None, None, peak) if breach else None
            elif breach:
                new = (since, opened, None, peak)
            else:
                new = c if clear_since is not None else (since, opened, t, peak)
        return (*conds[:ROR], new)

    # -- windowed aggregates ---------------------------------------------------------------------------------------

    def _cum_account(self, to: int) -> None:
        """Add exposure on ``[accounted-to, to)`` (value held at most ``hold`` after the last reading)."""
        d = self.d
        cu = self.cum
        if cu is None:
            return
        idx, done, cur, acc, opened = cu
        if to <= acc:
            return
        exp_end = min(to, self.last_ts + d.hold) if self._exposed() else acc
        b = d.cum_bucket
        pos = acc
        keep = BUCKETS - 1
        while (idx + 1) * b <= to:
            be = (idx + 1) * b
            if exp_end > pos:
                cur += min(be, exp_end) - pos
            done = (*done, cur)[-keep:]
            cur = 0
            idx += 1
            pos = be
            if exp_end <= pos:
                k = to // b - idx
                if k > 0:
                    done = (*done, *([0] * min(k, keep)))[-keep:]
                    idx += k
                    pos = idx * b
                break
        if exp_end > pos:
            cur += exp_end - pos
        self.cum = (idx, done, cur, to, opened)

    def _cum_check(self, t: int) -> None:
        d = self.d
        cu = self.cum
        assert cu is not None
        total = sum(cu[1]) + cu[2]
        c = d.config.cumulative
        ev = {
            "limit_c": c.limit,
            "direction": c.direction,
            "budget_min": c.budget_min,
            "window_min": c.window_min,
            "exposure_min": _dur_min(0, total),
        }
        if cu[4] is None and total >= d.cum_budget:
            self.cum = (*cu[:4], t)
            self.out.append(d.alert("coldchain.cumulative", c.severity, t, t, False, c.notify, ev))
        elif cu[4] is not None and total < d.cum_budget and t == (cu[0]) * d.cum_bucket:
            self.cum = (*cu[:4], None)
            self.out.append(d.alert("coldchain.cumulative", c.severity, cu[4], t, True, c.notify_on_clear, ev))

    def _mkt_account(self, to: int) -> None:
        d = self.d
        mk = self.mkt
        if mk is None:
            return
        idx, done, cw, cd, acc, opened = mk
        if to <= acc:
            return
        end = min(to, self.last_ts + d.hold)
        if end > acc:
            # Boundary timers close each bucket before a later segment is added: a segment never crosses one.
            span = end - acc
            cw += span * math.exp(-d.mkt_a * (1.0 / (self.last_temp + _T0) - 1.0 / _T0))
            cd += span
        jump = to // d.mkt_bucket
        if jump > idx:
            if jump - idx > BUCKETS:
                done = ()
            else:
                done = (*done, float(f"{cw:.10g}"), cd, *([0.0, 0] * (jump - idx - 1)))[-2 * BUCKETS :]
            idx, cw, cd = jump, 0.0, 0
        self.mkt = (idx, done, cw, cd, to, opened)

    def _mkt_boundary(self, t: int) -> None:
        """At a bucket boundary: close the bucket and evaluate MKT over the last 24 completed buckets."""
        d = self.d
        self._mkt_account(t)
        mk = self.mkt
        assert mk is not None
        done, opened = mk[1], mk[5]
        win_w = sum(done[0::2])
        win_d = sum(done[1::2])
        c = d.config.mkt
        if win_d == 0:
            if opened is None and self.last_ts + d.hold < t:
                self.mkt = None  # nothing left in the window: stop timing it until data returns
            return
        if win_d < d.mkt_need or win_w <= 0:
            return
        mkt_k = d.mkt_a / (d.mkt_a / _T0 - math.log(win_w / win_d))
        value = round(mkt_k - _T0, 3)
        ev = {
            "mkt_c": value,
            "limit_c": c.limit,
            "window_min": c.window_min,
            "coverage": round(win_d / (d.mkt_bucket * BUCKETS), 3),
            "delta_h_kj_per_mol": c.delta_h_kj_per_mol,
        }
        if opened is None and value > d.mkt_limit:
            self.mkt = (*mk[:5], t)
            self.out.append(d.alert("coldchain.mkt", c.severity, t, t, False, c.notify, ev))
        elif opened is not None and value <= d.mkt_limit - c.deadband:
            self.mkt = (*mk[:5], None)
            self.out.append(d.alert("coldchain.mkt", c.severity, opened, t, True, c.notify_on_clear, ev))
