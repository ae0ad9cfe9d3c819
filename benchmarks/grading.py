"""Grading benchmark: the pure fold's throughput over a simulated month of alerts at many sites, the table's
memory per site, and the time to compute every grade and the rollups from the states.

    python -m benchmarks.grading                 # 10,000 sites, 30 days
    python -m benchmarks.grading --sites 1000    # quicker

No services needed: this measures the fold the Faust agent runs per record (``evidence.fold`` + ``daily``),
not Faust's own per-record cost (~90 µs a record on this machine, STACK.md), which is added on top by the
worker. The result is written to ``benchmarks/results/grading-<time>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

from pipeline import serde
from pipeline.grading import evidence, rollup, score, simulate, store

RESULTS = Path(__file__).parent / "results"
START = 1_790_035_200_000 - 1_790_035_200_000 % evidence.DAY_MS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--agent-sites", type=int, default=1000, help="sites whose events also run the agent path")
    ap.add_argument("--out", type=Path, default=None, help="result file (default benchmarks/results/grading-*.json)")
    args = ap.parse_args()

    t = time.perf_counter()
    cfg = simulate.site_config(args.sites)
    truth = simulate.simulate(cfg, START, args.days, seed=args.seed)
    events = simulate.events(truth)
    gen_s = time.perf_counter() - t
    print(f"simulated {len(truth):,} alerts, {len(events):,} alert events at {args.sites:,} sites in {gen_s:.1f} s")

    sites = cfg.sites
    gc.collect()
    gc.freeze()
    # (a) the fold alone, states in memory (what a consumer holding its sites' states pays per event)
    t = time.perf_counter()
    cpu = time.process_time()
    states = evidence.fold_all(events)
    fold_s = time.perf_counter() - t
    fold_cpu = time.process_time() - cpu
    rate = len(events) / fold_cpu
    print(f"fold: {rate:,.0f} alert events per CPU second ({fold_cpu:.1f} s CPU, {fold_s:.1f} s wall)")

    # (b) the agent's work per record minus Faust, on the first --agent-sites sites: JSON bytes in, fold, the
    # daily grade record when a site passes midnight, the state encoded for the table when it changed.
    sample = set(sorted(sites)[: args.agent_sites])
    raw = [(e["site"], serde.dumps(e)) for e in events if e["site"] in sample]
    cache: dict[str, evidence.SiteEvidence] = {}
    table: dict[str, bytes] = {}
    daily_records = 0
    daily_cpu = 0.0
    cpu = time.process_time()
    for sid, value in raw:
        doc = serde.loads(value)
        st = cache.get(sid) or evidence.empty(sid)
        new = evidence.fold(st, doc)
        d0 = time.process_time()
        new, grades = score.daily(new, sites[sid])
        daily_cpu += time.process_time() - d0
        for g in grades:
            g.model_dump_json()
        daily_records += len(grades)
        if new is not st:
            table[sid] = evidence.to_bytes(new)
            cache[sid] = new
    agent_cpu = time.process_time() - cpu
    agent_rate = len(raw) / agent_cpu
    print(
        f"agent path ({len(sample):,} sites, {len(raw):,} events): {agent_rate:,.0f} alert events per CPU second, "
        f"of which daily grades {daily_cpu:.1f} s for {daily_records:,} records "
        f"({1000 * daily_cpu / max(1, daily_records):.2f} ms each)"
    )

    t = time.perf_counter()
    blobs = {sid: evidence.to_bytes(st) for sid, st in states.items()}
    encode_s = time.perf_counter() - t
    sizes = sorted(len(b) for b in blobs.values())
    per_alert = sum(sizes) / max(1, sum(len(s.alerts) for s in states.values()))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t = time.perf_counter()
    decoded = {sid: evidence.from_bytes(b) for sid, b in blobs.items()}
    decode_s = time.perf_counter() - t
    heap = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert decoded == states
    print(
        f"table value per site: mean {statistics.mean(sizes):,.0f} B, p50 {sizes[len(sizes) // 2]:,} B, "
        f"max {sizes[-1]:,} B ({per_alert:.0f} B per alert); decoded in Python {heap / len(decoded):,.0f} B per site"
    )

    as_of = START + args.days * evidence.DAY_MS
    t = time.process_time()
    graded = store.grades(states, cfg, as_of)
    grades_s = time.process_time() - t
    timings: dict[str, float] = {}
    for level in ("station", "district"):
        for period in ("day", "month"):
            t = time.process_time()
            rollup.rollup(states, cfg, as_of, period, level)  # type: ignore[arg-type]
            timings[f"{level}-{period}"] = time.process_time() - t
    mix = {g: sum(1 for x in graded if x.grade == g) for g in "ABCD"}
    print(
        f"every grade ({len(graded):,} sites): {grades_s:.2f} s CPU; rollups (CPU s): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
        + f"; grade mix {mix}"
    )

    result: dict[str, Any] = {
        "benchmark": "grading",
        "command": f"python -m benchmarks.grading --sites {args.sites} --days {args.days} --seed {args.seed} "
        f"--agent-sites {args.agent_sites}",
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "sites": args.sites,
        "days": args.days,
        "alerts": len(truth),
        "alert_events": len(events),
        "simulate_s": round(gen_s, 2),
        "fold_wall_s": round(fold_s, 3),
        "fold_cpu_s": round(fold_cpu, 3),
        "fold_events_per_cpu_s": round(rate),
        "agent_path_sites": len(sample),
        "agent_path_events": len(raw),
        "agent_path_cpu_s": round(agent_cpu, 3),
        "agent_path_events_per_cpu_s": round(agent_rate),
        "daily_grade_records": daily_records,
        "daily_grade_cpu_s": round(daily_cpu, 3),
        "encode_all_s": round(encode_s, 3),
        "decode_all_s": round(decode_s, 3),
        "table_bytes_per_site_mean": round(statistics.mean(sizes)),
        "table_bytes_per_site_p50": sizes[len(sizes) // 2],
        "table_bytes_per_site_max": sizes[-1],
        "table_bytes_per_alert": round(per_alert),
        "python_heap_bytes_per_site": round(heap / len(decoded)),
        "grades_all_cpu_s": round(grades_s, 3),
        "rollup_cpu_s": {k: round(v, 3) for k, v in timings.items()},
        "grade_mix": mix,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = args.out or RESULTS / f"grading-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
