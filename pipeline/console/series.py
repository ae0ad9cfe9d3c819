"""Series for the console's charts from InfluxDB (the sink's ``reading`` measurement), through Flux.

Blocking client calls run in a thread. An InfluxDB that is away makes the charts empty with a notice, never a
failed page: the read model (alerts, deliveries, acks) does not depend on it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from influxdb_client import InfluxDBClient

from pipeline.settings import Settings

log = logging.getLogger("larder.console")
_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # ids are checked against ID_PATTERN; quoted anyway


def _q(value: str) -> str:
    if not _SAFE.match(value):
        raise ValueError(f"not an id: {value!r}")
    return value


class Series:
    def __init__(self, settings: Settings, bucket: str | None = None) -> None:
        i = settings.influx
        self.bucket = bucket or i.bucket
        self._client = InfluxDBClient(url=i.base_url, token=i.token_value(), org=i.org, timeout=10_000)
        self.error = ""

    def close(self) -> None:
        self._client.close()

    def _rows(self, flux: str) -> list[dict[str, Any]]:
        try:
            tables = self._client.query_api().query(flux)
            self.error = ""
        except Exception as exc:  # InfluxDB away or refusing: charts go empty, the page stays up
            self.error = f"InfluxDB: {type(exc).__name__}"
            log.warning("series query failed: %s", str(exc)[:300])
            return []
        return [rec.values for t in tables for rec in t.records]

    def temperature(self, device: str, start_ms: int, end_ms: int, points: int = 360) -> list[tuple[int, float]]:
        every = max(1, (end_ms - start_ms) // points // 1000)
        flux = (
            f'from(bucket: "{self.bucket}") |> range(start: time(v: {start_ms * 1_000_000}), '
            f"stop: time(v: {end_ms * 1_000_000}))"
            f' |> filter(fn: (r) => r._measurement == "reading" and r.device == "{_q(device)}"'
            ' and r._field == "temp_c")'
            f' |> aggregateWindow(every: {every}s, fn: mean, createEmpty: false, timeSrc: "_start")'
        )
        return [(int(r["_time"].timestamp() * 1000), float(r["_value"])) for r in self._rows(flux)]

    def site_latest(self, site: str, now_ms: int, days: int = 7) -> dict[str, dict[str, Any]]:
        """Per device: the last ``temp_c`` and ``battery`` and when (``last_ms``)."""
        flux = (
            f'from(bucket: "{self.bucket}") |> range(start: time(v: {(now_ms - days * 86_400_000) * 1_000_000}))'
            f' |> filter(fn: (r) => r._measurement == "reading" and r.site == "{_q(site)}"'
            ' and (r._field == "temp_c" or r._field == "battery")) |> last()'
        )
        out: dict[str, dict[str, Any]] = {}
        for r in self._rows(flux):
            d = out.setdefault(r["device"], {"last_ms": 0})
            d[r["_field"]] = r["_value"]
            d["last_ms"] = max(d["last_ms"], int(r["_time"].timestamp() * 1000))
        return out

    def site_spark(self, site: str, start_ms: int, end_ms: int) -> dict[str, list[tuple[int, float]]]:
        flux = (
            f'from(bucket: "{self.bucket}") |> range(start: time(v: {start_ms * 1_000_000}), '
            f"stop: time(v: {end_ms * 1_000_000}))"
            f' |> filter(fn: (r) => r._measurement == "reading" and r.site == "{_q(site)}" and r._field == "temp_c")'
            ' |> aggregateWindow(every: 15m, fn: mean, createEmpty: false, timeSrc: "_start")'
        )
        out: dict[str, list[tuple[int, float]]] = {}
        for r in self._rows(flux):
            out.setdefault(r["device"], []).append((int(r["_time"].timestamp() * 1000), float(r["_value"])))
        return out
