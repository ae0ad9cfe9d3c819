"""Make, verify and sign daily records; the long-running generator; the retention policy.

Versions: a record is made from what InfluxDB holds. Made again with the same data and the same sign-offs, it
is the same version, byte for byte (same hash; nothing new is recorded). When the data changed (a late upload,
an ack, a corrective action entered the next morning) or the day was signed, the record is a **new version**
with a reason, chained to the previous day and naming the version it corrects; no stored version is ever
written again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pipeline import __version__, siteconfig
from pipeline.reports import ledger as L
from pipeline.reports import render
from pipeline.reports.compute import compute
from pipeline.reports.gather import Source, data_digest, day_window
from pipeline.reports.model import GENESIS, DailyReport, DayData, ReportRecord, SignOff
from pipeline.settings import MIN_RETENTION_DAYS, Settings
from pipeline.siteconfig import resolve_device_rules
from pipeline.topics import Topics

log = logging.getLogger("larder.reports")


class ReportError(Exception):
    """A request that cannot be met (unknown site, a day that has not ended, no report to sign)."""


@dataclass(frozen=True)
class Outcome:
    record: ReportRecord
    status: str  # "new" (first version), "corrected" (a new version), "unchanged" (same as the stored version)
    folder: Path
    timings: dict[str, float]


def _topics(settings: Settings) -> Topics:
    return Topics(settings.topic_prefix, settings.readings_partitions)


def _site(cfg: siteconfig.SiteConfig, site: str) -> siteconfig.Site:
    if site not in cfg.sites:
        raise ReportError(f"site {site!r} is not in the site file ({', '.join(sorted(cfg.sites)) or 'no sites'})")
    return cfg.sites[site]


def render_files(cfg: siteconfig.SiteConfig, report: DailyReport, info: render.VersionInfo) -> dict[str, bytes]:
    caps = {}
    for a in report.assets:
        rules = resolve_device_rules(cfg, report.site, a.device)
        caps[a.device] = int(rules.liveness.offline_k * a.interval_s * 1000)
    files = {
        "report.pdf": render.pdf(report, info, caps),
        "readings.csv": render.readings_csv(report),
        "excursions.csv": render.excursions_csv(report),
    }
    if render.has_rapid_tests(report):
        # Only then: a site without instruments keeps the files (and hashes) it had before rapid tests existed.
        files["rapid_tests.csv"] = render.rapid_tests_csv(report)
    return files


def _info(record: ReportRecord, signoffs: list[SignOff]) -> render.VersionInfo:
    return render.VersionInfo(
        report_id=record.report_id,
        version=record.version,
        generated_ms=record.generated_ms,
        prev_sha256=record.prev_sha256,
        prev_date=record.prev_date,
        reason=record.reason,
        signoffs=tuple(signoffs),
    )


def _change_reason(old: ReportRecord, data_sha: str, signoffs: list[SignOff], signoff_sha: str | None) -> str:
    parts = []
    if old.data_sha256 != data_sha:
        parts.append(f"data changed since v{old.version} (late data, acknowledgements or corrective actions)")
    if old.signoff_sha256 != signoff_sha and signoffs:
        s = signoffs[-1]
        parts.append(f"signed off by {s.name}")
    return "; ".join(parts)


async def generate(
    settings: Settings,
    site: str,
    day: date,
    *,
    reason: str = "",
    out: Path | None = None,
    now_ms: int | None = None,
    ledger: L.Ledger | None = None,
    source: Source | None = None,
    bucket: str | None = None,
    publisher: L.Publisher | None = None,
    data: DayData | None = None,
) -> Outcome:
    """Make (or re-make) one site-day. ``ledger``/``source``/``publisher`` may be shared across a batch; ``data``:
    the site-day as InfluxDB holds it, when the caller gathered it already (a batch gathers the next site-day while
    this one renders)."""
    cfg = siteconfig.load(settings.site_config)
    s = _site(cfg, site)
    start_ms, end_ms = day_window(day, s.timezone)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    if end_ms > now:
        raise ReportError(f"{site} {day}: the day has not ended in {s.timezone} yet")
    t = time.perf_counter()
    timings: dict[str, float] = {}
    if data is None:
        own_source = source is None
        src = source or Source(settings, bucket)
        try:
            data = src.day(site, day, s.timezone)
        finally:
            if own_source:
                src.close()
    elif (data.site, data.date) != (site, day.isoformat()):
        raise ValueError(f"gathered data of {data.site} {data.date} handed to {site} {day}")
    timings["gather_s"] = time.perf_counter() - t
    topics = _topics(settings)
    led = ledger if ledger is not None else await L.load(settings, topics, site)
    data_sha = data_digest(data)
    signoffs = led.signoffs_for(site, day.isoformat())
    signoff_sha = L.signoff_digest(signoffs)
    latest = led.latest(site, day.isoformat())
    t = time.perf_counter()
    report = compute(cfg, data)
    timings["compute_s"] = time.perf_counter() - t

    rerendered = ""
    if latest is not None and latest.data_sha256 == data_sha and latest.signoff_sha256 == signoff_sha:
        # Nothing changed: the same version, rendered again from the same inputs, has the same bytes.
        t = time.perf_counter()
        files = render_files(cfg, report, _info(latest, signoffs))
        timings["render_s"] = time.perf_counter() - t
        regenerated = {n: L.sha256(b) for n, b in files.items()}
        if regenerated == latest.files:
            if out is not None:
                _copy_out(out, files, latest)
            return Outcome(latest, "unchanged", L.version_dir(settings, site, day.isoformat(), latest.version), timings)
        # Same data, other bytes: the software that renders changed (an upgrade). Never rewrite the stored
        # version: the new rendering is a version of its own, saying why.
        changed = ", ".join(n for n in files if regenerated[n] != latest.files.get(n))
        rerendered = f"the same data renders differently with Larder {__version__} ({changed})"

    prev = led.previous(site, day.isoformat())
    version = latest.version + 1 if latest else 1
    auto = (_change_reason(latest, data_sha, signoffs, signoff_sha) or rerendered) if latest else ""
    doc = {
        "site": site,
        "date": day.isoformat(),
        "version": version,
        "report_id": f"LDR-{site}-{day:%Y%m%d}-v{version}",
        "prev_sha256": prev.sha256 if prev else GENESIS,
        "prev_date": prev.date if prev else None,
        "supersedes": latest.sha256 if latest else None,
        "reason": "; ".join(x for x in (reason.strip(), auto) if x),
        "generated_ms": now,
        "data_sha256": data_sha,
        "files": {},
        "signoff_sha256": signoff_sha,
        "sha256": "",
    }
    draft = ReportRecord.model_validate(doc)
    t, c = time.perf_counter(), time.process_time()
    files = render_files(cfg, report, _info(draft, signoffs))
    timings["render_s"] = time.perf_counter() - t
    timings["render_cpu_s"] = time.process_time() - c  # on a shared machine the wall time says little
    doc["files"] = {n: L.sha256(b) for n, b in files.items()}
    # The hash covers the record exactly as it is published (every field but the hash, ``v`` included).
    doc["sha256"] = L.manifest_hash(ReportRecord.model_validate(doc).model_dump(mode="json"))
    record = ReportRecord.model_validate(doc)
    folder = L.version_dir(settings, site, day.isoformat(), version)
    if folder.exists():
        # An earlier run stored this version and stopped before Kafka took its record: publish that one.
        stored = _resume(folder, data_sha, signoff_sha)
        if stored is None:
            raise ReportError(
                f"{folder} exists but is on no ledger and does not hold this data: an interrupted run left it; "
                "move it aside (it is never overwritten) and run again"
            )
        record = stored
    else:
        L.write_files(folder, files, record)
    t = time.perf_counter()
    if publisher is not None:
        await publisher.publish([record], [L.report_line(record, start_ms)])
    else:
        await L.publish(settings, topics, [record], [L.report_line(record, start_ms)], bucket)
    timings["publish_s"] = time.perf_counter() - t
    led.add(record)
    if out is not None:
        _copy_out(out, files, record)
    return Outcome(record, "corrected" if latest else "new", folder, timings)


def _resume(folder: Path, data_sha: str, signoff_sha: str | None) -> ReportRecord | None:
    """The record of a stored version that never reached the ledger, if its files are intact and it holds the
    same data and sign-offs as now."""
    from pipeline import serde

    try:
        record = ReportRecord.model_validate(serde.loads((folder / "manifest.json").read_bytes()))
    except (OSError, ValueError):
        return None
    intact = all(L.sha256((folder / n).read_bytes()) == h for n, h in record.files.items() if (folder / n).exists())
    complete = all((folder / n).exists() for n in record.files)
    same = record.data_sha256 == data_sha and record.signoff_sha256 == signoff_sha
    ok = intact and complete and same and L.manifest_hash(record.model_dump(mode="json")) == record.sha256
    return record if ok else None


def _copy_out(out: Path, files: dict[str, bytes], record: ReportRecord) -> None:
    from pipeline import serde

    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    (out / "manifest.json").write_bytes(serde.dumps_readable(record.model_dump(mode="json")))


# ---------------------------------------------------------------------------------------------------------------
# Verify
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    date: str
    problem: str


async def verify(settings: Settings, site: str, *, bucket: str | None = None) -> tuple[int, list[Finding]]:
    """Recompute the chain of one site from its stored files; (versions checked, problems by day).

    Checked for every version: the stored files' SHA-256 against the record, the record's own hash
    (manifest), the stored manifest against the Kafka record, InfluxDB's copy, ``supersedes`` = the previous
    version, and ``prev_sha256`` = a version of the day before it (``prev_date``), which must exist: a day
    whose records were removed breaks the next day's link. Missing days between the first and last report are
    named too (a day the generator never made, or one deleted with its records).
    """
    led = await L.load(settings, _topics(settings), site)
    influx = L.influx_records(settings, site, bucket)
    findings: list[Finding] = []
    checked = 0
    dates = led.dates(site)
    for d in dates:
        versions = led.versions(site, d)
        for i, rec in enumerate(versions):
            checked += 1
            if rec.version != i + 1:
                findings.append(Finding(d, f"version {i + 1} is missing (found v{rec.version})"))
            if L.manifest_hash(rec.model_dump(mode="json")) != rec.sha256:
                findings.append(Finding(d, f"v{rec.version}: the record's hash does not match its manifest"))
            folder = L.version_dir(settings, site, d, rec.version)
            if not folder.is_dir():
                findings.append(Finding(d, f"v{rec.version}: the stored report is missing ({folder})"))
            else:
                for name, digest in sorted(rec.files.items()):
                    p = folder / name
                    if not p.exists():
                        findings.append(Finding(d, f"v{rec.version}: {name} is missing"))
                    elif L.sha256(p.read_bytes()) != digest:
                        findings.append(Finding(d, f"v{rec.version}: {name} does not match its SHA-256 (altered)"))
                m = folder / "manifest.json"
                if m.exists():
                    from pipeline import serde

                    stored = serde.loads(m.read_bytes())
                    if stored != rec.model_dump(mode="json"):
                        findings.append(Finding(d, f"v{rec.version}: manifest.json differs from the Kafka record"))
            if influx.get(rec.key) != rec.sha256:
                got = influx.get(rec.key)
                findings.append(
                    Finding(d, f"v{rec.version}: InfluxDB " + ("has no copy" if got is None else "holds another hash"))
                )
            want_sup = versions[i - 1].sha256 if i > 0 else None
            if rec.supersedes != want_sup:
                findings.append(Finding(d, f"v{rec.version}: does not name the version it corrects"))
            if rec.prev_date is None:
                if rec.prev_sha256 != GENESIS or d != dates[0]:
                    findings.append(Finding(d, f"v{rec.version}: chain start, but earlier days exist"))
            else:
                prev_versions = {r.sha256 for r in led.versions(site, rec.prev_date)}
                if not prev_versions:
                    findings.append(Finding(rec.prev_date, f"deleted: day {d} chains to it, but it has no record"))
                elif rec.prev_sha256 not in prev_versions:
                    findings.append(
                        Finding(d, f"v{rec.version}: previous day's hash matches no version of {rec.prev_date}")
                    )
    for key in sorted(set(influx) - set(led.records)):
        findings.append(Finding(key.split("|")[1], f"{key}: in InfluxDB but not on the Kafka ledger (deleted?)"))
    if dates:
        day = date.fromisoformat(dates[0])
        last = date.fromisoformat(dates[-1])
        have = set(dates)
        while day < last:
            if day.isoformat() not in have and not any(f.date == day.isoformat() for f in findings):
                findings.append(Finding(day.isoformat(), "no report for this day"))
            day += timedelta(days=1)
    findings.sort(key=lambda f: f.date)
    return checked, findings


# ---------------------------------------------------------------------------------------------------------------
# Sign-off and unsigned days
# ---------------------------------------------------------------------------------------------------------------


async def sign(
    settings: Settings,
    site: str,
    day: date,
    name: str,
    *,
    comment: str = "",
    via: str = "cli",
    now_ms: int | None = None,
    bucket: str | None = None,
) -> tuple[SignOff, Outcome]:
    """The food-safety officer reviewed the day's record: record the sign-off (Kafka + InfluxDB), then make the
    version that shows it (same data, with the sign-off block; chained like any correction).

    The console calls this function as `larder report sign` does.
    """
    if not name.strip():
        raise ReportError("a sign-off needs the officer's name")
    topics = _topics(settings)
    led = await L.load(settings, topics, site)
    latest = led.latest(site, day.isoformat())
    if latest is None:
        raise ReportError(f"{site} {day}: no report to sign yet; make it with `larder report daily` first")
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    s = SignOff(
        site=site,
        date=day.isoformat(),
        name=name.strip(),
        at_ms=now,
        report_sha256=latest.sha256,
        report_version=latest.version,
        comment=comment,
        via=via,
    )
    await L.publish(settings, topics, [s], [L.signoff_line(s)], bucket)
    led.add(s)
    outcome = await generate(settings, site, day, now_ms=now, ledger=led, bucket=bucket)
    return s, outcome


async def unsigned(
    settings: Settings, *, site: str | None = None, station: str | None = None
) -> list[tuple[str, str, int]]:
    """(site, date, latest version) of reported days without a sign-off, for one site or a station's sites."""
    cfg = siteconfig.load(settings.site_config)
    sites = [
        sid
        for sid, s in cfg.sites.items()
        if (site is None or sid == site) and (station is None or s.station == station)
    ]
    led = await L.load(settings, _topics(settings))
    out = []
    for sid in sorted(sites):
        for d in led.dates(sid):
            if not led.signoffs_for(sid, d):
                latest = led.latest(sid, d)
                assert latest is not None
                out.append((sid, d, latest.version))
    return out


@dataclass(frozen=True)
class Listed:
    """One stored version, for `larder report list` and the console's report pages."""

    record: ReportRecord
    folder: Path
    signed_by: tuple[str, ...]


async def list_reports(settings: Settings, site: str) -> list[Listed]:
    """Every version of a site's records, newest day first, with where its files are and who signed the day."""
    led = await L.load(settings, _topics(settings), site)
    out = []
    for d in reversed(led.dates(site)):
        names = tuple(s.name for s in led.signoffs_for(site, d))
        for rec in reversed(led.versions(site, d)):
            out.append(Listed(rec, L.version_dir(settings, site, d, rec.version), names))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Retention
# ---------------------------------------------------------------------------------------------------------------


def apply_retention(settings: Settings) -> str:
    """Set the retention of the InfluxDB retention policy (1.8) or bucket (2.x) that holds the readings."""
    days = settings.reports.retention_days
    if days < MIN_RETENTION_DAYS:  # the settings model refuses this too; a guard for callers building their own
        raise ReportError(f"retention {days} days is below the 2 years food-safety records must be kept")
    i = settings.influx
    if i.url is None or "/" in i.bucket:
        from pipeline.stack.influx import _query

        db, _, rp = i.bucket.partition("/")
        q = f'ALTER RETENTION POLICY "{rp or "autogen"}" ON "{db}" DURATION {days}d SHARD DURATION 7d'
        r = _query(settings, q)
        if r.status_code != 200 or '"error"' in r.text:
            raise ReportError(f"InfluxDB refused {q}: {r.status_code} {r.text[:200]}")
        return f"{db}/{rp or 'autogen'}: {days} days"
    from influxdb_client import BucketRetentionRules, InfluxDBClient

    with InfluxDBClient(url=i.base_url, token=i.token_value(), org=i.org) as client:
        api = client.buckets_api()
        bucket = api.find_bucket_by_name(i.bucket)
        if bucket is None:
            raise ReportError(f"bucket {i.bucket} does not exist")
        bucket.retention_rules = [BucketRetentionRules(type="expire", every_seconds=days * 86400)]
        api.update_bucket(bucket)
    return f"{i.bucket}: {days} days"


def retention_days(settings: Settings) -> int | None:
    """The retention InfluxDB applies now to the readings' policy (1.8), in days; None for infinite."""
    from pipeline.stack.influx import _query

    db, _, rp = settings.influx.bucket.partition("/")
    r = _query(settings, f'SHOW RETENTION POLICIES ON "{db}"')
    for row in r.json()["results"][0]["series"][0]["values"]:
        if row[0] == (rp or "autogen"):
            duration = str(row[1])  # e.g. "26280h0m0s"; "0s" is infinite
            hours = int(duration.split("h")[0]) if "h" in duration else 0
            return hours // 24 or None
    return None


# ---------------------------------------------------------------------------------------------------------------
# The long-running generator
# ---------------------------------------------------------------------------------------------------------------


def due_days(
    settings: Settings, cfg: siteconfig.SiteConfig, led: L.Ledger, now_ms: int, back_days: int
) -> list[tuple[str, date]]:
    """Site-days that have ended at least ``after_midnight_min`` ago (local), in the last ``back_days``, and
    have no report yet."""
    out = []
    grace = timedelta(minutes=settings.reports.after_midnight_min)
    now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    for sid, s in sorted(cfg.sites.items()):
        local = (now - grace).astimezone(ZoneInfo(s.timezone)).date()
        for k in range(back_days, 0, -1):
            d = local - timedelta(days=k)
            if led.latest(sid, d.isoformat()) is None:
                out.append((sid, d))
    return out


Progress = Callable[[int, int, str, date, Outcome | None, str | None], None]


def shares(todo: list[tuple[str, date]], workers: int) -> list[list[tuple[str, date]]]:
    """``todo`` split into at most ``workers`` shares by site: every day of a site in the same share (a site's hash
    chain is made day after day by one process), sites dealt round-robin in sorted order."""
    sites = sorted({s for s, _ in todo})
    slot = {s: i % max(1, workers) for i, s in enumerate(sites)}
    out: list[list[tuple[str, date]]] = [[] for _ in range(min(max(1, workers), len(sites)))]
    for s, d in todo:
        out[slot[s]].append((s, d))
    return out


async def run_batch(
    settings: Settings,
    todo: list[tuple[str, date]],
    *,
    progress: Progress | None = None,
    bucket: str | None = None,
    workers: int | None = None,
) -> list[Outcome]:
    """Make a batch of site-days with one ledger read and one InfluxDB connection per process; one failure does not
    stop it. ``workers`` (default ``settings.reports.workers``) processes share the sites (:func:`shares`): a
    record's render is CPU-bound Python (WeasyPrint, matplotlib), so one process uses one core whatever the
    machine has."""
    n = settings.reports.workers if workers is None else workers
    parts = shares(todo, n)
    if len(parts) <= 1:
        return await _run_share(settings, todo, progress, bucket)
    return await _run_parallel(settings, parts, progress, bucket)


async def _run_parallel(
    settings: Settings, parts: list[list[tuple[str, date]]], progress: Progress | None, bucket: str | None
) -> list[Outcome]:
    """Each share in a process of its own (spawned: a fresh interpreter, no copy of this one's event loop or Kafka
    clients); their progress comes back through a queue, numbered here across the whole batch."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    procs = [ctx.Process(target=_share_process, args=(settings, part, bucket, events), daemon=True) for part in parts]
    for proc in procs:
        proc.start()
    total = sum(len(p) for p in parts)
    done: list[Outcome] = []
    finished = 0
    count = 0
    loop = asyncio.get_running_loop()
    try:
        while finished < len(procs):
            try:
                kind, payload = await loop.run_in_executor(None, events.get, True, 5.0)
            except Exception:  # queue.Empty: look for a process that died without saying so
                dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                if dead and events.empty():
                    raise ReportError(f"a report process exited with code {dead[0].exitcode}") from None
                continue
            if kind == "end":
                finished += 1
                continue
            sid, day_text, outcome, err = payload
            count += 1
            if outcome is not None:
                done.append(outcome)
            if progress:
                progress(count, total, sid, date.fromisoformat(day_text), outcome, err)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
    return done


def _share_process(settings: Settings, todo: list[tuple[str, date]], bucket: str | None, events: Any) -> None:
    """A spawned process's share of a batch: the sequential batch, each outcome (or failure) sent to the parent."""

    def report(i: int, n: int, sid: str, d: date, o: Outcome | None, err: str | None) -> None:
        events.put(("item", (sid, d.isoformat(), o, err)))

    try:
        asyncio.run(_run_share(settings, todo, report, bucket))
    except Exception as exc:  # the ledger or InfluxDB unreachable: every site-day of this share failed
        log.exception("report process failed")
        for sid, d in todo:
            events.put(("item", (sid, d.isoformat(), None, f"{type(exc).__name__}: {exc}")))
    finally:
        events.put(("end", None))


async def _run_share(
    settings: Settings, todo: list[tuple[str, date]], progress: Progress | None, bucket: str | None
) -> list[Outcome]:
    """Site-days one after another (a site's days in order: its hash chain), with one ledger read, one InfluxDB
    reader and one ledger publisher for all of them. The next site-day's gather (three Flux queries: mostly waiting
    for InfluxDB) runs in a thread while this one computes, renders and publishes, so the process's core is not
    idle during it."""
    led = await L.load(settings, _topics(settings))
    src = Source(settings, bucket)
    pub = L.Publisher(settings, _topics(settings), bucket)
    done: list[Outcome] = []
    items = sorted(todo, key=lambda x: (x[1], x[0]))
    frozen = False
    try:
        await pub.start()
        with ThreadPoolExecutor(1, thread_name_prefix="report-gather") as pool:
            ahead = _gather_ahead(pool, settings, src, items[0]) if items else None
            for i, (sid, d) in enumerate(items, 1):
                current = ahead
                # Only this thread's reader queries InfluxDB from here on: generate() is handed the data.
                ahead = _gather_ahead(pool, settings, src, items[i]) if i < len(items) else None
                try:
                    data: DayData | None = None
                    if current is not None:
                        data = await asyncio.wrap_future(current)
                    o = await generate(
                        settings, sid, d, ledger=led, source=src, bucket=bucket, publisher=pub, data=data
                    )
                    done.append(o)
                    if progress:
                        progress(i, len(todo), sid, d, o, None)
                except Exception as exc:  # a broken site-day is reported and retried on the next pass
                    log.exception("report %s %s failed", sid, d)
                    if progress:
                        progress(i, len(todo), sid, d, None, f"{type(exc).__name__}: {exc}")
                if i == 1 and len(items) > 1:
                    frozen = _freeze_heap()
                elif frozen:
                    gc.collect()  # this site-day's garbage, once (see _freeze_heap)
    finally:
        if frozen:
            gc.enable()
            gc.unfreeze()
        try:
            await pub.close()
        finally:
            src.close()
    return done


def _freeze_heap() -> bool:
    """Keep the objects the first site-day left alive (modules, fonts, the chart figure, the compiled template,
    the clients) out of the cyclic garbage collector's passes for the rest of the batch, and collect once after
    each site-day instead of whenever allocations reach a threshold.

    A render makes ~10^6 short-lived objects (WeasyPrint's boxes and styles, matplotlib's artists): the collector
    ran a full pass about every second site-day, and each walked the whole heap of the imported libraries.
    Measured in gc callbacks over batches of 20 site-days in one process (load 6-10): 0.21-0.25 s of a site-day's
    ~1.1-1.3 s of CPU went to the collector, ~0.05-0.1 s with that heap frozen; the peak memory is the same (~0.3
    GB). Raising the young generation's threshold (700 -> 5,000 or 20,000) spared little more and raised the peak to
    ~0.45 GB: not done. The automatic collector off and one collection after each site-day instead (the objects a
    render leaves in cycles, walked once): 0.06-0.09 against 0.11 s a site-day, and a lower peak (236-238 against
    247-261 MB; ``benchmarks.reports_process``, load 8-12).

    Undone at the end of the batch (:func:`gc.unfreeze`: the objects are collectable again; the collector on), so a
    long-running ``report serve`` that runs batches in its own process keeps nothing frozen between passes. False:
    something else froze the heap or turned the collector off (its own choice, left alone)."""
    if gc.get_freeze_count() or not gc.isenabled():
        return False
    gc.collect()
    gc.freeze()
    gc.disable()
    return True


def _gather_ahead(
    pool: ThreadPoolExecutor, settings: Settings, src: Source, item: tuple[str, date]
) -> concurrent.futures.Future[DayData] | None:
    """The site-day's gather, started in ``pool``; None when the site is not in the site file (then
    :func:`generate` says so, without a query)."""
    sid, d = item
    site = siteconfig.load(settings.site_config).sites.get(sid)
    return None if site is None else pool.submit(src.day, sid, d, site.timezone)


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    back_days: int = 7,
    every_s: float = 60.0,
    progress: Callable[[int, int, str, date, Outcome | None, str | None], None] | None = None,
) -> None:
    """Every ``every_s``: make each site's days that ended (local midnight + ``after_midnight_min``) and have no
    report yet, up to ``back_days`` back (catching up after downtime), in batches with progress."""
    try:
        log.info("retention: %s", apply_retention(settings))
    except Exception as exc:
        log.error("could not apply the retention policy: %s", exc)
    while not stop.is_set():
        try:
            cfg = siteconfig.load(settings.site_config)
            led = await L.load(settings, _topics(settings))
            todo = due_days(settings, cfg, led, int(time.time() * 1000), back_days)
            if todo:
                log.info("%d site-days to make", len(todo))
                await run_batch(settings, todo, progress=progress)
        except Exception as exc:  # a site file edited badly, Kafka away: keep serving, try again next pass
            log.error("report pass failed (%s: %s); trying again in %.0f s", type(exc).__name__, exc, every_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)
