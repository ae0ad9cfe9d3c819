"""The scenario library: each scenario is a pure function of (seed, sites, start, duration).

``build(name_or_file, seed=..., sites=..., start_ms=..., duration_s=...)`` returns a :class:`Scenario` with its
site configuration (contract 5, with generated device and camera secrets), its replay lines (contract 3) in
``at`` order, and its ground truth. A scenario FILE is YAML: ``{scenario: <library name>, seed: .., sites: ..,
duration: "6h", rules: {high_delay_s: ..}}`` -- a named scenario with different parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.cliutil import parse_duration
from pipeline.siteconfig import SiteConfig
from simulators import rules as R
from simulators.coldchain import TRUCK, DeviceSim, Fault, Physics
from simulators.core import Line, Scenario, Truth, merge, secret_for
from simulators.kitchen import KitchenSim
from simulators.rapidtest import MarketSim

#: 08:00 in Asia/Shanghai, the sites' default zone: a business morning, lunch service ahead.
DEFAULT_START_MS = int(datetime(2026, 11, 22, 0, 0, tzinfo=UTC).timestamp() * 1000)
H = 3_600_000
MIN = 60_000


@dataclass(frozen=True)
class Params:
    seed: int
    sites: int
    start_ms: int
    duration_s: float
    rules: R.RuleParams
    prefix: str = ""

    @property
    def end_ms(self) -> int:
        return self.start_ms + int(self.duration_s * 1000)

    def at(self, hours: float) -> int:
        """An instant ``hours`` into the scenario, scaled if the scenario runs shorter than designed."""
        return self.start_ms + int(hours * H)

    def site(self, i: int) -> str:
        return f"{self.prefix}S{i + 1:03d}"


@dataclass(frozen=True)
class Spec:
    name: str
    description: str
    default_sites: int
    default_duration_s: float
    build: Callable[[Params], tuple[list[DeviceSim], list[KitchenSim]]]
    #: Rapid-test traffic (contract 6), for the scenarios that have some.
    markets: Callable[[Params], list[MarketSim]] | None = None


class _Builder:
    """Collects devices and kitchens and writes the matching contract-5 document."""

    def __init__(self, p: Params) -> None:
        self.p = p
        self.devices: list[DeviceSim] = []
        self.kitchens: list[KitchenSim] = []

    def cold_room(
        self,
        site: str,
        n: int = 1,
        *,
        faults: tuple[Fault, ...] = (),
        overrides: dict[str, Any] | None = None,
        rules: dict[str, Any] | None = None,
        **kw: Any,
    ) -> DeviceSim:
        """A logger in a cold room; ``overrides`` go into the site file, ``rules`` into the truth (same meaning)."""
        dev = DeviceSim(
            f"{site}-cr{n}",
            site,
            self.p.seed,
            self.p.start_ms,
            self.p.end_ms,
            faults=faults,
            rules=self.p.rules.with_overrides(**(rules or {})),
            overrides=overrides or {},
            **kw,
        )
        self.devices.append(dev)
        return dev

    def kitchen(self, site: str, **kw: Any) -> KitchenSim:
        k = KitchenSim(f"{site}-k1", f"{site}-cam1", site, self.p.seed, self.p.start_ms, self.p.end_ms, **kw)
        k.rules = self.p.rules
        self.kitchens.append(k)
        return k

    def out(self) -> tuple[list[DeviceSim], list[KitchenSim]]:
        return self.devices, self.kitchens


def site_document(
    seed: int, devices: list[DeviceSim], kitchens: list[KitchenSim], markets: list[MarketSim] | None = None
) -> dict[str, Any]:
    """The contract-5 document for the simulated fleet, with reproducible generated secrets."""
    sites: dict[str, Any] = {}

    def site(sid: str) -> dict[str, Any]:
        return sites.setdefault(
            sid,
            {
                "name": f"Simulated site {sid}",
                "timezone": "Asia/Shanghai",
                "assets": {},
                "devices": {},
                "kitchens": {},
                "cameras": {},
                "recipients": {"operator": [{"name": "Sim operator", "phone": "+86 000 0000 0000"}]},
            },
        )

    for d in devices:
        s = site(d.site)
        asset = f"{d.device}-asset"
        truck = d.physics is TRUCK
        s["assets"][asset] = {
            "name": ("Reefer truck " if truck else "Cold room ") + d.device,
            "kind": "reefer_truck" if truck else "cold_room",
            "profile": "chilled",
            **({"overrides": d.overrides} if d.overrides else {}),
        }
        s["devices"][d.device] = {
            "asset": asset,
            "interval_s": d.interval_s,
            "secret": secret_for(seed, d.device),
            **({"flags": d.flags_config} if d.flags_config != "snapshot" else {}),
        }
    for k in kitchens:
        s = site(k.site)
        s["kitchens"][k.kitchen] = {
            "name": f"Kitchen {k.kitchen}",
            "service_hours": [f"{_hhmm(a)}-{_hhmm(b)}" for a, b in k.service_hours],
        }
        s["cameras"][k.camera] = {"kitchen": k.kitchen, "zone": "cook", "secret": secret_for(seed, k.camera)}
    for m in markets or ():
        s = site(m.site)
        s["instruments"] = {i: {"type": t, "secret": secret_for(seed, i)} for i, t in m.instruments.items()}
        s["rapid_tests"] = {"recheck_within_min": m.recheck_within_min}
    return {"version": 1, "sites": sites}


def _hhmm(h: float) -> str:
    return f"{int(h):02d}:{round((h % 1) * 60):02d}"


# ---------------------------------------------------------------------------------------------------------------
# The library
# ---------------------------------------------------------------------------------------------------------------


def _quiet_week(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    for i in range(p.sites):
        s = p.site(i)
        b.cold_room(s, 1)
        b.cold_room(s, 2)
        b.kitchen(s)
    return b.out()


def _compressor_failure(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    for i in range(p.sites):
        s = p.site(i)
        b.cold_room(s, 1, faults=(Fault("compressor", p.at(1), p.at(3.5)),))
        b.cold_room(s, 2)
    return b.out()


def _door_left_open(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    for i in range(p.sites):
        b.cold_room(p.site(i), 1, faults=(Fault("door", p.at(1), p.at(1) + 25 * MIN),), physics=_QUIET_DOOR)
    return b.out()


def _truck_coverage_gaps(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    for i in range(p.sites):
        stops = tuple((p.at(h) + 7 * MIN, 120.0) for h in range(1, int(p.duration_s // 3600)))
        b.cold_room(
            p.site(i),
            1,
            physics=TRUCK,
            stops=stops,
            faults=(
                Fault("offline", p.at(2.2), p.at(2.2) + 8 * MIN),  # short tunnel: under the offline timeout
                Fault("offline", p.at(4.2), p.at(4.2) + 45 * MIN),  # rural stretch: offline, then uploads
            ),
        )
    return b.out()


def _reefer_failure(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    for i in range(p.sites):
        stops = tuple((p.at(h) + 7 * MIN, 120.0) for h in range(1, int(p.duration_s // 3600)))
        b.cold_room(p.site(i), 1, physics=TRUCK, stops=stops, faults=(Fault("compressor", p.at(2.5), None),))
    return b.out()


def _stuck_sensor(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    for i in range(p.sites):
        # The default stuck window is 6 h; this room's asset overrides it to 60 min (and the truth knows).
        b.cold_room(
            p.site(i),
            1,
            faults=(Fault("stuck", p.at(1), p.at(3)),),
            overrides={"liveness": {"stuck_min": 60}},
            rules={"stuck_after_s": 3600},
        )
        b.cold_room(p.site(i), 2)
    return b.out()


def _unattended_stove(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    for i in range(p.sites):
        # 10:40 local: a 2-minute step away (fine), then at 11:30 local 12 minutes away with the stove on.
        b.kitchen(p.site(i), step_aways=((p.at(2 + 40 / 60), 120.0), (p.at(3.5), 12 * 60.0)))
    return b.out()


def _hygiene_burst(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    for i in range(p.sites):
        base = p.at(3)
        b.kitchen(p.site(i), violations=(p.at(1), base, base + 3 * MIN, base + 5 * MIN, base + 8 * MIN))
    return b.out()


def _mass_outage(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    outage = Fault("outage", p.at(1), p.at(3))
    for i in range(p.sites):
        b.cold_room(p.site(i), 1, faults=(outage,))
    return b.out()


def _skewed_clock(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    for i in range(p.sites):
        # Two loggers with wrong clocks whose compressors fail: one 50 s slow (inside the allowed lateness), one
        # 4 min fast (inside the bridge's future-skew limit). Detection must follow their own timestamps, and
        # neither may look offline. (A clock more than the allowed lateness slow reads as late data.)
        b.cold_room(
            p.site(i), 1, faults=(Fault("skew", p.start_ms, None, value=-50), Fault("compressor", p.at(1), p.at(3)))
        )
        b.cold_room(
            p.site(i), 2, faults=(Fault("skew", p.start_ms, None, value=240), Fault("compressor", p.at(1.5), None))
        )
        b.cold_room(p.site(i), 3)
    return b.out()


def _store_and_forward(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    for i in range(p.sites):
        b.cold_room(p.site(i), 1, faults=(Fault("offline", p.at(1), p.at(7)),))
    return b.out()


def _outage_excursion(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    for i in range(p.sites):
        # Offline 1 h..7 h, uploading its stored readings on reconnect; the compressor fails 2 h..3.5 h, inside
        # the outage: the excursion is only seen in the upload (a retrospective coldchain.high).
        b.cold_room(
            p.site(i),
            1,
            faults=(Fault("offline", p.at(1), p.at(7)), Fault("compressor", p.at(2), p.at(3.5))),
            physics=_QUIET_DOOR,
        )
    return b.out()


def _reordered_delivery(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    for i in range(p.sites):
        # Every 4th reading arrives 3 min behind the newest (3 x the default allowed lateness), 5% of the
        # messages are sent twice; the compressor fails after 1 h.
        b.cold_room(
            p.site(i),
            1,
            faults=(Fault("compressor", p.at(1), p.at(3)),),
            reorder_s=180.0,
            duplicates=0.05,
            physics=_QUIET_DOOR,
        )
    return b.out()


def _flag_styles(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    for i in range(p.sites):
        s = p.site(i)
        # Four loggers, two payload styles each configured as the site file documents: flags sent only while
        # true (flags: snapshot, the default) and flags sent on change (flags: on_change). Rooms 1-2: a normal
        # day (routine door openings, defrosts); rooms 3-4: the door left open for 25 min after 2 h.
        door = (Fault("door", p.at(2), p.at(2) + 25 * MIN),)
        b.cold_room(s, 1, flag_style="true_only")
        b.cold_room(s, 2, flag_style="on_change", flags_config="on_change")
        b.cold_room(s, 3, flag_style="true_only", faults=door, physics=_QUIET_DOOR)
        b.cold_room(s, 4, flag_style="on_change", flags_config="on_change", faults=door, physics=_QUIET_DOOR)
    return b.out()


def _demo(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    for i in range(p.sites):
        s = p.site(i)
        b.cold_room(s, 1, faults=(Fault("compressor", p.at(1.5), p.at(4)),))
        b.cold_room(s, 2, faults=(Fault("door", p.at(2), p.at(2) + 20 * MIN),), physics=_QUIET_DOOR)
        b.cold_room(s, 3, faults=(Fault("offline", p.at(3), p.at(3.5)),))
        b.kitchen(s, step_aways=((p.at(3.5), 9 * 60.0),), violations=(p.at(2.6), p.at(2.7)))
    return b.out()


def _no_sensors(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    return [], []


def _market_morning(p: Params) -> list[MarketSim]:
    return [MarketSim(p.site(i), p.seed, p.start_ms, p.end_ms) for i in range(p.sites)]


def _dead_battery(p: Params) -> tuple[list[DeviceSim], list[KitchenSim]]:
    b = _Builder(p)
    for i in range(p.sites):
        b.cold_room(p.site(i), 1, faults=(Fault("battery", p.at(0.5), p.at(2.5)),))
    return b.out()


#: Cold rooms where nobody opens the door by routine, so an injected door fault is the only opening.
_QUIET_DOOR = Physics(door_rate_per_h=0.0)

LIBRARY: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec(
            "demo",
            "One site in 6 hours: a compressor fails, a door is left open, a logger loses its network for 30 min, "
            "a cook leaves the stove on, two hygiene violations.",
            1,
            6 * 3600,
            _demo,
        ),
        Spec(
            "quiet-week",
            "A normal week: defrost cycles, routine door openings, lunch and dinner service, AI false positives. "
            "No true alerts.",
            2,
            7 * 86400,
            _quiet_week,
        ),
        Spec(
            "compressor-failure",
            "Compressor of cold room 1 fails after 1 h, repaired at 3.5 h.",
            1,
            6 * 3600,
            _compressor_failure,
        ),
        Spec("door-left-open", "The cold-room door is left open for 25 min after 1 h.", 1, 3 * 3600, _door_left_open),
        Spec(
            "truck-coverage-gaps",
            "A reefer truck on a route with hourly deliveries; an 8-min and a 45-min "
            "coverage gap, each followed by a store-and-forward upload.",
            1,
            7 * 3600,
            _truck_coverage_gaps,
        ),
        Spec(
            "reefer-failure", "A reefer truck whose refrigeration unit fails after 2.5 h.", 1, 6 * 3600, _reefer_failure
        ),
        Spec(
            "stuck-sensor",
            "The temperature sensor of cold room 1 reports the same value for 2 h.",
            1,
            4 * 3600,
            _stuck_sensor,
        ),
        Spec(
            "unattended-stove",
            "Lunch service; a cook steps away for 2 min (fine) and later for 12 min with the stove on.",
            1,
            6 * 3600,
            _unattended_stove,
        ),
        Spec(
            "hygiene-burst",
            "One isolated hygiene violation, then four in 8 minutes (repeats of a type within 10 min fold into "
            "one alert); plus low-confidence false positives.",
            1,
            5 * 3600,
            _hygiene_burst,
        ),
        Spec("mass-outage", "A power cut takes out every site's refrigeration for 2 h.", 100, 5 * 3600, _mass_outage),
        Spec(
            "skewed-clock",
            "Two loggers with wrong clocks (50 s slow, 4 min fast) whose compressors fail.",
            1,
            4 * 3600,
            _skewed_clock,
        ),
        Spec(
            "store-and-forward",
            "A logger offline for 6 h uploads its stored readings when it reconnects.",
            1,
            8 * 3600,
            _store_and_forward,
        ),
        Spec(
            "market-morning",
            "A market's morning of rapid tests (快检): 40 samples on two instruments, a negative recheck in time, a "
            "suspect never rechecked (uploaded late in a backlog), a positive removed from sale, a lab-confirmed "
            "positive, a recheck after the 4-h window.",
            1,
            7 * 3600,
            _no_sensors,
            _market_morning,
        ),
        Spec(
            "outage-excursion",
            "A logger offline for 6 h uploads its stored readings on reconnect; inside the outage the compressor "
            "failed for 1.5 h: a retrospective coldchain.high.",
            1,
            8 * 3600,
            _outage_excursion,
        ),
        Spec(
            "reordered-delivery",
            "Every 4th reading arrives 3 x the allowed lateness late, 5% duplicated; the compressor fails.",
            1,
            4 * 3600,
            _reordered_delivery,
        ),
        Spec(
            "flag-styles",
            "Door/defrost flags sent only while true (flags: snapshot) and on change (flags: on_change): a normal "
            "day in two rooms, a door left open for 25 min in two others.",
            1,
            6 * 3600,
            _flag_styles,
        ),
        Spec(
            "dead-battery", "A logger's battery drains over 2 h until it stops reporting.", 1, 4 * 3600, _dead_battery
        ),
    )
}


def build(
    name: str,
    *,
    seed: int = 1,
    sites: int | None = None,
    start_ms: int | None = None,
    duration_s: float | None = None,
    rules: R.RuleParams | None = None,
    prefix: str = "",
) -> Scenario:
    """Generate a library scenario by name, or one described by a YAML scenario file."""
    overrides: dict[str, Any] = {}
    if name not in LIBRARY and Path(name).is_file():
        from ruamel.yaml import YAML

        doc = YAML(typ="safe").load(Path(name).read_text()) or {}
        if not isinstance(doc, dict) or "scenario" not in doc:
            raise ValueError(f"{name}: a scenario file needs 'scenario: <name>' (one of {', '.join(LIBRARY)})")
        name = str(doc["scenario"])
        seed = int(doc.get("seed", seed))
        sites = sites if sites is not None else doc.get("sites")
        if duration_s is None and "duration" in doc:
            duration_s = parse_duration(doc["duration"])
        overrides = dict(doc.get("rules") or {})
    if name not in LIBRARY:
        raise ValueError(f"unknown scenario {name!r}; choose one of {', '.join(LIBRARY)} or give a YAML file")
    spec = LIBRARY[name]
    p = Params(
        seed=seed,
        sites=sites if sites is not None else spec.default_sites,
        start_ms=start_ms if start_ms is not None else DEFAULT_START_MS,
        duration_s=duration_s if duration_s is not None else spec.default_duration_s,
        rules=(rules or R.DEFAULT).with_overrides(**overrides),
        prefix=prefix,
    )
    if p.sites < 1:
        raise ValueError("--sites must be at least 1")
    devices, kitchens = spec.build(p)
    markets = spec.markets(p) if spec.markets else []
    streams: list[list[Line]] = [d.run() for d in devices] + [k.run() for k in kitchens] + [m.run() for m in markets]
    truth: list[Truth] = sorted(
        [
            *(t for d in devices for t in d.truth),
            *(t for k in kitchens for t in k.truth),
            *(t for m in markets for t in m.truth),
        ],
        key=_truth_key,
    )
    doc = site_document(seed, devices, kitchens, markets)
    config = SiteConfig.model_validate(doc)
    return Scenario(name, spec.description, config, p.start_ms, p.end_ms, list(merge(streams)), truth, doc)


def _truth_key(t: Truth) -> tuple[int, str, str]:
    return (t.opened_at_ms, t.rule, t.subject)


def combine(names: list[str], *, seed: int = 1, end_ms: int | None = None) -> tuple[Scenario, dict[str, str]]:
    """Several library scenarios as one fleet (site ids prefixed ``z01``, ``z02``, ...) so a single run of the
    pipeline exercises them all; returns the scenario and {prefix: scenario name}.

    Each keeps its own duration and all of them *end* together (a scenario that ended early would leave silent
    devices behind, i.e. offline alerts, while the others run on)."""
    longest = max(LIBRARY[n].default_duration_s for n in names)
    end = end_ms if end_ms is not None else DEFAULT_START_MS + int(longest * 1000)
    parts = {
        f"z{i + 1:02d}": build(
            n, seed=seed, start_ms=end - int(LIBRARY[n].default_duration_s * 1000), prefix=f"z{i + 1:02d}"
        )
        for i, n in enumerate(names)
    }
    doc: dict[str, Any] = {"version": 1, "sites": {}}
    for sc in parts.values():
        doc["sites"].update(sc.config_doc["sites"])
    start = min(sc.start_ms for sc in parts.values())
    lines = list(merge([[x for x in sc.lines if x.kind != "end"] for sc in parts.values()]))
    truth = sorted((t for sc in parts.values() for t in sc.truth), key=_truth_key)
    combined = Scenario("+".join(names), "combined", SiteConfig.model_validate(doc), start, end, lines, truth, doc)
    return combined, {p: sc.name for p, sc in parts.items()}
