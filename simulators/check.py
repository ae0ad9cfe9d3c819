"""Run a scenario through the pure detectors, the way the worker would, without any service.

Lines are taken in ``at`` order; the replay clock ticks every ``tick_every_s`` of recording time (and at the
end), each tick reaching every subject; a reading is handed over with ``now_ms`` = the last tick, as the worker
in replay mode does. The parsing is a simplified bridge/hook (the real validation lives in
:mod:`pipeline.ingest.validate`; scenarios only produce valid messages). Used by fast unit tests to check that
scenarios and detectors agree before the end-to-end tests run them through Kafka.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.contracts.models import Alert, ts_to_ms
from pipeline.contracts.replay import Line
from pipeline.detectors.base import Output
from pipeline.siteconfig import SiteConfig


def _ms(ts: Any) -> int:
    return ts_to_ms(ts)


def _elements(body: Any, many: str) -> list[Any]:
    """A message's elements: a batch ``{many: [...]}``, or the one element the body is."""
    return body[many] if isinstance(body, dict) and many in body else [body]


def detect(config: SiteConfig, lines: Iterable[Line], *, tick_every_s: float = 10.0) -> list[Alert]:
    from pipeline.detectors.device import DeviceDetector
    from pipeline.detectors.kitchen import KitchenDetector
    from pipeline.detectors.rapidtest import RapidTestDetector
    from pipeline.siteconfig import resolve_device_rules, resolve_kitchen_rules

    dev_site = {d: (s, dev) for d, s, dev in config.devices()}
    cam_site = {c: (s, cam) for c, s, cam in config.cameras()}
    ins_site = {i: (s, ins) for i, s, ins in config.instruments()}
    detectors: dict[str, Any] = {}
    states: dict[str, Any] = {}
    out: list[Output] = []

    def subject(kind: str, key: str, site: str, ident: str) -> str:
        if key not in detectors:
            if kind == "device":
                detectors[key] = DeviceDetector(resolve_device_rules(config, site, ident))
            else:
                detectors[key] = KitchenDetector(resolve_kitchen_rules(config, site, ident))
            states[key] = detectors[key].initial()
        return key

    def tick(now: int) -> None:
        for key, det in detectors.items():
            states[key], o = det.on_tick(states[key], now)
            out.extend(o)

    tick_ms = int(tick_every_s * 1000)
    now: int | None = None
    next_tick: int | None = None
    for line in lines:
        if next_tick is None:
            next_tick = (line.at_ms // tick_ms + 1) * tick_ms
        while next_tick <= line.at_ms:
            now = next_tick
            tick(now)
            next_tick += tick_ms
        if line.kind == "end":
            now = line.at_ms
            tick(now)
            continue
        if line.kind == "rapid_test":
            site, ins = ins_site[line.source]
            key = f"rapidtest:{site}"
            if key not in detectors:
                r = config.sites[site].rapid_tests
                detectors[key] = RapidTestDetector(site, r.recheck_within_min, r.allowed_lateness_min)
                states[key] = detectors[key].initial()
            for res in _elements(line.body, "results"):
                d = {k: v for k, v in res.items() if k != "tested_at"} | {
                    "instrument": line.source,
                    "instrument_type": ins.type,
                    "site": site,
                    "ts_ms": _ms(res["tested_at"]),
                    "received_ms": line.at_ms,
                }
                states[key], o = detectors[key].on_item(states[key], d, now if now is not None else line.at_ms)
                out.extend(o)
            continue
        if line.kind == "mqtt":
            site, dev = dev_site[line.source]
            key = subject("device", line.source, site, line.source)
            det = detectors[key]
            for it in _elements(line.body, "readings"):
                d = {
                    "device": line.source,
                    "site": site,
                    "asset": dev.asset,
                    "profile": config.sites[site].assets[dev.asset].profile,
                    "seq": it["seq"],
                    "ts_ms": _ms(it["ts"]),
                    "temp_c": float(it["temp_c"]),
                    "humidity": it.get("humidity"),
                    "battery": it.get("battery"),
                    "door_open": it.get("door_open"),
                    "defrost": it.get("defrost"),
                    "received_ms": line.at_ms,
                }
                states[key], o = det.on_reading_dict(states[key], d, now if now is not None else line.at_ms)
                out.extend(o)
        else:
            site, cam = cam_site[line.source]
            key = subject("kitchen", f"{site}/{cam.kitchen}", site, cam.kitchen)
            det = detectors[key]
            for ev in _elements(line.body, "events"):
                d = {
                    "camera": line.source,
                    "site": site,
                    "kitchen": cam.kitchen,
                    "event_id": ev["event_id"],
                    "ts_ms": _ms(ev["ts"]),
                    "type": ev["type"],
                    "zone": ev.get("zone"),
                    "confidence": ev.get("confidence"),
                    "count": ev.get("count"),
                    "image_url": ev.get("image_url"),
                    "received_ms": line.at_ms,
                }
                states[key], o = det.on_event_dict(states[key], d, now if now is not None else line.at_ms)
                out.extend(o)
    return [o for o in out if isinstance(o, Alert)]
