"""Cold rooms and reefer trucks: a thermal model, a logger that reports it, injected faults, and ground truth.

The model is a first-order room: heat leaks in from the ambient at a rate proportional to the difference
(much faster with the door open), a thermostat-controlled compressor removes heat, a defrost heater runs on
a schedule. It is integrated in 10 s steps and sampled by the logger at its reporting interval. Faults change
the physics (compressor failure, power outage, door left open), the sensor (stuck, drift), or the delivery of
readings (connectivity loss with a store-and-forward upload, dead battery, clock skew).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from simulators import rules as R
from simulators.core import Line, Truth

DT_S = 10
FaultKind = Literal["compressor", "outage", "door", "loading", "stuck", "drift", "battery", "offline", "skew"]


@dataclass(frozen=True)
class Fault:
    """An injected fault on ``[start_ms, end_ms)``; ``end_ms`` None means until the end.

    ``value``: °C per hour for drift, seconds for skew (device clock minus true time). For ``offline``,
    ``upload`` says whether the stored readings are uploaded in store-and-forward batches when it reconnects.
    """

    kind: FaultKind
    start_ms: int
    end_ms: int | None = None
    value: float = 0.0
    upload: bool = True

    def active(self, t_ms: int) -> bool:
        return self.start_ms <= t_ms < (self.end_ms if self.end_ms is not None else 1 << 62)


@dataclass(frozen=True)
class Physics:
    set_c: float = 3.0
    hysteresis_c: float = 1.0
    ambient_c: float = 22.0
    leak_per_s: float = 1 / 7200
    door_leak_factor: float = 6.0
    cooling_c_per_s: float = 0.004
    defrost_every_s: float = 6 * 3600
    defrost_for_s: float = 15 * 60
    defrost_heat_c_per_s: float = 0.0003
    #: Normal door openings per hour during opening hours (local 07:00-20:00), each 20-60 s.
    door_rate_per_h: float = 1.5
    noise_c: float = 0.04


TRUCK = Physics(ambient_c=28.0, leak_per_s=1 / 5400, cooling_c_per_s=0.005, door_rate_per_h=0.0, door_leak_factor=3.0)


@dataclass
class DeviceSim:
    device: str
    site: str
    seed: int
    start_ms: int
    end_ms: int
    interval_s: float = 60.0
    physics: Physics = field(default_factory=Physics)
    faults: tuple[Fault, ...] = ()
    rules: R.RuleParams = R.DEFAULT
    #: Door openings at given times (truck deliveries): (start_ms, duration_s).
    stops: tuple[tuple[int, float], ...] = ()
    tz_offset_h: float = 8.0
    battery_start: float = 0.92
    #: Rule overrides written into the asset's ``overrides`` (contract 5); ``rules`` must say the same.
    overrides: dict[str, Any] = field(default_factory=dict)
    #: How the logger sends its door/defrost flags: ``snapshot`` (every reading), ``true_only`` (only while
    #: true: a site file with ``flags: snapshot`` reads the omission as false) or ``on_change`` (when they
    #: change). ``flags_config`` is what the site file says (``snapshot`` or ``on_change``).
    flag_style: Literal["snapshot", "true_only", "on_change"] = "snapshot"
    flags_config: Literal["snapshot", "on_change"] = "snapshot"
    #: Delivery reordered: some readings arrive this long (seconds) behind the newest; ``duplicates`` is the
    #: share sent twice (QoS 1 redelivery).
    reorder_s: float = 0.0
    duplicates: float = 0.0
    #: Filled by :meth:`run`.
    truth: list[Truth] = field(default_factory=list)

    def _faults(self, kind: FaultKind, t: int) -> Fault | None:
        for f in self.faults:
            if f.kind == kind and f.active(t):
                return f
        return None

    def run(self) -> list[Line]:
        """Integrate the model, emit the logger's messages in ``at`` order, and compute the ground truth."""
        rnd = random.Random(f"{self.seed}|{self.device}")
        p = self.physics
        temp = p.set_c + rnd.uniform(-0.5, 0.5)
        compressor = rnd.random() < 0.5
        defrost_phase = rnd.uniform(0, p.defrost_every_s)
        door_until = -1
        step_ms = DT_S * 1000
        interval_ms = int(self.interval_s * 1000)
        next_sample = self.start_ms + rnd.randrange(0, interval_ms, 1000)
        seq = rnd.randrange(1, 1000)
        battery = self.battery_start
        stuck_value: float | None = None
        dead = False
        buffered: list[dict[str, object]] = []
        last_flags: dict[str, bool] = {}
        lines: list[Line] = []
        # (ts on the device clock, measured temp, door, defrost, sensor trustworthy) for each reading measured.
        samples: list[tuple[int, float, bool, bool, bool]] = []
        stuck_periods: list[tuple[int, int | None]] = []
        battery_low_at: int | None = None
        door_p = p.door_rate_per_h * DT_S / 3600

        t = self.start_ms
        while t < self.end_ms:
            # -- physics ------------------------------------------------------------------------------------
            local_h = ((t / 3_600_000) + self.tz_offset_h) % 24
            if t >= door_until and door_p and 7 <= local_h < 20 and rnd.random() < door_p:
                door_until = t + int(rnd.uniform(20, 60) * 1000)
            for stop_ms, dur_s in self.stops:
                if stop_ms <= t < stop_ms + dur_s * 1000:
                    door_until = max(door_until, stop_ms + int(dur_s * 1000))
            door_fault = self._faults("door", t)
            loading = self._faults("loading", t)
            door = t < door_until or door_fault is not None or loading is not None
            in_defrost = ((t - self.start_ms) / 1000 + defrost_phase) % p.defrost_every_s < p.defrost_for_s
            powered = self._faults("outage", t) is None
            working = powered and self._faults("compressor", t) is None
            if temp > p.set_c + p.hysteresis_c:
                compressor = True
            elif temp < p.set_c - p.hysteresis_c:
                compressor = False
            leak = p.leak_per_s * (p.door_leak_factor if door else 1.0)
            d = leak * (p.ambient_c - temp)
            if in_defrost and powered:
                d += p.defrost_heat_c_per_s
            elif compressor and working:
                d -= p.cooling_c_per_s
            if loading is not None and t == loading.start_ms - loading.start_ms % step_ms:
                temp += loading.value or 1.5  # warm goods
            temp += d * DT_S

            # -- the logger ---------------------------------------------------------------------------------
            if t >= next_sample and not dead:
                next_sample += interval_ms
                battery = max(0.0, battery - 0.00002)
                bat_fault = self._faults("battery", t)
                if bat_fault is not None:
                    span = max(1, (bat_fault.end_ms or self.end_ms) - bat_fault.start_ms)
                    battery = min(battery, self.battery_start * (1 - (t - bat_fault.start_ms) / span))
                if battery <= 0.02:
                    dead = True
                else:
                    if battery < self.rules.battery_low and battery_low_at is None:
                        battery_low_at = t
                    stuck = self._faults("stuck", t)
                    drift = self._faults("drift", t)
                    value = temp + rnd.gauss(0, p.noise_c)
                    if stuck is not None:
                        if stuck_value is None:
                            stuck_value = value
                            stuck_periods.append((t, None))
                        value = stuck_value
                    elif stuck_value is not None:
                        stuck_value = None
                        stuck_periods[-1] = (stuck_periods[-1][0], t)
                    if drift is not None:
                        value += drift.value * (t - drift.start_ms) / 3_600_000
                    skew = self._faults("skew", t)
                    ts = t + int((skew.value if skew else 0.0) * 1000)
                    seq += 1
                    payload: dict[str, object] = {
                        "ts": _iso(ts),
                        "seq": seq,
                        "temp_c": round(value, 2),
                        "humidity": round(70 + 8 * math.sin(t / 5e6) + rnd.gauss(0, 1), 1),
                        "battery": round(battery, 3),
                    }
                    flags = {"door_open": door, "defrost": bool(in_defrost and powered)}
                    style = self.flag_style
                    for name, on in flags.items():
                        changed = last_flags.get(name) != on
                        if style == "snapshot" or (style == "true_only" and on) or (style == "on_change" and changed):
                            payload[name] = on
                    last_flags = flags
                    # A working sensor's measurement (noise included) is the truth for level rules: limits
                    # apply to what a calibrated logger measures. A stuck or drifting sensor is not trusted.
                    samples.append(
                        (ts, round(value, 2), door, bool(in_defrost and powered), stuck is None and drift is None)
                    )
                    offline = self._faults("offline", t)
                    if offline is not None:
                        if offline.upload:
                            buffered.append(payload)
                    else:
                        lines.append(Line(t, "mqtt", self.device, payload))
            offline_now = self._faults("offline", t)
            if buffered and offline_now is None:
                # Reconnected: store-and-forward upload in contract-1 batches of at most 1000, oldest first.
                for i in range(0, len(buffered), 1000):
                    lines.append(Line(t + i // 1000, "mqtt", self.device, {"readings": buffered[i : i + 1000]}))
                buffered = []
            t += step_ms
        if buffered:
            lines.append(Line(self.end_ms - 1, "mqtt", self.device, {"readings": buffered[:1000]}))
        if self.reorder_s:
            lines = self._reorder(lines, rnd)
        self.truth = self._truth(lines, samples, stuck_periods, battery_low_at)
        return lines

    def _reorder(self, lines: list[Line], rnd: random.Random) -> list[Line]:
        """Reordered delivery: in every run of readings spanning ``reorder_s``, the first is held back and sent
        just after the last (``reorder_s`` behind the newest: beyond the allowed lateness), the others on time,
        so the logger stays audibly alive; a share of the messages is sent again half an interval later (QoS 1
        redelivery). Nothing is sent after the scenario ends."""
        out = [x for x in lines if "readings" in x.body]
        single = [x for x in lines if "readings" not in x.body]
        block = max(2, round(self.reorder_s / self.interval_s) + 1)
        for i in range(0, len(single), block):
            run = single[i : i + block]
            sends = [(x.at_ms, x) for x in run[1:]] + [(run[-1].at_ms + 1000, run[0])]
            for at, x in sends:
                at = min(at, self.end_ms - 1)
                out.append(Line(at, "mqtt", self.device, x.body))
                if rnd.random() < self.duplicates:
                    dup = min(at + int(self.interval_s * 1000) // 2, self.end_ms - 1)
                    out.append(Line(dup, "mqtt", self.device, x.body))
        return sorted(out, key=lambda x: x.at_ms)

    # -- ground truth ---------------------------------------------------------------------------------------

    def _truth(
        self,
        lines: list[Line],
        samples: list[tuple[int, float, bool, bool, bool]],
        stuck_periods: list[tuple[int, int | None]],
        battery_low_at: int | None,
    ) -> list[Truth]:
        r = self.rules
        out: list[Truth] = []
        ordered = sorted(samples, key=lambda s: s[0])
        masks = _masks(ordered, r) if ordered else []
        trusted = [(ts, temp) for ts, temp, _, _, ok in ordered if ok]
        for rule, pred in ((R.HIGH, lambda v: v > r.high_c), (R.LOW, lambda v: v < r.low_c)):
            for onset, end in _sustained([(ts, pred(v)) for ts, v in trusted], 0):
                # Door, defrost and start-up masks defer a high level: its delay restarts where a mask ends.
                start = onset
                for _ in range(len(masks) + 1):
                    moved = start
                    if rule == R.HIGH:
                        for m_start, m_end in masks:
                            if m_start <= moved < m_end or (moved <= m_start < moved + r.high_delay_s * 1000):
                                moved = max(moved, m_end)
                    if moved == start:
                        break
                    start = moved
                deadline = start + int(r.high_delay_s * 1000)
                if (end if end is not None else ordered[-1][0]) > deadline:
                    delay = (deadline - onset) / 1000
                    out.append(self._t(rule, onset, end, delay, "true temperature beyond the limit"))
        for d_start, d_end in _sustained([(ts, door) for ts, _, door, _, _ in ordered], r.door_delay_s):
            out.append(self._t(R.DOOR, d_start, d_end, r.door_delay_s, "door open"))
        for s_start, s_end in stuck_periods:
            if (s_end if s_end is not None else self.end_ms) - s_start > r.stuck_after_s * 1000:
                out.append(self._t(R.STUCK, s_start, s_end, r.stuck_after_s, "sensor stuck"))
        if battery_low_at is not None:
            out.append(self._t(R.BATTERY, battery_low_at, None, 0, "battery below threshold"))
        # Liveness is about arrivals: the newest reading heard of (its ts) grows stale. The logger is offline
        # when, ``allowed lateness`` after ``last heard + k x interval``, nothing newer has arrived (a batch upload
        # ends it; readings arriving shuffled keep it alive). docs/rules.md, "Liveness".
        hold_ms = int(r.offline_k * self.interval_s * 1000)
        gap_ms = int(r.gap_max_s * 1000)
        late_ms = int(r.allowed_lateness_s * 1000)
        heard: int | None = None
        for line in [*lines, None]:
            at = line.at_ms if line is not None else self.end_ms
            newest = heard
            if line is not None:
                body = line.body
                for item in body.get("readings", [body]):
                    ts = _ms_of(item["ts"])
                    newest = ts if newest is None else max(newest, ts)
            if heard is not None and (newest != heard or line is None):
                end = at if line is not None else None
                if at - late_ms > heard + hold_ms:
                    out.append(self._t(R.OFFLINE, heard, end, hold_ms / 1000, "nothing newer heard"))
                if at - late_ms > heard + gap_ms:
                    out.append(self._t(R.GAP, heard, end, gap_ms / 1000, "silence beyond the logging interval"))
            heard = newest
        return sorted(out, key=lambda x: x.opened_at_ms)

    def _t(self, rule: str, a: int, b: int | None, delay: float, note: str) -> Truth:
        return Truth(rule, self.device, self.site, a, b, delay, note)


def _sustained(points: list[tuple[int, bool]], delay_s: float) -> list[tuple[int, int | None]]:
    """Intervals where a condition held from its onset for at least ``delay_s``: (onset, end or None).

    A condition holds until a sample shows otherwise (a detector's timer sees the last known state), so an
    interval runs from its first true sample to the first false one.
    """
    out: list[tuple[int, int | None]] = []
    onset: int | None = None
    last = None
    for ts, cond in points:
        if cond and onset is None:
            onset = ts
        elif not cond and onset is not None:
            if ts - onset > delay_s * 1000:
                out.append((onset, ts))
            onset = None
        last = ts
    if onset is not None and last is not None and last - onset > delay_s * 1000:
        out.append((onset, None))
    return out


def _masks(ordered: list[tuple[int, float, bool, bool, bool]], r: R.RuleParams) -> list[tuple[int, int]]:
    """Mask intervals as the detectors define them: a door or defrost run masks from its start for at most its
    cause's limit, the first data for the start-up hour."""
    out = [(ordered[0][0], ordered[0][0] + int(r.startup_mask_s * 1000))]
    for idx, limit in ((2, r.door_mask_s), (3, r.defrost_mask_s)):
        run: int | None = None
        for s in ordered:
            if s[idx] and run is None:
                run = s[0]
            elif not s[idx] and run is not None:
                out.append((run, min(s[0], run + int(limit * 1000))))
                run = None
        if run is not None:
            out.append((run, run + int(limit * 1000)))
    return sorted(out)


def _ms_of(iso: object) -> int:
    from pipeline.schemas import _parse_ts, to_ms

    return to_ms(_parse_ts(iso))


def _iso(ms: int) -> str:
    from pipeline.schemas import ms_to_iso

    return ms_to_iso(ms)
