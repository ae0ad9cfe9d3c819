"""A simulated site-day for the daily-record tests, as InfluxDB holds it after the pipeline ran.

The simulator (``simulators/``) makes one local day (2026-11-23, Asia/Shanghai) of a site with three cold rooms and
a kitchen; the lines go through the bridge's and the hooks' own validation, the pure detectors (the worker's
code) in arrival order with a tick every simulated 10 s, and into a real InfluxDB database through the sink's
line builder (:mod:`pipeline.sinks.lineproto`) and writer. Deliveries, escalations, acks, a corrective action,
a hygiene verdict and one retrospective alert are written as the notifier, the ack API, the console and the
retrospective detector (being built by others) write them: their shapes are the documented ones (schemas.py).

What happens in the day (local times):

* ``cr1``: the compressor fails 10:00-13:00 -> ``coldchain.high`` (and ``high_high``); the operator is told, it
  escalates to the site manager, who acknowledges with a note; the console adds corrective action + disposition.
* ``cr2``: offline 14:00-15:00, then a store-and-forward upload (late readings, a compliance gap that was
  backfilled); its compressor fails 14:05-14:35 inside the outage -> one retrospective ``coldchain.high``.
* ``cr3``: offline 20:00-20:45 and the logger lost those readings (a gap without backfill).
* kitchen ``k1``: a cook steps away for 12 min at 11:30 with the stove on, two hygiene violations at 12:00.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from pipeline import serde
from pipeline.alerts.routing import recipient_id
from pipeline.detectors.device import DeviceDetector
from pipeline.detectors.kitchen import KitchenDetector
from pipeline.ingest.hooks import validate_events
from pipeline.ingest.validate import validate_device_payload
from pipeline.schemas import Alert, AlertState, Annotation, Delivery, Severity, alert_id, ms_to_iso
from pipeline.sinks import lineproto
from pipeline.siteconfig import Role, SiteConfig, resolve_device_rules, resolve_kitchen_rules, write_site_file
from simulators.coldchain import DeviceSim, Fault
from simulators.core import Line, merge
from simulators.kitchen import KitchenSim
from simulators.scenarios import site_document

SITE = "S1"
DAY = date(2026, 11, 23)
DAY_START_MS = int(datetime(2026, 11, 22, 16, 0, tzinfo=UTC).timestamp() * 1000)  # 00:00 +08:00
DAY_END_MS = DAY_START_MS + 24 * 3_600_000
H = 3_600_000
MIN = 60_000
SEED = 7


def local(hours: float) -> int:
    return DAY_START_MS + int(hours * H)


@dataclass
class SimDay:
    config_path: Path
    config: SiteConfig
    lines: list[Line]
    alerts: list[Alert]
    annotations: list[Annotation]
    deliveries: list[Delivery]
    extra: dict[str, Any] = field(default_factory=dict)


def _doc() -> tuple[dict[str, Any], list[DeviceSim], KitchenSim]:
    start, end = DAY_START_MS - 2 * H, DAY_END_MS + H
    devs = [
        DeviceSim("S1-cr1", SITE, SEED, start, end, faults=(Fault("compressor", local(10), local(13)),)),
        DeviceSim(
            "S1-cr2",
            SITE,
            SEED,
            start,
            end,
            faults=(
                Fault("offline", local(14), local(15)),
                Fault("compressor", local(14) + 2 * MIN, local(14) + 50 * MIN),
            ),
        ),
        DeviceSim("S1-cr3", SITE, SEED, start, end, faults=(Fault("offline", local(20), local(20.75), upload=False),)),
    ]
    kitchen = KitchenSim(
        "S1-k1",
        "S1-cam1",
        SITE,
        SEED,
        start,
        end,
        step_aways=((local(11.5), 12 * 60.0),),
        violations=(local(12), local(12) + 3 * MIN),
    )
    doc = site_document(SEED, devs, [kitchen])
    s = doc["sites"][SITE]
    s.update(
        name="海淀区示范餐厅 Demo Restaurant",
        licence_no="JY11108000000001",
        credit_code="91110108MA00000000",
        station="中关村市场监管所",
        district="海淀区市场监管局",
        recipients={
            "operator": [{"name": "王伟 Wang Wei", "phone": "+86 138 0000 0001"}],
            "site_manager": [{"name": "李娜 Li Na", "phone": "+86 138 0000 0002"}],
            "station": [{"name": "Station duty desk", "phone": "+86 10 0000 0003"}],
        },
    )
    names = {
        "S1-cr1": "Walk-in cooler 1 冷藏库1",
        "S1-cr2": "Walk-in cooler 2 冷藏库2",
        "S1-cr3": "Dairy cooler 乳品冷柜",
    }
    for dev, name in names.items():
        s["assets"][f"{dev}-asset"]["name"] = name
    return doc, devs, kitchen


def _alert(a: Alert, **changes: Any) -> Alert:
    return a.model_copy(update=changes)


def build(folder: Path) -> SimDay:
    """Generate the day, run it through validation and the detectors; nothing is written yet."""
    doc, devs, kitchen = _doc()
    path = folder / "sites.yaml"
    write_site_file(path, doc)
    from pipeline import siteconfig

    cfg = siteconfig.load(path)
    site = cfg.sites[SITE]
    lines = list(merge([d.run() for d in devs] + [kitchen.run()]))
    detectors = {d: DeviceDetector(resolve_device_rules(cfg, SITE, d)) for d in site.devices}
    states: dict[str, Any] = {d: det.initial() for d, det in detectors.items()}
    kdet = KitchenDetector(resolve_kitchen_rules(cfg, SITE, "S1-k1"))
    kstate = kdet.initial()
    outputs: list[Any] = []
    readings: list[dict[str, Any]] = []
    next_tick = lines[0].at_ms

    def tick_to(t: int) -> None:
        nonlocal next_tick, kstate
        while next_tick <= t:
            for d, det in detectors.items():
                states[d], o = det.on_tick(states[d], next_tick)
                outputs.extend(o)
            kstate, o = kdet.on_tick(kstate, next_tick)
            outputs.extend(o)
            next_tick += 10_000

    for line in lines:
        tick_to(line.at_ms)
        if line.kind == "mqtt":
            dev = site.devices[line.source]
            base = {
                "device": line.source,
                "site": SITE,
                "asset": dev.asset,
                "profile": site.assets[dev.asset].profile,
                "received_ms": line.at_ms,
            }
            items, refused = validate_device_payload(serde.dumps(line.body), base, line.at_ms, 300_000)
            assert not refused, refused
            for item in items:
                readings.append(item)
                states[line.source], o = detectors[line.source].on_reading_dict(states[line.source], item, line.at_ms)
                outputs.extend(o)
        elif line.kind == "hook":
            ok, bad = validate_events(serde.dumps(line.body), line.at_ms, 300_000)
            assert not bad, bad
            for _, ev in ok:
                item = {
                    "camera": line.source,
                    "site": SITE,
                    "kitchen": "S1-k1",
                    "event_id": ev.event_id,
                    "ts_ms": int(ev.ts.timestamp() * 1000),
                    "type": ev.type.value,
                    "zone": ev.zone,
                    "confidence": ev.confidence,
                    "count": ev.count,
                    "image_url": ev.image_url,
                    "received_ms": line.at_ms,
                }
                kstate, o = kdet.on_event_dict(kstate, item, line.at_ms)
                outputs.extend(o)
    tick_to(lines[-1].at_ms + 10 * MIN)
    alerts = [o for o in outputs if isinstance(o, Alert)]
    annotations = [o for o in outputs if isinstance(o, Annotation)]
    day = SimDay(path, cfg, lines, alerts, annotations, [], {"readings": readings})
    _people_side(day)
    return day


def _delivery(kind: str, at: int, mid: str, person: dict[str, Any], role: str, a: Alert, **kw: Any) -> Delivery:
    from pipeline.siteconfig import Recipient

    return Delivery(
        kind=kind,  # type: ignore[arg-type]
        message_id=mid,
        at_ms=at,
        recipient=recipient_id(Recipient.model_validate(person)),
        recipient_name=person["name"],
        role=role,
        site=a.site,
        rule=a.rule,
        severity=a.severity.value,
        alert_ids=[a.alert_id],
        channels=["sms"],
        **kw,
    )


def _people_side(day: SimDay) -> None:
    """What the notifier, ack API, console and retrospective detector add, in their documented shapes."""
    site = day.config.sites[SITE]
    people = {role: site.recipients[role][0].model_dump(exclude_none=True) for role in site.recipients}
    high = next(a for a in day.alerts if a.rule == "coldchain.high" and a.subject == "S1-cr1" and a.state == "open")
    opened = high.at_ms
    ev = {"opened_ms": opened}
    # Operator told at once (tier 1), site manager after 15 min (tier 2), who acknowledges at +22 min.
    tiers: tuple[tuple[Role, int], ...] = (("operator", 0), ("site_manager", 15 * MIN))
    for step, (role, after) in enumerate(tiers):
        mid = f"m-test-{step}"
        at = opened + after + 1_500
        day.deliveries += [
            _delivery("planned", at, mid, people[role], role, high, keys=[f"{high.alert_id}|{step}|x"]),
            _delivery("attempt", at + 700, mid, people[role], role, high, channel="sms", status="ok", attempt=1),
            _delivery("delivered", at + 800, mid, people[role], role, high, channel="sms", status="ok"),
        ]
        if step:
            day.alerts.append(
                _alert(
                    high,
                    state=AlertState.ESCALATED,
                    at_ms=opened + after,
                    evidence={**high.evidence, **ev, "step": step},
                )
            )
    ack_at = opened + 22 * MIN
    day.alerts.append(
        _alert(
            high,
            state=AlertState.ACKNOWLEDGED,
            at_ms=ack_at,
            evidence={
                **high.evidence,
                **ev,
                "by": "李娜 Li Na",
                "role": "site_manager",
                "via": "link",
                "note": "moved stock to cooler 3; technician called 维修已联系",
            },
        )
    )
    resolved = next(a for a in day.alerts if a.alert_id == high.alert_id and a.state == "resolved")
    day.alerts.remove(resolved)
    day.alerts.append(
        _alert(
            resolved,
            evidence={
                **resolved.evidence,
                "corrective_action": "compressor relay replaced 更换压缩机继电器",
                "disposition": "12 kg dairy discarded 报废",
            },
        )
    )
    # The retrospective detector's alert for cr2's failure inside its outage (rule semantics: > 8 °C for 15 min).
    pts = sorted((r["ts_ms"], r["temp_c"]) for r in day.extra["readings"] if r["device"] == "S1-cr2")
    above = [t for t, v in pts if local(14) <= t < local(15) and v > 8.0]
    start = above[0]
    back = next(t for t, v in pts if t > start and v <= 7.5)
    opened2 = start + 15 * MIN
    aid = alert_id("coldchain.high", "S1-cr2", opened2)
    base = Alert(
        alert_id=aid,
        rule="coldchain.high",
        severity=Severity.WARNING,
        site=SITE,
        subject="S1-cr2",
        state=AlertState.OPEN,
        opened_at=ms_to_iso(opened2),
        at_ms=opened2,
        evidence={"limit_c": 8.0, "breach_since": ms_to_iso(start), "retrospective": True},
    )
    day.alerts += [
        base,
        _alert(base, state=AlertState.RESOLVED, at_ms=back + 5 * MIN, resolved_at=ms_to_iso(back + 5 * MIN)),
    ]
    # A hygiene event confirmed in the console.
    hyg = next(a for a in day.alerts if a.rule.startswith("kitchen.hygiene.") and a.state == "resolved")
    day.alerts.append(
        _alert(
            hyg,
            state=AlertState.ACKNOWLEDGED,
            at_ms=hyg.at_ms + 2 * MIN,
            evidence={**hyg.evidence, "verdict": "confirmed", "by": "李娜 Li Na", "note": "retrained"},
        )
    )
    day.extra["high"] = high
    day.extra["retro"] = base


def write(day: SimDay, settings: Any, bucket: str) -> int:
    """Everything into InfluxDB, as the sink writes it; returns the points written."""
    from pipeline.sinks.influx import InfluxWriter

    # Readings in nanoseconds, as the sink writes them (a seq offset keeps same-millisecond readings apart).
    readings = [line for r in day.extra["readings"] if (line := lineproto.reading_line(r)) is not None]
    ns = [lineproto.alert_line(a) for a in day.alerts]
    ns += [lineproto.annotation_line(a) for a in day.annotations]
    ns += [lineproto.delivery_line(d) for d in day.deliveries]
    w = InfluxWriter(settings, bucket)
    try:
        for i in range(0, len(readings), 5000):
            w.write(readings[i : i + 5000], "ns")
        w.write(ns, "ns")
    finally:
        w.close()
    return len(readings) + len(ns)


async def flip_a_byte(settings: Any, target: Path) -> None:
    """Flip one byte in the middle of a stored file of the day's record: ``verify`` must name the day and the
    file. The byte is flipped back before returning (the caller checks that ``verify`` is content again)."""
    from pipeline.reports import service

    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    _, findings = await service.verify(settings, SITE)
    assert findings and findings[0].date == DAY.isoformat() and f"{target.name} does not match" in findings[0].problem
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))


async def sample(out: Path) -> None:
    """Make the sample record shown in the README (docs/daily-record-page1.png) on scratch topics and database."""
    import shutil
    import uuid

    from pipeline import stack
    from pipeline.reports import service
    from pipeline.settings import ReportSettings, load_settings
    from pipeline.stack import influx
    from pipeline.topics import Topics

    base = load_settings()
    tmp = out / "work"
    shutil.rmtree(tmp, ignore_errors=True)
    day = build(tmp)
    name = f"t{uuid.uuid4().hex[:10]}"
    influx.create_database(base, name)
    await stack.ensure_topics(base, Topics(name, 1))
    settings = base.model_copy(
        update={
            "topic_prefix": name,
            "site_config": day.config_path,
            "influx": base.influx.model_copy(update={"bucket_override": f"{name}/autogen"}),
            "reports": ReportSettings(dir=tmp / "archive"),
        }
    )
    try:
        write(day, settings, f"{name}/autogen")
        await service.generate(settings, SITE, DAY, now_ms=DAY_END_MS + 2 * H)
        await service.sign(
            settings, SITE, DAY, "李娜 Li Na", comment="checked with the log book", now_ms=DAY_END_MS + 3 * H
        )
        await service.generate(settings, SITE, DAY, now_ms=DAY_END_MS + 3 * H, out=out)
    finally:
        influx.drop_database(base, name)
        await stack.delete_topics(base, stack.prefixed(name))
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import asyncio
    import sys

    asyncio.run(sample(Path(sys.argv[1] if len(sys.argv) > 1 else "sample-report")))
