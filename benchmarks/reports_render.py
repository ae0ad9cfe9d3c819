"""The render of one daily record (charts + PDF + CSVs) alone, in CPU seconds, optionally against another
checkout's code in the same minutes (an A/B on a shared machine, where load moves the absolute numbers).

``python -m benchmarks.reports_render [--repeat 4] [--rounds 3] [--assets 10] [--baseline DIR]``

One site-day of ``--assets`` loggers at one reading a minute (the same simulated data as
:mod:`benchmarks.reports`: the cold-room model, an excursion with escalation, ack and corrective action on every
third asset) is written to a scratch InfluxDB database and gathered once (``Source.day``, as the generator
does); the database is dropped. Then, ``--rounds`` times, a fresh process per code tree renders it
``--repeat`` times (``service.render_files``: charts, HTML, WeasyPrint PDF, CSVs) and reports
``time.process_time`` per render; with ``--baseline DIR`` (a tree holding another commit's ``pipeline``:
``mkdir /tmp/base && git archive <commit> pipeline | tar -x -C /tmp/base``) the baseline's process runs right
before this tree's in each round. The first render of a process
(imports, fonts) is reported apart; "warm" is the median of the others.

Result: ``benchmarks/results/reports-render-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
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


def _child(data_path: Path, sites_path: Path, repeat: int) -> None:
    import hashlib

    import pipeline
    from pipeline import siteconfig
    from pipeline.reports import render
    from pipeline.reports.compute import compute
    from pipeline.reports.service import render_files

    cfg = siteconfig.load(sites_path)
    data = pickle.loads(data_path.read_bytes())
    info = render.VersionInfo("LDR-B0001-20261123-v1", 1, data.end_ms + 3_600_000, "0" * 64, None, "")
    cpu: list[float] = []
    digests: dict[str, str] = {}
    for _ in range(repeat):
        report = compute(cfg, data)
        c = time.process_time()
        files = render_files(cfg, report, info)
        cpu.append(time.process_time() - c)
        digests = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
    print(json.dumps({"code": str(Path(pipeline.__file__).parent.parent), "render_cpu_s": cpu, "sha256": digests}))


def _gather(assets: int, tmp: Path) -> tuple[Path, Path]:
    from benchmarks.reports import DAY0, _lines, _site_doc
    from pipeline.settings import load_settings
    from pipeline.sinks.influx import InfluxWriter
    from pipeline.siteconfig import load, write_site_file
    from pipeline.stack import influx

    base = load_settings()
    db = f"b{uuid.uuid4().hex[:10]}"
    sites = tmp / "sites.yaml"
    write_site_file(sites, _site_doc(1, assets))
    os.environ.update({"LARDER_SITE_CONFIG": str(sites), "LARDER_INFLUX__BUCKET": f"{db}/autogen"})
    settings = load_settings()
    influx.create_database(base, db)
    try:
        ms, ns = _lines(1, 1, assets)
        w = InfluxWriter(settings)
        for i in range(0, len(ms), 10_000):
            w.write(ms[i : i + 10_000], "ns")
        w.write(ns, "ns")
        w.close()
        from pipeline.reports.gather import Source

        src = Source(settings)
        try:
            data = src.day("B0001", DAY0, load(sites).sites["B0001"].timezone)
        finally:
            src.close()
    finally:
        influx.drop_database(base, db)
    path = tmp / "day.pkl"
    path.write_bytes(pickle.dumps(data))
    return path, sites


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="larder-bench-render-"))
    data, sites = _gather(args.assets, tmp)
    trees = ([("baseline", Path(args.baseline).resolve())] if args.baseline else []) + [("current", HERE.parent)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    load_before = os.getloadavg()
    for r in range(args.rounds):
        for name, root in trees:
            env = {**os.environ, "PYTHONPATH": str(root)}
            out = subprocess.run(
                # This file as a script: its folder, not the current directory, leads sys.path, so `pipeline`
                # is imported from PYTHONPATH, the tree under test.
                [sys.executable, str(Path(__file__).resolve()), "--child", str(data), str(sites), str(args.repeat)],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            got = json.loads(out.stdout.strip().splitlines()[-1])
            assert Path(got["code"]).resolve() == root, f"{name} ran {got['code']}, not {root}"
            runs[name].append(got)
            print(f"round {r + 1} {name}: render CPU " + ", ".join(f"{x:.2f}" for x in got["render_cpu_s"]) + " s")
    summary = {}
    for name, rs in runs.items():
        warm = [x for g in rs for x in g["render_cpu_s"][1:]]
        summary[name] = {
            "first_render_cpu_s": [g["render_cpu_s"][0] for g in rs],
            "warm_render_cpu_s_median": statistics.median(warm),
            "warm_render_cpu_s_min": min(warm),
            "warm_render_cpu_s_max": max(warm),
            "sha256": rs[-1]["sha256"],
        }
        print(f"{name}: warm render CPU median {summary[name]['warm_render_cpu_s_median']:.2f} s (n = {len(warm)})")
    return {
        "assets": args.assets,
        "readings": args.assets * 1440,
        "summary": summary,
        "runs": runs,
        "machine": resultfile.machine(load_before),
        "args": vars(args),
    }


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=4, help="renders per process (the first one is cold)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per code tree, alternating")
    parser.add_argument("--baseline", type=str, help="another checkout to compare with (e.g. a git worktree)")
    args = parser.parse_args()
    result = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"reports-render-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
