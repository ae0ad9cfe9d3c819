"""Console grades and rollup pages over 10,000 sites: p95 page time, and what the snapshot behind them costs.

    python -m benchmarks.grades_page [--sites 10000 --days 30 --requests 100]

Against the local stack (`larder stack up`), on a fresh topic prefix (deleted at the end): a simulated month of
alert events for ``--sites`` sites (:mod:`pipeline.grading.simulate`, the grading benchmark's), folded with the
grading worker's own fold and written to the grading table's changelog topic exactly as the worker writes it
(key site, value ``evidence.to_bytes``); then `larder console` starts as a process, reads those states, grades
every site and rolls up (its log says how much CPU that took), and each page is fetched ``--requests`` times,
one after the other, as an admin (every site) and as a station user (one station's sites). Writes
``benchmarks/results/grades-page-<time>.json`` and prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer

from benchmarks import quiet
from benchmarks.console import bench_users, login, pct, timed
from pipeline import stack
from pipeline.grading import evidence, simulate
from pipeline.grading.evidence import DAY_MS
from pipeline.grading.topics import GradingTopics
from pipeline.kafkaadmin import create_missing
from pipeline.services import free_port, larder_argv
from pipeline.settings import load_settings
from pipeline.topics import Topics, TopicSpec

ROOT = Path(__file__).resolve().parents[1]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    quiet.require_stack(settings)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    now = int(time.time() * 1000)
    start = now // DAY_MS * DAY_MS - args.days * DAY_MS
    t0 = time.process_time()
    cfg = simulate.site_config(args.sites, seed=7)
    truth = simulate.simulate(cfg, start, args.days, seed=1)
    events = simulate.events(truth, until_ms=now)
    states: dict[str, evidence.SiteEvidence] = {}
    for i, e in enumerate(events):
        states[e["site"]] = evidence.fold(states.get(e["site"]) or evidence.empty(e["site"]), e)
        if i % 250_000 == 0:
            print(f"folding: {i:,} of {len(events):,} alert events", flush=True)
    print(f"simulated and folded {len(events):,} alert events of {len(states):,} sites in "
          f"{time.process_time() - t0:.0f} CPU s", flush=True)  # fmt: skip
    prefix = f"b{uuid.uuid4().hex[:8]}"
    topics = Topics(prefix=prefix, partitions=settings.readings_partitions)
    gt = GradingTopics(topics)
    await stack.ensure_topics(settings, topics)
    changelog = TopicSpec(gt.changelog(), topics.partitions, (("cleanup.policy", "compact"),))
    await create_missing(settings, [changelog])
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all", linger_ms=20)
    await producer.start()
    try:
        for site, state in states.items():
            await producer.send(gt.changelog(), evidence.to_bytes(state), key=site.encode())
        await producer.flush()
    finally:
        await producer.stop()
    site_path = work / "sites.json"
    site_path.write_text(json.dumps(simulate.site_doc(args.sites, seed=7)))
    stations = sorted({s.station for s in cfg.sites.values()})
    users_path = bench_users(work / "users.yaml", stations[0])
    result: dict[str, Any] = {
        "sites": args.sites,
        "days": args.days,
        "alert_events": len(events),
        "stations": len(stations),
        "station_sites": sum(1 for s in cfg.sites.values() if s.station == stations[0]),
    }
    port = free_port()
    log_path = work / "console.log"
    env = {**os.environ, "LARDER_TOPIC_PREFIX": prefix}
    argv = [*larder_argv(), "console", "--sites", str(site_path), "--users", str(users_path), "--port", str(port)]
    console = subprocess.Popen(
        [*argv, "--grades-refresh", str(args.refresh)],
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        while not re.search(r"grades of \d+ sites", log_path.read_text()):
            assert console.poll() is None, log_path.read_text()
            assert time.perf_counter() - t0 < 1800, "no snapshot after 30 min"
            await asyncio.sleep(0.5)
        line = re.search(r"grades of (\d+) sites and (\d+) rollups as of \d+: ([\d.]+) CPU s", log_path.read_text())
        assert line, log_path.read_text()[-2000:]
        result["snapshot_sites"] = int(line.group(1))
        result["snapshot_cpu_s"] = float(line.group(3))
        settle = re.search(r"one collection ([\d.]+) s[^,]*, (\d+) objects frozen", log_path.read_text())
        if settle:  # the board's one collection after a refresh (pipeline/console/grades.py)
            result["refresh_collection_s"] = float(settle.group(1))
            result["objects_frozen"] = int(settle.group(2))
        result["first_snapshot_wall_s"] = round(time.perf_counter() - t0, 1)
        pages: dict[str, dict[str, float]] = {}
        for who in ("admin", "station"):
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                await login(http, base, who)
                level = "district" if who == "admin" else "station"
                urls = {
                    "grades page": f"/grades?level={level}&period=month",
                    "rollup JSON": "/api/v1/rollup?level=station&period=week",
                    "rollup CSV": "/api/v1/rollup?level=station&period=day&format=csv",
                    "grades JSON (every site in scope)": "/api/v1/grades",
                }
                for name, url in urls.items():
                    ms = await timed(http, base + url, args.requests)
                    pages[f"{name}, {who}"] = {
                        "n": len(ms),
                        "median_ms": round(pct(ms, 50), 1),
                        "p95_ms": round(pct(ms, 95), 1),
                        "max_ms": round(max(ms), 1),
                        # The first request after the snapshot renders its rows (later ones reuse them).
                        "first_ms": round(ms[0], 1),
                    }
                    print(f"{name}, {who}: {pages[f'{name}, {who}']}", flush=True)
        result["pages"] = pages
    finally:
        console.terminate()
        console.wait(30)
        await stack.delete_topics(settings, stack.prefixed(prefix))
    load = os.getloadavg()
    cores = os.cpu_count()
    result["machine"] = f"{platform.machine()}, {cores} cores, load average {load[0]:.1f} (5 min {load[1]:.1f})"
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--requests", type=int, default=100, help="requests per page and user")
    ap.add_argument("--refresh", type=float, default=300.0, help="the console's --grades-refresh")
    ap.add_argument("--workdir", default="/tmp/larder-bench-grades")
    args = ap.parse_args()
    result = asyncio.run(main_async(args))
    out = ROOT / "benchmarks" / "results" / f"grades-page-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['sites']:,} sites, {result['alert_events']:,} alert events; snapshot "
          f"{result['snapshot_cpu_s']} CPU s\n")  # fmt: skip
    print("| page | n | median ms | p95 ms | max ms | first ms |\n|---|---|---|---|---|---|")
    for name, p in result["pages"].items():
        print(f"| {name} | {p['n']} | {p['median_ms']} | {p['p95_ms']} | {p['max_ms']} | {p['first_ms']} |")
    print(f"\nresult: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
