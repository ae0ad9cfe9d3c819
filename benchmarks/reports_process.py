"""One report process's batch in CPU seconds, and the garbage collector's share of it, optionally against another
checkout's code in the same minutes (an A/B on a shared machine, where load moves the absolute numbers).

``python -m benchmarks.reports_process [--sites 21] [--rounds 2] [--baseline DIR]``

The same simulated data as :mod:`benchmarks.reports` (``--sites`` sites of ten loggers at one reading a minute, an
excursion with escalation, ack and corrective action on every third asset) is written once to a scratch InfluxDB
database. Then, ``--rounds`` times, a fresh process per code tree makes every site-day through
``service.run_batch(workers=1)``: the first site-day alone (imports, fonts, the chart figure: not counted), then
the others in one batch, as one of ``report serve --workers N``'s processes makes its share (gather ahead in a
thread, one ledger read, one publisher). Each process has scratch topics and a scratch archive of its own (every
record is a first version, the same work in every run). Reported per process: CPU (``time.process_time``, all
threads) and wall per site-day, the time spent in the cyclic garbage collector (``gc.callbacks``) per site-day,
and the peak RSS. With ``--baseline DIR`` (``git archive <commit> pipeline benchmarks simulators | tar -x -C DIR``)
the baseline's process runs right before this tree's in each round.

Result: ``benchmarks/results/reports-process-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import resultfile

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _child(sites: int) -> None:
    import gc
    import resource

    import pipeline
    from benchmarks.reports import DAY0
    from pipeline import kafkaadmin
    from pipeline.reports import service
    from pipeline.settings import load_settings
    from pipeline.topics import Topics

    prefix = f"b{uuid.uuid4().hex[:10]}"
    archive = Path(tempfile.mkdtemp(prefix="larder-bench-process-"))
    os.environ.update({"LARDER_TOPIC_PREFIX": prefix, "LARDER_REPORTS__DIR": str(archive)})
    settings = load_settings()
    asyncio.run(kafkaadmin.ensure_topics(settings, Topics(prefix, settings.readings_partitions)))
    try:
        todo = [(f"B{s + 1:04d}", DAY0) for s in range(sites)]
        asyncio.run(service.run_batch(settings, todo[:1], workers=1))  # warm: imports, fonts, the chart figure
        spent: list[float] = []

        def collector(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                collector.started = time.process_time()  # type: ignore[attr-defined]
            else:
                spent.append(time.process_time() - collector.started)  # type: ignore[attr-defined]

        gc.callbacks.append(collector)
        t, c = time.perf_counter(), time.process_time()
        done = asyncio.run(service.run_batch(settings, todo[1:], workers=1))
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        gc.callbacks.remove(collector)
    finally:
        asyncio.run(kafkaadmin.delete_topics(settings, kafkaadmin.prefixed(prefix)))
        shutil.rmtree(archive, ignore_errors=True)
    n = len(done)
    print(
        json.dumps(
            {
                "code": str(Path(pipeline.__file__).parent.parent),
                "site_days": n,
                "cpu_s_per_site_day": cpu / n,
                "wall_s_per_site_day": wall / n,
                "gc_s_per_site_day": sum(spent) / n,
                "gc_passes_per_site_day": len(spent) / n,
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "load_avg_end": os.getloadavg(),
            }
        )
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.reports import _lines, _site_doc
    from pipeline.settings import load_settings
    from pipeline.sinks.influx import InfluxWriter
    from pipeline.siteconfig import write_site_file
    from pipeline.stack import influx

    base = load_settings()
    db = f"b{uuid.uuid4().hex[:10]}"
    tmp = Path(tempfile.mkdtemp(prefix="larder-bench-process-"))
    site_file = tmp / "sites.yaml"
    write_site_file(site_file, _site_doc(args.sites, 10))
    env = {"LARDER_SITE_CONFIG": str(site_file), "LARDER_INFLUX__BUCKET": f"{db}/autogen"}
    os.environ.update(env)
    influx.create_database(base, db)
    trees = ([("baseline", Path(args.baseline).resolve())] if args.baseline else []) + [("current", HERE.parent)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    try:
        ms, ns = _lines(args.sites, 1, 10)
        w = InfluxWriter(load_settings())
        for i in range(0, len(ms), 10_000):
            w.write(ms[i : i + 10_000], "ns")
        w.write(ns, "ns")
        w.close()
        load_before = os.getloadavg()
        for r in range(args.rounds):
            for name, root in trees:
                out = subprocess.run(
                    # This file as a script: its folder, not the current directory, leads sys.path, so `pipeline`
                    # is imported from PYTHONPATH, the tree under test.
                    [sys.executable, str(Path(__file__).resolve()), "--child", str(args.sites)],
                    cwd=root,
                    env={**os.environ, "PYTHONPATH": str(root)},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                got = json.loads(out.stdout.strip().splitlines()[-1])
                assert Path(got["code"]).resolve() == root, f"{name} ran {got['code']}, not {root}"
                runs[name].append(got)
                print(
                    f"round {r + 1} {name}: {got['site_days']} site-days, CPU {got['cpu_s_per_site_day']:.3f} s "
                    f"each (gc {got['gc_s_per_site_day']:.3f} s), wall {got['wall_s_per_site_day']:.3f} s, "
                    f"peak RSS {got['max_rss_mb']:.0f} MB, load {got['load_avg_end'][0]:.1f}"
                )
    finally:
        influx.drop_database(base, db)
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {
        name: {
            key: statistics.median(g[key] for g in rs)
            for key in ("cpu_s_per_site_day", "gc_s_per_site_day", "wall_s_per_site_day", "max_rss_mb")
        }
        for name, rs in runs.items()
    }
    for name, s in summary.items():
        print(f"{name}: median CPU {s['cpu_s_per_site_day']:.3f} s a site-day, gc {s['gc_s_per_site_day']:.3f} s")
    return {
        "summary": summary,
        "runs": runs,
        "machine": resultfile.machine(load_before),
        "args": vars(args),
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=21, help="site-days per process (the first one warms it)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per code tree, alternating")
    parser.add_argument("--baseline", type=str, help="another checkout to compare with")
    args = parser.parse_args()
    result = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"reports-process-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
