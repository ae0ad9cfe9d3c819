"""Daily records: how long one site-day takes, and a batch of N site-days, against the real Kafka and InfluxDB.

``python -m benchmarks.reports [--sites N] [--days D] [--assets A] [--workers W]``

Data: the simulator's cold-room model (``simulators.coldchain.DeviceSim``), ``A`` loggers at one reading a minute,
copied to every site (with its own ids), written to a scratch InfluxDB database through the sink's line builder,
with one excursion alert (open, escalated, acknowledged, resolved) on every third asset, so each record has
charts, an excursion table and notifications. Scratch topics (prefix ``b`` + hex), a scratch database and a
scratch archive folder; all deleted at the end.

Measured:

1. one site-day, made ``--repeat`` times from scratch (new version each time: fresh archive), split into gather
   (Flux), compute, render (charts + HTML + PDF + CSV), and the whole call (including the archive write and the
   Kafka + InfluxDB ledger publish); the first call includes imports and font loading (a cold process).
2. the batch: every site-day through :func:`pipeline.reports.service.run_batch` (what `larder report serve`
   runs), in ``--workers`` processes (each takes a share of the sites), wall time and per site-day. By default
   this benchmark deals the shares to a process pool itself (as the first runs did); with ``--service`` one call
   of ``run_batch(workers=W)`` does it (``report serve --workers W``: spawned processes), CPU from the children.

Results are printed and written to ``benchmarks/results/reports-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
DAY0 = date(2026, 11, 23)
H = 3_600_000


def _site_doc(sites: int, assets: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": 1, "sites": {}}
    for s in range(sites):
        sid = f"B{s + 1:04d}"
        doc["sites"][sid] = {
            "name": f"Benchmark site {sid} 基准站点",
            "licence_no": f"JY{s:014d}",
            "station": "Station A",
            "district": "District 1",
            "assets": {f"{sid}-a{i}": {"name": f"Cold room {i} 冷库{i}", "kind": "cold_room"} for i in range(assets)},
            "devices": {
                f"{sid}-d{i}": {"asset": f"{sid}-a{i}", "interval_s": 60, "secret": f"bench-secret-{sid}-{i}"}
                for i in range(assets)
            },
            "recipients": {"operator": [{"name": "Operator", "phone": "+86 138 0000 0000"}]},
        }
    return doc


def _lines(sites: int, days: int, assets: int) -> tuple[list[str], list[str]]:
    """(ms lines, ns lines) for every site: simulator readings and a few alert lifecycles."""
    from pipeline.schemas import Alert, AlertState, Severity, alert_id, ms_to_iso
    from pipeline.sinks import lineproto
    from simulators.coldchain import DeviceSim, Fault

    start = int(datetime(2026, 11, 22, 16, tzinfo=UTC).timestamp() * 1000)  # 00:00 +08:00
    end = start + days * 24 * H
    templates = []
    for i in range(assets):
        faults = (Fault("compressor", start + 10 * H, start + 12 * H),) if i % 3 == 0 else ()
        sim = DeviceSim(f"x-{i}", "x", 11, start - H, end, faults=faults)
        pts = []
        for line in sim.run():
            body = line.body if line.kind == "mqtt" else None
            for r in (body or {}).get("readings", [body] if body else []):  # type: ignore[union-attr]
                ts = int(datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp() * 1000)
                pts.append((ts, r["temp_c"], r["seq"], line.at_ms))
        templates.append(pts)
    ms: list[str] = []
    ns: list[str] = []
    for s in range(sites):
        sid = f"B{s + 1:04d}"
        for i, pts in enumerate(templates):
            dev = f"{sid}-d{i}"
            for ts, temp, seq, at in pts:
                item = {
                    "site": sid,
                    "asset": f"{sid}-a{i}",
                    "device": dev,
                    "profile": "chilled",
                    "ts_ms": ts,
                    "temp_c": temp,
                    "seq": seq,
                    "received_ms": at,
                }
                text = lineproto.reading_line(item)
                assert text is not None
                ms.append(text)
            if i % 3 == 0:
                for d in range(days):
                    opened = start + d * 24 * H + 10 * H + 40 * 60_000
                    a = Alert(
                        alert_id=alert_id("coldchain.high", dev, opened),
                        rule="coldchain.high",
                        severity=Severity.WARNING,
                        site=sid,
                        subject=dev,
                        state=AlertState.OPEN,
                        opened_at=ms_to_iso(opened),
                        at_ms=opened,
                        evidence={"limit_c": 8.0, "breach_since": ms_to_iso(opened - 15 * 60_000)},
                    )
                    ev = {**a.evidence, "opened_ms": opened}
                    for state, at, extra in (
                        (AlertState.OPEN, opened, {}),
                        (AlertState.ESCALATED, opened + 15 * 60_000, {"step": 1}),
                        (AlertState.ACKNOWLEDGED, opened + 20 * 60_000, {"by": "Manager", "note": "door closed"}),
                        (AlertState.RESOLVED, opened + 2 * H, {"corrective_action": "stock moved"}),
                    ):
                        ns.append(
                            lineproto.alert_line(
                                a.model_copy(update={"state": state, "at_ms": at, "evidence": {**ev, **extra}})
                            )
                        )
    return ms, ns


def _worker(args: tuple[dict[str, Any], list[tuple[str, str]]]) -> tuple[float, int, list[float], float]:
    """One process's share of the batch (a fresh interpreter: imports and fonts count)."""
    env, todo = args
    os.environ.update(env)
    from pipeline.reports import service
    from pipeline.settings import load_settings

    settings = load_settings()
    per: list[float] = []
    last = [time.perf_counter()]

    def progress(i: int, n: int, sid: str, d: date, o: Any, err: str | None) -> None:
        now = time.perf_counter()
        per.append(now - last[0])
        last[0] = now
        if err:
            print(f"  {sid} {d}: FAILED {err}", file=sys.stderr)

    t, c = time.perf_counter(), time.process_time()
    done = asyncio.run(service.run_batch(settings, [(s, date.fromisoformat(d)) for s, d in todo], progress=progress))
    return time.perf_counter() - t, len(done), per, time.process_time() - c


def _service_batch(settings: Any, todo: list[tuple[str, str]], workers: int) -> tuple[float, int, list[float], float]:
    """The batch as `report serve --workers W` makes it; CPU = this process + its (joined) children."""
    import resource

    from pipeline.reports import service

    per: list[float] = []
    last = [time.perf_counter()]

    def progress(i: int, n: int, sid: str, d: date, o: Any, err: str | None) -> None:
        now = time.perf_counter()
        per.append((now - last[0]) * workers)  # completions of W processes interleave: W x the gap, per process
        last[0] = now
        if err:
            print(f"  {sid} {d}: FAILED {err}", file=sys.stderr)

    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    t, c = time.perf_counter(), cpu()
    jobs = [(s, date.fromisoformat(d)) for s, d in todo]
    done = asyncio.run(service.run_batch(settings, jobs, progress=progress, workers=workers))
    return time.perf_counter() - t, len(done), per, cpu() - c


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline import stack
    from pipeline.reports import service
    from pipeline.settings import load_settings
    from pipeline.sinks.influx import InfluxWriter
    from pipeline.siteconfig import write_site_file
    from pipeline.stack import influx
    from pipeline.topics import Topics

    base = load_settings()
    prefix = f"b{uuid.uuid4().hex[:10]}"
    tmp = Path(tempfile.mkdtemp(prefix="larder-bench-reports-"))
    site_file = tmp / "sites.yaml"
    write_site_file(site_file, _site_doc(args.sites, args.assets))
    env = {
        "LARDER_TOPIC_PREFIX": prefix,
        "LARDER_SITE_CONFIG": str(site_file),
        "LARDER_INFLUX__BUCKET": f"{prefix}/autogen",
        "LARDER_REPORTS__DIR": str(tmp / "archive"),
    }
    os.environ.update(env)
    settings = load_settings()
    influx.create_database(base, prefix)
    asyncio.run(stack.ensure_topics(base, Topics(prefix, base.readings_partitions)))
    result: dict[str, Any] = {}
    try:
        t = time.perf_counter()
        ms, ns = _lines(args.sites, args.days, args.assets)
        w = InfluxWriter(settings)
        for i in range(0, len(ms), 10_000):  # reading lines are in nanoseconds (pipeline.sinks.lineproto)
            w.write(ms[i : i + 10_000], "ns")
        w.write(ns, "ns")
        w.close()
        print(f"data: {len(ms):,} readings, {len(ns)} alert points written in {time.perf_counter() - t:.1f} s")
        now_ms = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000)

        load_before = os.getloadavg()
        # 1. one site-day, repeated (each a first version: the archive and ledger are moved aside between runs)
        one: list[dict[str, float]] = []
        for k in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            if args.profile and k == args.repeat - 1:
                import cProfile

                with cProfile.Profile() as prof:
                    o = asyncio.run(service.generate(settings, "B0001", DAY0, now_ms=now_ms + k))
                prof.dump_stats(args.profile)
            else:
                o = asyncio.run(service.generate(settings, "B0001", DAY0, now_ms=now_ms + k))
            total, cpu = time.perf_counter() - t, time.process_time() - c
            one.append({"total_s": total, "cpu_s": cpu, **o.timings})
            print(
                f"one site-day ({args.assets} assets) run {k + 1}: {total:.2f} s, CPU {cpu:.2f} s; "
                + " ".join(f"{n} {v:.2f}" for n, v in o.timings.items())
            )
            # A fresh version next time: a new day key (another scratch prefix would cost a topic creation).
            shutil.rmtree(tmp / "archive" / "B0001" / DAY0.isoformat())
            asyncio.run(_tombstone(settings, prefix, "B0001", DAY0.isoformat(), o.record.version))
        warm = one[1:] or one
        result["one_site_day"] = {
            "assets": args.assets,
            "readings": args.assets * 1440,
            "runs": one,
            "cold_total_s": one[0]["total_s"],
            "warm_median_total_s": statistics.median(r["total_s"] for r in warm),
            "warm_median_render_s": statistics.median(r["render_s"] for r in warm),
            "warm_median_cpu_s": statistics.median(r["cpu_s"] for r in warm),
            # CPU of charts + PDF + CSVs alone (time.process_time): what "renders in < 2 s" asks, and steadier
            # than wall time on a shared, loaded machine.
            "warm_median_render_cpu_s": statistics.median(r["render_cpu_s"] for r in warm),
            "load_avg_before": load_before,
        }

        # 2. the batch
        todo = [
            (f"B{s + 1:04d}", (DAY0 + timedelta(days=d)).isoformat())
            for s in range(args.sites)
            for d in range(args.days)
        ]
        shares = [todo[i :: args.workers] for i in range(args.workers)]
        t = time.perf_counter()
        if args.service:
            outs = [_service_batch(settings, todo, args.workers)]
        else:
            with ProcessPoolExecutor(args.workers) as pool:
                outs = list(pool.map(_worker, [(env, share) for share in shares if share]))
        wall = time.perf_counter() - t
        made = sum(o[1] for o in outs)
        per = [x for o in outs for x in o[2]]
        result["batch"] = {
            "site_days": len(todo),
            "made": made,
            "workers": args.workers,
            "via": "service.run_batch(workers)" if args.service else "process pool of run_batch shares",
            "wall_s": wall,
            "per_site_day_s_median": statistics.median(per) if per else None,
            "cpu_s_per_site_day": sum(o[3] for o in outs) / made if made else None,
            "site_days_per_min": made / wall * 60 if wall else None,
            "extrapolated_1000_min": 1000 / made * wall / 60 if made else None,
        }
        print(
            f"batch: {made}/{len(todo)} site-days in {wall:.1f} s with {args.workers} processes "
            f"({result['batch']['site_days_per_min']:.0f}/min; 1,000 would take "
            f"~{result['batch']['extrapolated_1000_min']:.1f} min, extrapolated)"
        )
        checked, findings = asyncio.run(service.verify(settings, "B0002" if args.sites > 1 else "B0001"))
        result["verify"] = {"checked": checked, "findings": [f.problem for f in findings]}
    finally:
        influx.drop_database(base, prefix)
        asyncio.run(stack.delete_topics(base, stack.prefixed(prefix)))
        shutil.rmtree(tmp, ignore_errors=True)
    from pipeline.reports import tools

    result["machine"] = {
        "cpus": os.cpu_count(),
        # WeasyPrint's font subsetting: HarfBuzz (libharfbuzz-subset0) or its fontTools fallback, most of a render.
        "font_subsetter": "harfbuzz" if tools.has_harfbuzz_subset() else "fonttools",
        "python": platform.python_version(),
        "load_avg_end": os.getloadavg(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    result["args"] = vars(args)
    return result


async def _tombstone(settings: Any, prefix: str, site: str, day: str, versions: int) -> None:
    from pipeline.producer import durable_producer
    from pipeline.topics import Topics

    topic = Topics(prefix).reports
    p = durable_producer(settings)
    await p.start()
    try:
        for v in range(1, versions + 1):
            await p.send_and_wait(topic, None, key=f"{site}|{day}|v{v}".encode())
    finally:
        await p.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--assets", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--profile", type=str, help="cProfile the last single site-day run into FILE")
    parser.add_argument(
        "--service", action="store_true", help="the batch through service.run_batch(workers=W), as `report serve`"
    )
    args = parser.parse_args()
    result = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"reports-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
