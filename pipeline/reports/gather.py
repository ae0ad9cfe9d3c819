"""Read one site's local day from InfluxDB (Flux over the v2 API, so 1.8 and 2.x alike).

What is read (schema in docs/alerts.md):

* ``reading`` points of the site with ``ts`` in the day ``[local 00:00, next local 00:00)``: ``temp_c`` and
  ``delay_ms`` per device.
* ``alert`` points of the site from ``LOOKBACK`` before the day to ``LOOKAHEAD`` after it: every transition of an
  alert that overlaps the day, including its acknowledgement and resolution the next morning.
* ``delivery`` points of the site (and of multi-site messages, ``site="*"``) in the same window.
* ``annotation`` points (compliance gaps, late data) starting up to a day before and ending after the day start.
* ``rapid_test`` points of the site (contract 6 results) tested in the day.

The day's window depends on the site's time zone (23, 24 or 25 hours around daylight-saving changes).
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from influxdb_client import InfluxDBClient
from influxdb_client.domain.dialect import Dialect

from pipeline import serde
from pipeline.reports.model import (
    AlertHistory,
    AnnotationPoint,
    DayData,
    DeliveryPoint,
    Point,
    RapidTestPoint,
    Transition,
)
from pipeline.settings import Settings

#: Alerts that opened this long before the day and are still open in it are shown (a week: the Kafka topics'
#: retention, after which no correction can arrive anyway).
LOOKBACK_MS = 7 * 24 * 3600 * 1000
#: Acks, corrective actions and resolutions this long after the day belong to its excursions.
LOOKAHEAD_MS = 7 * 24 * 3600 * 1000
_DIALECT = Dialect(header=True, delimiter=",", annotations=[], date_time_format="RFC3339Nano")


def day_window(day: date, tz: str) -> tuple[int, int]:
    """``[local midnight, next local midnight)`` of ``day`` in ``tz``, in UTC milliseconds."""
    zone = ZoneInfo(tz)
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    nxt = day + timedelta(days=1)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


_FLUX_TIME = re.compile(r"(\d{4}-\d\d-\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z", re.ASCII)


def rfc3339_ms(text: str) -> int:
    """Flux's RFC3339Nano time to whole milliseconds (floor), without losing the nanoseconds on the way.

    Flux writes UTC as ``YYYY-MM-DDTHH:MM:SS[.fraction]Z``: that form is read field by field, the date through a
    cache (a day's readings share one or two dates), in ~1.0 instead of ~1.7 µs, for each of a day's 14,400 readings.
    Anything else takes the general way, which also refuses what is not a time."""
    m = _FLUX_TIME.fullmatch(text)
    if m:
        day, hh, mm, ss, frac = m.groups()
        h, mi, s = int(hh), int(mm), int(ss)
        if h < 24 and mi < 60 and s < 60:
            return _utc_day_ms(day) + ((h * 60 + mi) * 60 + s) * 1000 + (int((frac + "00")[:3]) if frac else 0)
    return _rfc3339_ms(text)


@functools.lru_cache(maxsize=64)
def _utc_day_ms(day: str) -> int:
    return _rfc3339_ms(day + "T00:00:00Z")


def _rfc3339_ms(text: str) -> int:
    base, _, frac = text.rstrip("Z").partition(".")
    secs = int(datetime.fromisoformat(base).replace(tzinfo=UTC).timestamp())
    ns = int((frac + "000000000")[:9]) if frac else 0
    return secs * 1000 + ns // 1_000_000


def _flux_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _flux_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _flux_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(_flux_str(v) for v in values) + "]"


class Source:
    """A Flux reader over one bucket; one per process (the HTTP pool is reused across site-days)."""

    def __init__(self, settings: Settings, bucket: str | None = None) -> None:
        i = settings.influx
        self.bucket = bucket or i.bucket
        self._client = InfluxDBClient(url=i.base_url, token=i.token_value(), org=i.org, timeout=120_000)
        self._query = self._client.query_api()

    def close(self) -> None:
        self._client.close()

    def rows(self, flux: str) -> Iterator[dict[str, str]]:
        """The rows of a query's CSV answer as dicts (tables of different columns each bring their header)."""
        header: list[str] | None = None
        for row in self._query.query_csv(flux, dialect=_DIALECT):
            if not row or not any(row):
                header = None
                continue
            if header is None or row[1:3] == ["result", "table"]:
                header = row
                continue
            yield dict(zip(header, row, strict=False))

    def columns(self, flux: str, names: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        """The rows of a query's CSV answer as tuples of the ``names`` columns ("" where a table has no such
        column): :meth:`rows` for the day's 14,400 readings, without a dict per row, and with the answer read
        whole and split by one ``csv.reader`` (the client's streaming reader decodes it line by line)."""
        response = self._query.query_raw(flux, dialect=_DIALECT)
        try:
            text = response.data.decode()
        finally:
            response.release_conn()
        at: list[int] = []
        width = 0
        header: list[str] | None = None
        for row in csv.reader(io.StringIO(text, newline="")):
            if not row:  # a blank line: skipped, as the client's reader does
                continue
            if not any(row):
                header = None
                continue
            if header is None or row[1:3] == ["result", "table"]:
                header = row
                width = len(header)
                where = {name: i for i, name in enumerate(header)}  # the last of a repeated name, as a dict() keeps
                at = [where.get(n, width) for n in names]
                continue
            if len(row) < width:  # as zip() does in :meth:`rows`: a short row lacks its last columns
                row = row + [""] * (width - len(row))
            yield tuple(row[i] if i < width else "" for i in at)

    def pivoted(
        self,
        measurement: str,
        start_ms: int,
        end_ms: int,
        where: str,
        *,
        row_key: tuple[str, ...] = ("_time",),
        keep: tuple[str, ...] = (),
    ) -> Iterator[dict[str, str]]:
        """The points of ``measurement`` in ``[start_ms, end_ms)`` for which the Flux predicate ``where`` (over
        ``r``) holds, pivoted: one row per ``row_key`` with a column per field (only the ``keep`` columns, if
        given)."""
        return self.rows(self._pivot_flux(measurement, start_ms, end_ms, where, row_key=row_key, keep=keep))

    def _pivot_flux(
        self,
        measurement: str,
        start_ms: int,
        end_ms: int,
        where: str,
        *,
        row_key: tuple[str, ...] = ("_time",),
        keep: tuple[str, ...] = (),
    ) -> str:
        flux = f"""
from(bucket: {_flux_str(self.bucket)})
  |> range(start: {_flux_time(start_ms)}, stop: {_flux_time(end_ms)})
  |> filter(fn: (r) => r._measurement == {_flux_str(measurement)} and {where})
  |> pivot(rowKey: {_flux_list(row_key)}, columnKey: ["_field"], valueColumn: "_value")"""
        if keep:
            flux += f"\n  |> keep(columns: {_flux_list(keep)})"
        return flux

    # -- the measurements ------------------------------------------------------------------------------------

    def readings(self, site: str, start_ms: int, end_ms: int) -> dict[str, list[Point]]:
        keep = ("_time", "device", "temp_c", "delay_ms")
        flux = self._pivot_flux(
            "reading",
            start_ms,
            end_ms,
            f'r.site == {_flux_str(site)} and (r._field == "temp_c" or r._field == "delay_ms")',
            keep=keep,
        )
        out: dict[str, list[Point]] = {}
        for ts, device, temp, delay in self.columns(flux, keep):
            if temp == "":
                continue
            out.setdefault(device, []).append(Point(rfc3339_ms(ts), float(temp), int(delay) if delay != "" else None))
        for pts in out.values():
            pts.sort(key=lambda p: p.ts_ms)
        return out

    def alerts(self, site: str, start_ms: int, end_ms: int) -> list[AlertHistory]:
        by_id: dict[str, AlertHistory] = {}
        for r in self.pivoted("alert", start_ms, end_ms, f"r.site == {_flux_str(site)}"):
            aid = r.get("alert_id", "")
            if not aid:
                continue
            h = by_id.setdefault(aid, AlertHistory(aid, r["rule"], r.get("severity", ""), r.get("subject", "")))
            ev_text = r.get("evidence", "")
            evidence: dict[str, Any] = serde.loads(ev_text) if ev_text else {}
            step = r.get("step", "")
            h.transitions.append(
                Transition(
                    at_ms=rfc3339_ms(r["_time"]),
                    state=r["state"],
                    step=int(step) if step not in ("", None) else None,
                    by=r.get("by") or None,
                    role=r.get("role") or None,
                    via=r.get("via") or None,
                    note=r.get("note") or None,
                    evidence=evidence if isinstance(evidence, dict) else {},
                )
            )
        for h in by_id.values():
            h.transitions.sort(key=lambda t: (t.at_ms, t.state))
        return sorted(by_id.values(), key=lambda h: (h.opened_ms or 0, h.alert_id))

    def deliveries(self, site: str, start_ms: int, end_ms: int, alert_ids: set[str]) -> list[DeliveryPoint]:
        if not alert_ids:
            return []
        fields = '(r._field == "message_id" or r._field == "recipient" or r._field == "alert_ids")'
        out = []
        for r in self.pivoted(
            "delivery", start_ms, end_ms, f'(r.site == {_flux_str(site)} or r.site == "*") and {fields}'
        ):
            ids = tuple(x for x in (r.get("alert_ids") or "").split(",") if x)
            if ids and not alert_ids.intersection(ids):
                continue
            out.append(
                DeliveryPoint(
                    at_ms=rfc3339_ms(r["_time"]),
                    kind=r.get("kind", ""),
                    message_id=r.get("message_id", ""),
                    role=r.get("role", ""),
                    channel=r.get("channel", ""),
                    status=r.get("status", ""),
                    recipient=r.get("recipient", ""),
                    alert_ids=ids,
                )
            )
        out.sort(key=lambda d: (d.at_ms, d.message_id, d.kind))
        return out

    def annotations(self, site: str, start_ms: int, end_ms: int, kinds: tuple[str, ...]) -> list[AnnotationPoint]:
        kind_test = " or ".join(f"r.kind == {_flux_str(k)}" for k in kinds)
        where = f'r.site == {_flux_str(site)} and ({kind_test}) and (r._field == "end_ms" or r._field == "detail")'
        out = []
        for r in self.pivoted("annotation", start_ms - 24 * 3600 * 1000, end_ms, where):
            end = int(r.get("end_ms") or 0)
            if end <= start_ms:
                continue
            detail_text = r.get("detail", "")
            detail = serde.loads(detail_text) if detail_text else {}
            out.append(
                AnnotationPoint(
                    r["kind"],
                    r.get("subject", ""),
                    rfc3339_ms(r["_time"]),
                    end,
                    detail if isinstance(detail, dict) else {},
                )
            )
        out.sort(key=lambda a: (a.subject, a.start_ms, a.kind))
        return out

    def rapid_tests(self, site: str, start_ms: int, end_ms: int) -> list[RapidTestPoint]:
        out = []
        rows = self.pivoted(
            "rapid_test", start_ms, end_ms, f"r.site == {_flux_str(site)}", row_key=("_time", "instrument")
        )
        for r in rows:
            if not r.get("result_id"):
                continue
            out.append(
                RapidTestPoint(
                    ts_ms=rfc3339_ms(r["_time"]),
                    result_id=r["result_id"],
                    instrument=r.get("instrument", ""),
                    test_item=r.get("test_item", ""),
                    outcome=r.get("outcome", ""),
                    stage=r.get("stage", "") or "initial",
                    sample_id=r.get("sample_id", ""),
                    sample_name=r.get("sample_name", ""),
                    food_category=r.get("food_category", ""),
                    stall=r.get("stall", ""),
                    method=r.get("method", ""),
                    value=_float(r.get("value")),
                    unit=r.get("unit", ""),
                    limit=_float(r.get("limit")),
                    limit_basis=r.get("limit_basis", ""),
                    operator=r.get("operator", ""),
                    disposition=r.get("disposition", ""),
                    quantity_kg=_float(r.get("quantity_kg")),
                )
            )
        out.sort(key=lambda x: (x.ts_ms, x.instrument, x.result_id))
        return out

    def day(self, site: str, day: date, tz: str) -> DayData:
        start, end = day_window(day, tz)
        alerts = [
            a
            for a in self.alerts(site, start - LOOKBACK_MS, end + LOOKAHEAD_MS)
            if a.opened_ms is not None and a.opened_ms < end and (a.resolved_ms is None or a.resolved_ms > start)
        ]
        return DayData(
            site=site,
            date=day.isoformat(),
            start_ms=start,
            end_ms=end,
            readings=self.readings(site, start, end),
            alerts=alerts,
            deliveries=self.deliveries(site, start - LOOKBACK_MS, end + LOOKAHEAD_MS, {a.alert_id for a in alerts}),
            annotations=self.annotations(site, start, end, ("compliance_gap",)),
            rapid_tests=self.rapid_tests(site, start, end),
        )


def _float(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def data_digest(d: DayData) -> str:
    """SHA-256 of everything gathered, in a canonical order: equal digests mean the same record."""
    import hashlib

    doc = {
        "site": d.site,
        "date": d.date,
        "readings": {dev: [[p.ts_ms, p.temp_c, p.delay_ms] for p in pts] for dev, pts in sorted(d.readings.items())},
        "alerts": [
            [a.alert_id, a.rule, a.severity, a.subject, [_transition(t) for t in a.transitions]] for a in d.alerts
        ],
        "deliveries": [
            [x.at_ms, x.kind, x.message_id, x.role, x.channel, x.status, x.recipient, list(x.alert_ids)]
            for x in d.deliveries
        ],
        "annotations": [[a.kind, a.subject, a.start_ms, a.end_ms, a.detail] for a in d.annotations],
    }
    if d.rapid_tests:
        # Only when there are any: the digest of a day without rapid tests is what it was before they existed,
        # so regenerating an old day makes no new version.
        doc["rapid_tests"] = [_rapid(x) for x in d.rapid_tests]
    return hashlib.sha256(canonical(doc)).hexdigest()


def _rapid(x: RapidTestPoint) -> list[Any]:
    return [getattr(x, f) for f in RapidTestPoint.__slots__]


def _transition(t: Transition) -> list[Any]:
    return [t.at_ms, t.state, t.step, t.by, t.role, t.via, t.note, t.evidence]


def canonical(value: Any) -> bytes:
    """JSON with sorted keys: the bytes a digest is taken of."""
    import orjson

    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
