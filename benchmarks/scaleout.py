"""Worker scale-out: the same readings through 1, 2 and 3 `larder worker` processes in one consumer group.

Two cores cannot show linear scaling in wall time (three workers share them), so the measure is **readings per
worker CPU-second**: the work the group did divided by the CPU all its workers spent, from their start to the
last reading. Scaling out costs only coordination (rebalances, each worker's fixed overhead) if that figure
holds from one worker to three; the goal is a fall of no more than 15%.

    python -m benchmarks.scaleout                     # against the running stack (`larder stack up`)
    LARDER_KAFKA__BROKERS=3 python -m benchmarks.scaleout   # the same on `larder stack up --brokers 3`

Each count runs on topics of its own (replication as the stack's: 3 copies on a 3-node cluster), with the
production detectors (`benchmarks.detection`'s readings, 500 a record batch), RocksDB tables and changelogs.
Writes ``benchmarks/results/scaleout-<time>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from benchmarks import quiet, resultfile
from benchmarks.detection import ROOT, metric, prepare, produce, readings, record_batches, say, site_doc
from pipeline import testing
from pipeline.kafkaadmin import delete_topics, prefixed
from pipeline.services import free_port
from pipeline.settings import Settings, load_settings
from pipeline.topics import Topics


async def run_group(
    settings: Settings, workers: int, n: int, d: int, partitions: int, tmp: Path, standby: int
) -> dict[str, Any]:
    topics = Topics(prefix=f"bench{uuid.uuid4().hex[:8]}", partitions=partitions)
    await prepare(settings, topics)
    devices = [f"dev-{i:06d}" for i in range(d)]
    batches = record_batches(readings(devices, n), partitions)
    sites = tmp / f"{topics.prefix}-sites.yaml"
    testing.write_site_file(sites, site_doc(devices))
    env = {
        **os.environ,
        "LARDER_TOPIC_PREFIX": topics.prefix,
        "LARDER_READINGS_PARTITIONS": str(partitions),
        "LARDER_WORKER_STANDBY_REPLICAS": str(standby),
    }
    procs: list[tuple[subprocess.Popen[bytes], int, Path]] = []
    try:
        for w in range(workers):
            port, log = free_port(), tmp / f"{topics.prefix}-worker{w}.log"
            args = [sys.executable, "-m", "pipeline.cli", "worker", "--sites", str(sites), "--clock", "replay"]
            args += ["--data-dir", str(tmp / f"{topics.prefix}-w{w}"), "--metrics-port", str(port), "-l", "warn"]
            with log.open("wb") as out:
                procs.append(
                    (subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT), port, log)
                )
        # Every worker assigned before the readings go in: the measure is the steady group, not its forming.
        deadline = time.monotonic() + 180
        while not all("assigned devices=" in log.read_text(errors="replace") for _p, _port, log in procs):
            for p, _port, log in procs:
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("worker did not start:\n" + log.read_text(errors="replace")[-3000:])
            await asyncio.sleep(0.2)
        await asyncio.sleep(3.0)  # the last rebalance settles (each new member moves partitions once more)
        ps = [psutil.Process(p.pid) for p, _port, _log in procs]
        cpu0 = [sum(x.cpu_times()[:2]) for x in ps]
        t0 = time.perf_counter()
        await produce(settings, topics.readings, [(p, k, v) for p, k, v in batches])
        while True:
            done = [max(0.0, metric(port, "larder_worker_items_total")) for _p, port, _log in procs]
            if sum(done) >= n:
                break
            if any(p.poll() is not None for p, _port, _log in procs) or time.perf_counter() - t0 > 900:
                raise RuntimeError("a worker stopped or the group fell behind for 15 min")
            await asyncio.sleep(0.05)
        wall = time.perf_counter() - t0
        cpu = [sum(x.cpu_times()[:2]) - c for x, c in zip(ps, cpu0, strict=True)]
        return {
            "workers": workers,
            "standby_replicas": standby,
            "readings": n,
            "per_worker": done,
            "wall_s": round(wall, 2),
            "cpu_s": [round(c, 2) for c in cpu],
            "readings_per_cpu_s": round(n / sum(cpu), 1),
            "readings_per_s": round(n / wall, 1),
        }
    finally:
        for p, _port, _log in procs:
            p.terminate()
        for p, _port, _log in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        await delete_topics(settings, prefixed(topics.prefix))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=300_000)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--partitions", type=int, default=6, help="readings partitions (divisible among 1, 2, 3)")
    ap.add_argument("--workers", default="1,2,3", help="comma-separated group sizes")
    ap.add_argument(
        "--standby-replicas",
        default="0",
        help="comma-separated values of the workers' --standby-replicas to run each group size with (0: the default)",
    )
    args = ap.parse_args()
    settings = load_settings()
    quiet.require_stack(settings)
    noise = quiet.check(settings)
    tmp = Path(tempfile.mkdtemp(prefix="larder-scaleout-"))
    runs = []
    try:
        for standby in [int(x) for x in args.standby_replicas.split(",")]:
            for k in [int(x) for x in args.workers.split(",")]:
                say(
                    f"{k} worker(s), --standby-replicas {standby}: {args.readings:,} readings of "
                    f"{args.devices:,} devices, {args.partitions} partitions"
                )
                r = asyncio.run(run_group(settings, k, args.readings, args.devices, args.partitions, tmp, standby))
                say(f"  {r['readings_per_cpu_s']:,.0f} readings per worker CPU-s, {r['readings_per_s']:,.0f}/s wall")
                runs.append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\n`python -m benchmarks.scaleout` on {settings.kafka.brokers} broker(s) (replication factor "
        f"{settings.kafka.replication_factor}), {os.cpu_count()} cores, {args.readings:,} readings of "
        f"{args.devices:,} devices, {args.partitions} partitions{'; NOT A QUIET RUN' if noise else ''}:\n"
    )
    print("| workers | standbys | readings per worker CPU-s | vs one worker | wall readings/s | CPU s per worker |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        # Compared with the smallest group of the same standby setting, run the same minutes.
        base = next(b for b in runs if b["standby_replicas"] == r["standby_replicas"])["readings_per_cpu_s"]
        print(
            f"| {r['workers']} | {r['standby_replicas']} | {r['readings_per_cpu_s']:,.0f} | "
            f"{r['readings_per_cpu_s'] / base:.0%} | {r['readings_per_s']:,.0f} | "
            f"{' / '.join(f'{c:.1f}' for c in r['cpu_s'])} |"
        )
    out = {
        "command": "python -m benchmarks.scaleout " + " ".join(sys.argv[1:]),
        "brokers": settings.kafka.brokers,
        "replication_factor": settings.kafka.replication_factor,
        "cpus": os.cpu_count(),
        "not_quiet": noise,
        "runs": runs,
    }
    path = resultfile.save("scaleout", out)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
