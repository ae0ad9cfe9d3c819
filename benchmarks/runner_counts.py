"""Instructions and cache misses of the live path and of the detector alone, counted by cachegrind:
``python -m benchmarks.runner_counts [--tree DIR]``.

Why: on a machine shared with other developers' tests (load 3-13 during issue 24's second pass) single rounds of
``benchmarks.runner`` swing by ±30 %, more than most single steps gain. Cachegrind's counts do not depend on the
load: every measure runs twice under valgrind, once with only its untimed part (the warm-up traffic) and once with
the measured part too, and the difference is what ``benchmarks.runner`` times (the same traffic: 10,000 devices,
a reading every 10 s each, 1 s ticks, 10 s of warm-up, then ``--seconds`` measured). Simulated caches: 32 KB L1d,
1 MB last level (this machine's L2 per core). Counts are per reading; time still decides, these only guide.

``--tree DIR`` counts another checkout's ``pipeline`` (e.g. a ``git archive`` of main) with this traffic.
Needs ``valgrind``; takes a few minutes (the two runs of each measure go in parallel).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import resultfile

DEVICES = 10_000
EVERY_MS = 10_000
TICK_MS = 1_000
COUNTS = {
    "instructions": r"I\s+refs:\s+([\d,]+)",
    "l1d_misses": r"D1\s+misses:\s+([\d,]+)",
    "ll_misses": r"LLd misses:\s+([\d,]+)",
}


def inputs(tmp: Path, seconds: float) -> None:
    """The site file (as JSON: parsed in a fraction of the YAML's time under valgrind) and the traffic, made once
    outside valgrind for every run."""
    from ruamel.yaml import YAML

    from benchmarks.e2e import write_site_file
    from benchmarks.runner import traffic
    from pipeline import serde

    devices = [(f"bd-{i:06d}", f"secret-{i:06d}-bench") for i in range(DEVICES)]
    write_site_file(tmp / "sites.yaml", devices, "http://127.0.0.1:9/unused")
    (tmp / "sites.json").write_bytes(serde.dumps(YAML(typ="safe").load((tmp / "sites.yaml").read_text())))
    made = traffic([d for d, _ in devices], seconds, EVERY_MS, TICK_MS, warmup_ms=EVERY_MS)
    (tmp / "traffic.pickle").write_bytes(pickle.dumps(made))


def child(measure: str, full: bool, tmp: Path) -> None:
    """Runs under valgrind: the warm-up traffic, then (``full``) the measured part, of one measure."""
    from benchmarks.runner import PARTITIONS
    from pipeline.agents.core import Runner, settle_gc
    from pipeline.agents.devices import device_concern
    from pipeline.contracts import records
    from pipeline.siteconfig import load

    concern = device_concern(load(tmp / "sites.json"))
    recs, _n, split = pickle.loads((tmp / "traffic.pickle").read_bytes())
    items = [d for _p, value in recs for d in records.batch_items(value, "readings")]
    warm = sum(len(records.batch_items(value, "readings")) for _p, value in recs[:split])
    settle_gc()
    if measure == "live":
        runner: Runner[Any, Any] = Runner(concern, {}, PARTITIONS, arrived_ms=lambda: 0)
        for k, (p, value) in enumerate(recs if full else recs[:split]):
            runner.on_record(value, p)
            if k % 500 == 0:
                runner.flush()
    else:  # as benchmarks.runner's detector_alone: one state per device, each reading at its own time
        detectors: dict[str, Any] = {d["device"]: concern.detector_for(d["device"], d) for d in items}
        states = {k: det.initial() for k, det in detectors.items()}
        for d in items if full else items[:warm]:
            k = d["device"]
            states[k], _out = detectors[k].on_reading_dict(states[k], d, d["ts_ms"])
    print(f"readings {len(items) - warm}", file=sys.stderr)


def counted(tree: Path, measure: str, full: bool, tmp: Path) -> dict[str, int]:
    run = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=yes",
            "--D1=32768,8,64",
            "--LL=1048576,8,64",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            __file__,  # by path: the tree counted may not have this module
            "--child",
            measure,
            "--full" if full else "--warm-only",
            "--inputs",
            str(tmp),
        ],
        capture_output=True,
        text=True,
        check=True,
        # One hash seed for every run: string hashes decide dict and set layouts, and with them how many
        # instructions and misses a run takes (two runs of one path differed by 1-10 % with random seeds).
        env=os.environ | {"PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"},
    )
    out = {k: int(re.search(rx, run.stderr).group(1).replace(",", "")) for k, rx in COUNTS.items()}  # type: ignore[union-attr]
    out["readings"] = int(re.search(r"readings (\d+)", run.stderr).group(1))  # type: ignore[union-attr]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", type=Path, default=Path(__file__).parent.parent, help="checkout whose pipeline to count")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured traffic (event time)")
    ap.add_argument("--child", choices=["live", "alone"], help=argparse.SUPPRESS)
    ap.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warm-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.full, args.inputs)
        return
    tree = args.tree.resolve()
    with tempfile.TemporaryDirectory() as name, ThreadPoolExecutor(2) as pool:
        tmp = Path(name)
        inputs(tmp, args.seconds)
        runs = {
            (m, full): pool.submit(counted, tree, m, full, tmp) for m in ("live", "alone") for full in (False, True)
        }
        got = {k: f.result() for k, f in runs.items()}
    result: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.runner_counts", *sys.argv[1:]]),
        "tree": str(tree),
    }
    for m in ("live", "alone"):
        n = got[m, True]["readings"]
        per = {k: round((got[m, True][k] - got[m, False][k]) / n) for k in COUNTS}
        result[m] = per | {"readings": n}
        print(f"{m:5s}: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in per.items()) + " a reading")
    ratios = {k: round(result["live"][k] / result["alone"][k], 3) for k in COUNTS}
    result["live_over_alone"] = ratios
    print("live / alone: " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}x" for k, v in ratios.items()))
    if not args.no_save:
        print(f"saved {resultfile.save('runner-counts', result)}")


if __name__ == "__main__":
    main()
