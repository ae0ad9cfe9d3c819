"""From gathered data to the numbers of the record (pure: no I/O, no clock). The definitions are documented in
docs/reports.md, and the tests recompute every number from the simulator's readings their own way.

* **expected** readings: the day's length / the device's ``interval_s``; **received**: stored readings with a
  time in the day; **completeness** = received / expected (at most 100 %).
* **held time**: each reading stands for the time until the next one, at most ``offline_k x interval_s`` (the
  offline timeout: beyond it the value is not known) and never past the day's end. **Time in range** = held
  time of in-range readings / all held time; **time out of range** = held time of readings outside.
* **in range**: ``low <= temp <= high`` with the asset's resolved L and H limits (a missing limit is no bound;
  a value at the limit is not a breach, as for the rules).
* **MKT** of the day: ``(ΔH/R) / -ln(Σ w·e^(-ΔH/(R·T)) / Σ w)`` in kelvin with ΔH = 83.144 kJ/mol and the held
  times as weights (the same formula as the ``coldchain.mkt`` rule).
* **late** readings: stored with ``delay_ms`` (arrival - reading time) above the allowed lateness.
* **gaps**: the ``compliance_gap`` findings of the device, clipped to the day, with the readings that were
  stored for that time later (store-and-forward: the finding stays, the data is backfilled).
* **excursions**: every ``coldchain.*`` alert of the site that overlaps the day. Start = the breach's start
  (evidence ``breach_since``) or the opening, end = resolution; peak = the highest (lowest for ``low`` rules)
  reading of the day in [start, end].
* **rapid tests**: every ``rapid_test`` result of the site tested in the day (contract 6), by time; result =
  value and unit against the limit (quantitative) or ``qualitative``; verdict = the outcome (negative / positive
  / suspect) and, unless initial, the stage (recheck, lab confirmed).
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.reports.model import (
    AlertHistory,
    AssetDay,
    DailyReport,
    DayData,
    DeliveryPoint,
    Excursion,
    Gap,
    KitchenEpisode,
    Notified,
    Point,
    RapidTestPoint,
    RapidTestRow,
)
from pipeline.siteconfig import Site, SiteConfig, resolve_device_rules

DELTA_H = 83.144  # kJ/mol, USP <1079.2> / the coldchain.mkt rule
R_GAS = 8.314462618e-3  # kJ/(mol K)
LEVEL_RULES = ("coldchain.high", "coldchain.high_high", "coldchain.low", "coldchain.low_low")


def in_range(temp: float, low: float | None, high: float | None) -> bool:
    return (low is None or temp >= low) and (high is None or temp <= high)


def held(points: list[Point] | tuple[Point, ...], cap_ms: int, end_ms: int) -> list[int]:
    """Milliseconds each reading stands for (see the module docstring)."""
    out = []
    for i, p in enumerate(points):
        nxt = points[i + 1].ts_ms if i + 1 < len(points) else end_ms
        out.append(max(0, min(nxt, p.ts_ms + cap_ms, end_ms) - p.ts_ms))
    return out


def mkt(temps: list[float], weights: list[int]) -> float | None:
    total = sum(weights)
    if not total:
        return None
    k = DELTA_H / R_GAS
    s = sum(w * math.exp(-k / (t + 273.15)) for t, w in zip(temps, weights, strict=True))
    return k / -math.log(s / total) - 273.15


def _asset_day(cfg: SiteConfig, site_id: str, device: str, data: DayData) -> AssetDay:
    site = cfg.sites[site_id]
    dev = site.devices[device]
    asset = site.assets[dev.asset]
    rules = resolve_device_rules(cfg, site_id, device)
    low, high = rules.low.limit, rules.high.limit
    pts = data.readings.get(device, [])
    cap = int(rules.liveness.offline_k * dev.interval_s * 1000)
    weights = held(pts, cap, data.end_ms)
    temps = [p.temp_c for p in pts]
    in_w = sum(w for p, w in zip(pts, weights, strict=True) if in_range(p.temp_c, low, high))
    total_w = sum(weights)
    lateness = int(rules.allowed_lateness_min * 60_000)
    gaps = []
    for a in data.annotations:
        if a.kind != "compliance_gap" or a.subject != device:
            continue
        s, e = max(a.start_ms, data.start_ms), min(a.end_ms, data.end_ms)
        if e > s:
            # Readings strictly inside (last, next): the finding's own ends are the readings around the silence.
            filled = sum(1 for p in pts if a.start_ms < p.ts_ms < a.end_ms)
            gaps.append(Gap(s, e, filled))
    return AssetDay(
        asset=dev.asset,
        name=asset.name or dev.asset,
        kind=asset.kind,
        profile=asset.profile,
        device=device,
        interval_s=dev.interval_s,
        low_c=low,
        high_c=high,
        expected=round((data.end_ms - data.start_ms) / (dev.interval_s * 1000)),
        received=len(pts),
        late=sum(1 for p in pts if p.delay_ms is not None and p.delay_ms > lateness),
        gaps=tuple(gaps),
        min_c=min(temps) if temps else None,
        max_c=max(temps) if temps else None,
        mean_c=sum(temps) / len(temps) if temps else None,
        covered_min=total_w / 60_000,
        in_range_pct=100.0 * in_w / total_w if total_w else None,
        out_of_range_min=(total_w - in_w) / 60_000,
        mkt_c=mkt(temps, weights),
        points=tuple(pts),
    )


def _names(site: Site) -> dict[str, str]:
    from pipeline.alerts.routing import recipient_id

    return {recipient_id(r): r.name for people in site.recipients.values() for r in people}


def _tier(site: Site, severity: str, role: str) -> int | None:
    steps = site.escalation.critical if severity == "critical" else site.escalation.warning
    for i, step in enumerate(steps, 1):
        if role in step.roles:
            return i
    return None


def _notified(site: Site, alert: AlertHistory, deliveries: list[DeliveryPoint]) -> tuple[Notified, ...]:
    """Who was told about this alert, at which tier, when, and whether it arrived (one row per message)."""
    names = _names(site)
    planned = {d.message_id: d for d in deliveries if d.kind == "planned" and alert.alert_id in d.alert_ids}
    closed: dict[str, DeliveryPoint] = {}
    for d in deliveries:
        if d.message_id in planned and d.kind in ("delivered", "failed"):
            closed.setdefault(d.message_id, d)
    rows = []
    for mid, p in planned.items():
        c = closed.get(mid)
        rows.append(
            Notified(
                tier=_tier(site, alert.severity, p.role),
                role=p.role,
                name=names.get(p.recipient, p.recipient),
                channel=(c.channel if c else p.channel) or "",
                at_ms=c.at_ms if c else p.at_ms,
                status=c.kind if c else "planned",
            )
        )
    rows.sort(key=lambda n: (n.at_ms, n.tier or 99, n.name))
    return tuple(rows)


def _ack(alert: AlertHistory) -> tuple[str | None, int | None, str | None, str]:
    t = alert.first("acknowledged")
    if t is None:
        return None, None, None, ""
    return t.by or t.evidence.get("by"), t.at_ms, t.via or t.evidence.get("via"), t.note or t.evidence.get("note") or ""


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _when(v: Any) -> int | None:
    """An evidence time: epoch milliseconds, or RFC 3339 (the detectors write ``breach_since`` that way)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        from pipeline.schemas import _parse_ts, to_ms

        try:
            return to_ms(_parse_ts(v))
        except ValueError:
            return None
    return None


def _peak(points: list[Point], start: int, end: int, low: bool) -> float | None:
    vals = [p.temp_c for p in points if start <= p.ts_ms <= end]
    if not vals:
        return None
    return min(vals) if low else max(vals)


def _excursion(site: Site, data: DayData, alert: AlertHistory) -> Excursion:
    dev = site.devices.get(alert.subject)
    opened = alert.opened_ms or data.start_ms
    since = _when(alert.evidence("breach_since"))
    start = since if since is not None and since <= opened else opened
    end = alert.resolved_ms
    ack_by, ack_at, ack_via, note = _ack(alert)
    corrective = alert.evidence("corrective_action")
    disposition = alert.evidence("disposition")
    return Excursion(
        alert_id=alert.alert_id,
        rule=alert.rule,
        severity=alert.severity,
        asset=dev.asset if dev else "",
        device=alert.subject,
        start_ms=start,
        alarm_ms=opened,
        end_ms=end,
        peak_c=_peak(
            data.readings.get(alert.subject, []), start, end if end is not None else data.end_ms, ".low" in alert.rule
        ),
        limit_c=_num(_first(alert.evidence("limit_c"), alert.evidence("limit"))),
        retrospective=alert.evidence("retrospective") is True,
        notified=_notified(site, alert, data.deliveries),
        ack_by=ack_by,
        ack_at_ms=ack_at,
        ack_via=ack_via,
        corrective_action=str(corrective) if corrective else note,
        disposition=str(disposition) if disposition else "",
    )


def _episode(alert: AlertHistory) -> KitchenEpisode:
    ack_by, ack_at, _, note = _ack(alert)
    if alert.rule.startswith("kitchen.hygiene."):
        verdict = alert.evidence("verdict")
        shown = {"confirmed": "confirmed", "false_positive": "false positive"}.get(str(verdict), "not reviewed")
    else:
        shown = str(alert.evidence("reason") or "")
    count = _first(alert.evidence("events"), alert.evidence("count"))
    return KitchenEpisode(
        alert_id=alert.alert_id,
        kitchen=alert.subject.split("/", 1)[-1],
        rule=alert.rule,
        severity=alert.severity,
        # An unattended episode began when nobody was left (the alert opens warn_min later).
        start_ms=_when(alert.evidence("unattended_since")) or alert.opened_ms or 0,
        end_ms=alert.resolved_ms,
        count=count if isinstance(count, int) and not isinstance(count, bool) else None,
        confidence=_num(alert.evidence("max_confidence") or alert.evidence("confidence")),
        verdict=shown,
        retrospective=alert.evidence("retrospective") is True,
        ack_by=ack_by,
        ack_at_ms=ack_at,
        note=str(alert.evidence("corrective_action") or note or ""),
    )


def _number(v: float) -> str:
    return f"{v:g}"


def rapid_test_row(x: RapidTestPoint) -> RapidTestRow:
    if x.value is not None:
        result = f"{_number(x.value)} {x.unit}".strip()
        if x.limit is not None:
            basis = f", {x.limit_basis}" if x.limit_basis else ""
            result += f" (limit {_number(x.limit)} {x.unit}{basis})".replace(" ,", ",").replace("  ", " ")
    else:
        result = "qualitative"
    disposition = x.disposition.replace("_", " ")
    if disposition and x.quantity_kg is not None:
        disposition += f" {_number(x.quantity_kg)} kg"
    return RapidTestRow(
        ts_ms=x.ts_ms,
        instrument=x.instrument,
        result_id=x.result_id,
        sample_id=x.sample_id,
        sample_name=x.sample_name,
        test_item=x.test_item,
        method=x.method,
        result=result,
        outcome=x.outcome,
        stage=x.stage,
        operator=x.operator,
        disposition=disposition,
    )


def compute(cfg: SiteConfig, data: DayData) -> DailyReport:
    site = cfg.sites[data.site]
    assets = tuple(
        _asset_day(cfg, data.site, device, data)
        for device in sorted(site.devices, key=lambda d: (site.devices[d].asset, d))
    )
    excursions = tuple(
        _excursion(site, data, a) for a in data.alerts if a.rule.startswith("coldchain.") and a.subject in site.devices
    )
    kitchens = [a for a in data.alerts if a.rule.startswith("kitchen.")]
    return DailyReport(
        site=data.site,
        site_name=site.name or data.site,
        licence_no=site.licence_no,
        credit_code=site.credit_code,
        station=site.station,
        district=site.district,
        timezone=site.timezone,
        date=data.date,
        start_ms=data.start_ms,
        end_ms=data.end_ms,
        assets=assets,
        excursions=tuple(sorted(excursions, key=lambda e: (e.start_ms, e.alert_id))),
        unattended=tuple(_episode(a) for a in kitchens if a.rule == "kitchen.unattended"),
        hygiene=tuple(_episode(a) for a in kitchens if a.rule.startswith("kitchen.hygiene.")),
        rapid_tests=tuple(
            rapid_test_row(x)
            for x in sorted(data.rapid_tests, key=lambda x: (x.ts_ms, x.instrument, x.result_id))
            if data.start_ms <= x.ts_ms < data.end_ms
        ),
        has_instruments=bool(site.instruments),
    )
