"""The detection stage's in-process cost per reading on live-like traffic: ``python -m benchmarks.runner``.

The runner (dispatch, decoded-state cache, timer index) and the production device detector, no Kafka, no
Faust, fed what the live worker sees in the end-to-end bench's ramp phases: ``--devices`` devices of the e2e
bench's site file (zero rule delays, 100 ms allowed lateness), each sending a reading every ``--every-ms``,
the bridge's records every 20 ms per partition and the live clock's ticks every ``--tick-ms``. With a reading
per device between two ticks, each reading is buffered on arrival and released by a tick of its own: the
path production takes (a reading every 10-60 s, ticks every second). Prints CPU µs per reading, best of
``--rounds``.

Side by side, on the same generated readings and in the same minutes (rounds interleaved, so a neighbour's load
hits both alike): the production ``DeviceDetector`` fed those readings in log order with no runner (its own
cost: decoded items in, one state per device in a dict, ``now_ms`` = the reading's time) and the live path
(the runner on the encoded records, ticks included), and the ratio of the two. The figures go to
``benchmarks/results/runner-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from benchmarks import resultfile
from benchmarks.e2e import write_site_file
from pipeline.agents.core import Runner, settle_gc
from pipeline.agents.devices import device_concern
from pipeline.contracts import records
from pipeline.partitioner import partition_for
from pipeline.siteconfig import load

T0 = 1_800_000_000_000
PARTITIONS = 4
RECORD_MS = 20


def traffic(
    devices: list[str],
    seconds: float,
    every_ms: int,
    tick_ms: int,
    late_every: int = 0,
    late_ms: int = 0,
    warmup_ms: int = 0,
) -> tuple[list[tuple[int, bytes]], int, int]:
    """Records in log order, per partition: readings batches every RECORD_MS, ticks every ``tick_ms``. With
    ``late_every`` = N, every N-th reading is delivered ``late_ms`` after it was taken (behind the frontier).

    ``warmup_ms`` of traffic come first: returns the records, the readings after the warm-up and the index of
    the first record after it."""
    per_ms = len(devices) / every_ms
    out: list[tuple[int, bytes]] = []
    pending: dict[int, list[dict[str, Any]]] = {p: [] for p in range(PARTITIONS)}
    held: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    seq = dict.fromkeys(devices, 0)
    due = 0.0
    i = n = 0
    split = 0
    for ms in range(warmup_ms + int(seconds * 1000)):
        now = T0 + ms
        if ms == warmup_ms and ms:
            for p, items in pending.items():  # the warm-up's readings stay in the warm-up's records
                if items:
                    out.append((p, records.readings_value(items)))
                    pending[p] = []
            split, n = len(out), 0
        for p, item in held.pop(ms, ()):
            pending[p].append(item)
        due += per_ms
        while due >= 1:
            due -= 1
            d = devices[i % len(devices)]
            i += 1
            seq[d] += 1
            item = {
                "device": d,
                "site": "B00000",
                "asset": f"a-{d}",
                "profile": "bench",
                "seq": seq[d],
                "ts_ms": now,
                "temp_c": 4.0,
                "received_ms": now,
            }
            if late_every and i % late_every == 0:
                held.setdefault(ms + late_ms, []).append((partition_for(d, PARTITIONS), item))
            else:
                pending[partition_for(d, PARTITIONS)].append(item)
            n += 1
        if ms % RECORD_MS == 0:
            for p, items in pending.items():
                if items:
                    out.append((p, records.readings_value(items)))
                    pending[p] = []
        if ms % tick_ms == 0:
            out += [(p, records.tick_value(now)) for p in range(PARTITIONS)]
    return out, n, split


def detector_alone(concern: Any, warmup: list[dict[str, Any]], items: list[dict[str, Any]]) -> float:
    """CPU seconds of the production device detector alone on ``items`` (decoded, in log order), after
    ``warmup`` (not timed): one state per device, each reading at its own time, no runner, no record decoding,
    no ticks (a reading releases the previous one of its device, as a tick does in the live path)."""
    detectors: dict[str, Any] = {}
    for d in (*warmup, *items):
        if d["device"] not in detectors:
            detectors[d["device"]] = concern.detector_for(d["device"], d)
    states = {k: det.initial() for k, det in detectors.items()}
    for d in warmup:
        k = d["device"]
        states[k], _out = detectors[k].on_reading_dict(states[k], d, d["ts_ms"])
    start = time.process_time()
    for d in items:
        k = d["device"]
        states[k], _out = detectors[k].on_reading_dict(states[k], d, d["ts_ms"])
    return time.process_time() - start


def live_path(concern: Any, traffic_records: list[tuple[int, bytes]], split: int = 0) -> tuple[float, Runner[Any, Any]]:
    """CPU seconds of the runner on the encoded records from ``split`` on, after those before it (not timed):
    decoding, dispatch, buffering, ticks, timer index, states flushed every 500 records as the worker does per
    commit."""
    runner: Runner[Any, Any] = Runner(concern, {}, PARTITIONS, arrived_ms=lambda: 0)
    start = 0.0
    for k, (p, value) in enumerate(traffic_records):
        if k == split:
            start = time.process_time()
        runner.on_record(value, p)
        if k % 500 == 0:
            runner.flush()
    return time.process_time() - start, runner


def heap_per_device(concern: Any, traffic_records: list[tuple[int, bytes]], devices: int) -> float:
    """Python heap the live path holds per device after the traffic (tracemalloc): decoded states, detectors,
    the timer index, the runner's dicts; no store (the table's bytes live in RocksDB, not on this heap)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    runner: Runner[Any, Any] = Runner(concern, None, PARTITIONS, arrived_ms=lambda: 0)
    for k, (p, value) in enumerate(traffic_records):
        runner.on_record(value, p)
        if k % 500 == 0:
            runner.flush()
    runner.flush()
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / devices


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "pipeline", "benchmarks"],
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1_000)
    ap.add_argument("--every-ms", type=int, default=100, help="each device's reading interval (100: 10,000/s)")
    ap.add_argument("--tick-ms", type=int, default=50, help="live clock tick (the e2e bench's: 50)")
    ap.add_argument("--seconds", type=float, default=30.0, help="event time to generate")
    ap.add_argument(
        "--warmup-ms",
        type=int,
        default=None,
        help="traffic run before the measure, untimed (default: one reading interval, so every device has a state "
        "as in a running worker; 0: devices are new during the measure)",
    )
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each measure; the best counts")
    ap.add_argument("--late-every", type=int, default=0, help="also run with every Nth reading delivered late")
    ap.add_argument("--late-ms", type=int, default=400, help="how late (the bench site allows 100 ms)")
    ap.add_argument("--no-save", action="store_true", help="do not write a result file")
    args = ap.parse_args()
    devices = [(f"bd-{i:06d}", f"secret-{i:06d}-bench") for i in range(args.devices)]
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "sites.yaml"
        write_site_file(site, devices, "http://127.0.0.1:9/unused")
        concern = device_concern(load(site))
    names = [d for d, _ in devices]
    warmup = args.every_ms if args.warmup_ms is None else args.warmup_ms
    traffic_records, _n, split = traffic(names, args.seconds, args.every_ms, args.tick_ms, warmup_ms=warmup)
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "command": "python -m benchmarks.runner "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "no_save"),
        "commit": _commit(),
        "load_avg_before": [round(x, 2) for x in load_before],
    }
    warm = [d for _p, value in traffic_records[:split] for d in records.batch_items(value, "readings")]
    items = [d for _p, value in traffic_records[split:] for d in records.batch_items(value, "readings")]
    n = len(items)  # what the records carry (the last few ms of readings are never sent)
    # The worker's collector settings (both measures run under them): its path, not the default thresholds'.
    settle_gc()
    alone: list[float] = []
    live: list[float] = []
    runner: Runner[Any, Any] | None = None
    for _ in range(args.rounds):
        alone.append(detector_alone(concern, warm, items))
        spent, runner = live_path(concern, traffic_records, split)
        live.append(spent)
    assert runner is not None
    per_alone = min(alone) / n * 1e6
    per_live = min(live) / n * 1e6
    print(
        f"{n:,} readings of {args.devices:,} devices (one every {args.every_ms} ms each), "
        f"{len(traffic_records) - split:,} records, ticks every {args.tick_ms} ms, after {warmup:,} ms of warm-up; "
        f"CPU µs a reading, best of {args.rounds} interleaved rounds:"
    )
    print(f"  detector alone (DeviceDetector.on_reading_dict, the same readings in order): {per_alone:.2f} µs")
    print(f"  live path (Runner.on_record on the records, ticks included): {per_live:.2f} µs, {n / min(live):,.0f}/s")
    print(f"  live path / detector alone: {per_live / per_alone:.2f}x")
    print(
        "  every round, µs: alone "
        + " ".join(f"{x / n * 1e6:.2f}" for x in alone)
        + "; live "
        + " ".join(f"{x / n * 1e6:.2f}" for x in live)
    )
    sizes = sorted(
        len(runner._detector(key, None).state_to_bytes(state))
        for p in range(PARTITIONS)
        for key, state in runner.states(p)
    )
    print(f"state per device (JSON, in order): median {sizes[len(sizes) // 2]} B, max {sizes[-1]} B")
    heap = heap_per_device(concern, traffic_records, args.devices)
    print(f"Python heap of the live path per device (tracemalloc, after the traffic): {heap:,.0f} B")
    result |= {
        "readings": n,
        "warmup_ms": warmup,
        "records": len(traffic_records) - split,
        "detector_alone_us": round(per_alone, 3),
        "live_path_us": round(per_live, 3),
        "ratio": round(per_live / per_alone, 3),
        "rounds_alone_us": [round(x / n * 1e6, 3) for x in alone],
        "rounds_live_us": [round(x / n * 1e6, 3) for x in live],
        "state_bytes_median": sizes[len(sizes) // 2],
        "state_bytes_max": sizes[-1],
        "heap_bytes_per_device": round(heap),
    }
    if args.late_every:
        late_records, n2, late_split = traffic(
            names, args.seconds, args.every_ms, args.tick_ms, args.late_every, args.late_ms, warmup
        )
        with_late, runner = min(
            (live_path(concern, late_records, late_split) for _ in range(args.rounds)), key=lambda r: r[0]
        )
        n_late = n2 // args.late_every
        extra = (with_late - min(live)) / n_late * 1e6
        print(
            f"every {args.late_every}th reading {args.late_ms} ms late: {with_late / n2 * 1e6:.1f} µs a reading, "
            f"{extra:.1f} µs of CPU beyond an in-order one per late reading"
        )
        print(
            f"annotations (late data beyond the history bound, masked, ...): {runner.stats.annotations:,}, "
            f"alerts: {runner.stats.alerts}"
        )
        result |= {"late_live_path_us": round(with_late / n2 * 1e6, 3), "late_extra_us": round(extra, 3)}
    result["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average before {load_before[0]:.2f}, after {result['load_avg_after'][0]:.2f}")
    if not args.no_save:
        print(f"saved {resultfile.save('runner', result)}")


if __name__ == "__main__":
    main()
