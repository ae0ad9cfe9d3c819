"""A bright kitchen seen by its AI camera: service hours, staff shifts, stove cycles, staff stepping away,
hygiene violations at configured rates, and occasional low-confidence false positives.

Every camera event is one signed hook request (contract 2). Ground truth: an unattended stove is the stove on
during service hours with nobody in the kitchen for longer than the rule's delay; every confident hygiene
violation is an alert of its type unless one of that type opened within the de-duplication window.
Low-confidence events are noise the detectors must ignore. Kitchen subjects are ``<site>/<kitchen>``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from simulators import rules as R
from simulators.core import Line, Truth

HYGIENE_KINDS = ("no_hat", "no_mask", "no_uniform", "phone")


@dataclass
class KitchenSim:
    kitchen: str
    camera: str
    site: str
    seed: int
    start_ms: int
    end_ms: int
    #: Local service windows as (start hour, end hour); staff arrive 30 min before and leave after.
    service_hours: tuple[tuple[float, float], ...] = ((10.5, 14.0), (17.0, 21.0))
    tz_offset_h: float = 8.0
    #: Staff stepping away with the stove on: (at_ms, away_s). The stove is forced on at that moment.
    step_aways: tuple[tuple[int, float], ...] = ()
    #: Confident hygiene violations at fixed times (a burst).
    violations: tuple[int, ...] = ()
    false_positive_rate_per_h: float = 0.5
    rules: R.RuleParams = R.DEFAULT
    truth: list[Truth] = field(default_factory=list)

    def run(self) -> list[Line]:
        rnd = random.Random(f"{self.seed}|{self.camera}")
        events: list[tuple[int, dict[str, object]]] = []
        n = 0

        def emit(t: int, kind: str, conf: float = 0.95, **extra: object) -> None:
            nonlocal n
            n += 1
            ev: dict[str, object] = {
                "event_id": f"{self.camera}-{n}",
                "ts": _iso(t),
                "type": kind,
                "zone": "cook",
                "confidence": round(conf, 2),
                **extra,
            }
            events.append((t, ev))

        # Presence and stove state as piecewise-constant timelines, for the ground truth.
        presence: list[tuple[int, bool]] = []
        stove: list[tuple[int, bool]] = []
        day_ms = 86_400_000
        off = int(self.tz_offset_h * 3_600_000)
        day0 = (self.start_ms + off) // day_ms * day_ms - off
        d = day0
        while d < self.end_ms:
            for a_h, b_h in self.service_hours:
                shift_a = d + int((a_h - 0.5) * 3_600_000)
                shift_b = d + int((b_h + 0.25) * 3_600_000)
                if shift_b <= self.start_ms or shift_a >= self.end_ms:
                    continue
                shift_a = max(shift_a, self.start_ms)
                emit(shift_a, "person_present")
                presence.append((shift_a, True))
                t = max(shift_a + 20 * 60_000, d + int(a_h * 3_600_000))
                svc_end = min(d + int(b_h * 3_600_000), self.end_ms)
                next_count = shift_a + 600_000
                while t < svc_end:
                    on_for = int(rnd.uniform(5, 25) * 60_000)
                    emit(t, "stove_on")
                    stove.append((t, True))
                    off_at = min(t + on_for, svc_end)
                    while next_count < off_at:
                        if not any(a <= next_count <= a + w * 1000 for a, w in self.step_aways):
                            emit(next_count, "person_count", count=rnd.randint(2, 4))
                        next_count += 600_000
                    emit(off_at, "stove_off")
                    stove.append((off_at, False))
                    t = off_at + int(rnd.uniform(5, 20) * 60_000)
                leave = min(shift_b, self.end_ms - 1)
                if leave > svc_end:
                    emit(leave, "person_absent")
                    presence.append((leave, False))
            d += day_ms

        for at, away_s in self.step_aways:
            back = at + int(away_s * 1000)
            emit(at - 60_000, "stove_on")
            stove.append((at - 60_000, True))
            emit(at, "person_absent")
            presence.append((at, False))
            emit(back, "person_present")
            presence.append((back, True))
            emit(back + 120_000, "stove_off")
            stove.append((back + 120_000, False))
        self._violations: list[tuple[int, str]] = []
        for at in self.violations:
            kind = rnd.choice(HYGIENE_KINDS)
            self._violations.append((at, kind))
            emit(at, kind, rnd.uniform(0.85, 0.99))
        t = self.start_ms
        fp_p = self.false_positive_rate_per_h / 60
        while fp_p and t < self.end_ms:
            if rnd.random() < fp_p:
                emit(t + rnd.randrange(60_000), rnd.choice(HYGIENE_KINDS), rnd.uniform(0.2, 0.45))
            t += 60_000

        events.sort(key=lambda e: e[0])
        lines = [Line(t, "hook", self.camera, ev) for t, ev in events]
        self.truth = self._truth(presence, stove)
        return lines

    def _truth(self, presence: list[tuple[int, bool]], stove: list[tuple[int, bool]]) -> list[Truth]:
        r = self.rules
        out: list[Truth] = []
        # Service windows open and close too: the rule only applies in service.
        bounds: list[tuple[int, str, bool]] = []
        off = int(self.tz_offset_h * 3_600_000)
        d = (self.start_ms + off) // 86_400_000 * 86_400_000 - off
        while d < self.end_ms:
            for a_h, b_h in self.service_hours:
                bounds += [(d + int(a_h * 3_600_000), "v", True), (d + int(b_h * 3_600_000), "v", False)]
            d += 86_400_000
        changes = sorted([(t, "p", v) for t, v in presence] + [(t, "s", v) for t, v in stove] + bounds)
        present, on, service = False, False, False
        onset: int | None = None
        for t, what, v in changes:
            if what == "p":
                present = v
            elif what == "s":
                on = v
            else:
                service = v
            unattended = on and service and not present
            if unattended and onset is None:
                onset = t
            elif not unattended and onset is not None:
                if t - onset > r.unattended_after_s * 1000:
                    out.append(self._t(R.UNATTENDED, onset, t, r.unattended_after_s, "stove on, nobody there"))
                onset = None
        if onset is not None and self.end_ms - onset > r.unattended_after_s * 1000:
            out.append(self._t(R.UNATTENDED, onset, None, r.unattended_after_s, "stove on, nobody there"))
        open_since: dict[str, int] = {}
        for at, kind in sorted(self._violations):
            since = open_since.get(kind)
            if since is not None and at < since + r.hygiene_dedup_s * 1000:
                continue
            open_since[kind] = at
            end = at + int(r.hygiene_dedup_s * 1000)
            out.append(
                self._t(f"{R.HYGIENE}.{kind}", at, end if end <= self.end_ms else None, 0, "confident violation")
            )
        return sorted(out, key=lambda x: x.opened_at_ms)

    def _t(self, rule: str, a: int, b: int | None, delay: float, note: str) -> Truth:
        return Truth(rule, f"{self.site}/{self.kitchen}", self.site, a, b, delay, note)


def _iso(ms: int) -> str:
    from pipeline.schemas import ms_to_iso

    return ms_to_iso(ms)
