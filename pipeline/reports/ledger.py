"""The tamper-evident ledger: report versions and sign-offs on compacted Kafka topics and in InfluxDB, the
files in the archive folder.

* Kafka ``<prefix>.reports.v1`` (compacted, key ``site|date|vN``): :class:`ReportRecord`, one per version. A
  version is never replaced (its key is its own); the topic is the chain's authority.
* Kafka ``<prefix>.report-signoffs.v1`` (compacted, key ``site|date|at_ms``): :class:`SignOff`.
* InfluxDB ``report`` (tags ``site``, ``date``; fields ``version, sha256, prev_sha256, report_id, reason,
  data_sha256``) and ``report_signoff`` (tags ``site``, ``date``; fields ``name, role, meaning, report_sha256,
  report_version, comment, via``): the same records next to the readings, for dashboards and the console, and a
  second copy `verify` compares with Kafka's.
* Files: ``<report dir>/<site>/<date>/v<N>/`` with ``report.pdf``, ``readings.csv``, ``excursions.csv`` and
  ``manifest.json`` (the hashed manifest). Written once; a folder that exists is never written again.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import serde
from pipeline.reports.gather import canonical
from pipeline.reports.model import ReportRecord, SignOff
from pipeline.settings import Settings
from pipeline.sinks import lineproto
from pipeline.topics import Topics

#: A version's files (``rapid_tests.csv`` only for sites with rapid-test instruments or a day with results); each
#: one's SHA-256 is in the chained manifest (``ReportRecord.files``).
FILES = ("report.pdf", "readings.csv", "excursions.csv", "rapid_tests.csv")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(record: ReportRecord | dict[str, Any]) -> dict[str, Any]:
    """The hashed part of a record: everything but its own hash."""
    doc = record.model_dump(mode="json") if isinstance(record, ReportRecord) else dict(record)
    doc.pop("sha256", None)
    return doc


def manifest_hash(doc: dict[str, Any]) -> str:
    return sha256(canonical(manifest(doc)))


def signoff_digest(signoffs: Iterable[SignOff]) -> str | None:
    items = sorted((s.model_dump(mode="json") for s in signoffs), key=lambda d: (d["at_ms"], d["name"]))
    return sha256(canonical(items)) if items else None


def version_dir(settings: Settings, site: str, date: str, version: int) -> Path:
    return settings.report_dir / site / date / f"v{version}"


def write_files(folder: Path, files: dict[str, bytes], record: ReportRecord) -> None:
    """Write a version's folder once: into a temporary folder, then renamed (a crash leaves no half version)."""
    if folder.exists():
        raise FileExistsError(f"{folder} exists: a stored version is never written again")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    (tmp / "manifest.json").write_bytes(serde.dumps_readable(record.model_dump(mode="json")))
    for p in tmp.iterdir():
        p.chmod(0o444)  # read-only: a stored record is evidence
    tmp.rename(folder)


@dataclass
class Ledger:
    """Every report version and sign-off, folded from Kafka (all sites, or one)."""

    records: dict[str, ReportRecord] = field(default_factory=dict)  # key -> record
    signoffs: dict[str, SignOff] = field(default_factory=dict)

    def versions(self, site: str, date: str) -> list[ReportRecord]:
        return sorted((r for r in self.records.values() if r.site == site and r.date == date), key=lambda r: r.version)

    def latest(self, site: str, date: str) -> ReportRecord | None:
        v = self.versions(site, date)
        return v[-1] if v else None

    def dates(self, site: str) -> list[str]:
        return sorted({r.date for r in self.records.values() if r.site == site})

    def previous(self, site: str, date: str) -> ReportRecord | None:
        """The latest version of the last reported day before ``date``: the link a new version chains to."""
        earlier = [d for d in self.dates(site) if d < date]
        return self.latest(site, earlier[-1]) if earlier else None

    def signoffs_for(self, site: str, date: str) -> list[SignOff]:
        return sorted(
            (s for s in self.signoffs.values() if s.site == site and s.date == date), key=lambda s: (s.at_ms, s.name)
        )

    def add(self, value: Any) -> None:
        if isinstance(value, ReportRecord):
            self.records[value.key] = value
        elif isinstance(value, SignOff):
            self.signoffs[value.key] = value


async def load(settings: Settings, topics: Topics, site: str | None = None) -> Ledger:
    from pipeline.alerts.kafkaio import read_to_end

    ledger = Ledger()

    def handle(rec: Any) -> None:
        if rec.value is None:  # a tombstone: compaction will delete the key; until then the record is gone too
            key = rec.key.decode() if rec.key else ""
            (ledger.records if rec.topic == topics.reports else ledger.signoffs).pop(key, None)
            return
        data = serde.loads(rec.value)
        if site is not None and data.get("site") != site:
            return
        if rec.topic == topics.reports:
            ledger.add(ReportRecord.model_validate(data))
        else:
            ledger.add(SignOff.model_validate(data))

    await read_to_end(settings, [topics.reports, topics.report_signoffs], handle)
    return ledger


def report_line(r: ReportRecord, day_start_ms: int) -> str:
    return lineproto.record_line(
        "report",
        {"site": r.site, "date": r.date},
        {
            "version": r.version,
            "sha256": r.sha256,
            "prev_sha256": r.prev_sha256,
            "report_id": r.report_id,
            "reason": r.reason,
            "data_sha256": r.data_sha256,
            "generated_ms": r.generated_ms,
        },
        # One point per version at the day's start (+ version ns): rewriting a version overwrites only itself.
        day_start_ms * lineproto.NS_PER_MS + r.version,
    )


def signoff_line(s: SignOff) -> str:
    return lineproto.record_line(
        "report_signoff",
        {"site": s.site, "date": s.date},
        {
            "name": s.name,
            "role": s.role,
            "meaning": s.meaning,
            "report_sha256": s.report_sha256,
            "report_version": s.report_version,
            "comment": s.comment,
            "via": s.via,
        },
        lineproto.sub_ms(s.at_ms, s.name),
    )


class Publisher:
    """Writes ledger records: Kafka first (acks=all, the authority), then InfluxDB; both writes are idempotent, so a
    retry is safe.

    One per batch, not one per record: a Kafka producer's start (bootstrap, metadata, an idempotent producer id)
    and stop, and an InfluxDB client, cost more than the one record a site-day publishes."""

    def __init__(self, settings: Settings, topics: Topics, bucket: str | None = None) -> None:
        self._settings = settings
        self._topics = topics
        self._bucket = bucket
        self._producer: Any = None
        self._writer: Any = None

    async def start(self) -> None:
        from pipeline.producer import durable_producer
        from pipeline.sinks.influx import InfluxWriter

        producer = durable_producer(self._settings)
        await producer.start()
        self._producer = producer
        self._writer = InfluxWriter(self._settings, self._bucket)

    async def publish(self, values: list[ReportRecord | SignOff], lines: list[str]) -> None:
        assert self._producer is not None, "Publisher.start() first"
        for v in values:
            topic = self._topics.reports if isinstance(v, ReportRecord) else self._topics.report_signoffs
            await self._producer.send_and_wait(topic, serde.dumps(v.model_dump(mode="json")), key=v.key.encode())
        await asyncio.to_thread(self._writer.write, lines, "ns")

    async def close(self) -> None:
        try:
            if self._producer is not None:
                await self._producer.stop()
        finally:
            if self._writer is not None:
                self._writer.close()
            self._producer = self._writer = None


async def publish(
    settings: Settings,
    topics: Topics,
    values: list[ReportRecord | SignOff],
    lines: list[str],
    bucket: str | None = None,
) -> None:
    """Publish once, through a :class:`Publisher` of its own (a sign-off, a single record)."""
    pub = Publisher(settings, topics, bucket)
    try:
        await pub.start()
        await pub.publish(values, lines)
    finally:
        await pub.close()


def influx_records(settings: Settings, site: str, bucket: str | None = None) -> dict[str, str]:
    """``site|date|vN -> sha256`` as InfluxDB holds them (the second copy `verify` compares)."""
    from pipeline.reports.gather import Source

    src = Source(settings, bucket)
    try:
        flux = f"""
from(bucket: "{src.bucket}") |> range(start: 1970-01-01T00:00:00Z)
  |> filter(fn: (r) => r._measurement == "report" and r.site == "{site}"
                       and (r._field == "sha256" or r._field == "version"))
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")"""
        return {f"{r['site']}|{r['date']}|v{r['version']}": r["sha256"] for r in src.rows(flux)}
    finally:
        src.close()
