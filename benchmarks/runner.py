"""The detection stage's in-process cost per reading on live-like traffic: ``python -m benchmarks.runner``.

The runner (dispatch, decoded-state cache, timer index) and the production device detector, no Kafka, no
Faust, fed what the live worker sees in the end-to-end bench's ramp phases: ``--devices`` devices of the e2e
bench's site file (zero rule delays, 100 ms allowed lateness), each sending a reading every ``--every-ms``,
the bridge's records every 20 ms per partition and the live clock's ticks every ``--tick-ms``. With a reading
per device between two ticks, each reading is buffered on arrival and released by a tick of its own: the
path production takes (a reading every 10-60 s, ticks every second). Prints CPU µs per reading, best of 3.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.e2e import write_site_file
from pipeline.agents.core import Runner
from pipeline.agents.devices import device_concern
from pipeline.contracts import records
from pipeline.partitioner import partition_for
from pipeline.siteconfig import load

T0 = 1_800_000_000_000
PARTITIONS = 4
RECORD_MS = 20


def traffic(
    devices: list[str], seconds: float, every_ms: int, tick_ms: int, late_every: int = 0, late_ms: int = 0
) -> tuple[list[tuple[int, bytes]], int]:
    """Records in log order, per partition: readings batches every RECORD_MS, ticks every ``tick_ms``. With
    ``late_every`` = N, every N-th reading is delivered ``late_ms`` after it was taken (behind the frontier)."""
    per_ms = len(devices) / every_ms
    out: list[tuple[int, bytes]] = []
    pending: dict[int, list[dict[str, Any]]] = {p: [] for p in range(PARTITIONS)}
    held: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    seq = dict.fromkeys(devices, 0)
    due = 0.0
    i = n = 0
    for ms in range(int(seconds * 1000)):
        now = T0 + ms
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
    return out, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1_000)
    ap.add_argument("--every-ms", type=int, default=100, help="each device's reading interval (100: 10,000/s)")
    ap.add_argument("--tick-ms", type=int, default=50, help="live clock tick (the e2e bench's: 50)")
    ap.add_argument("--seconds", type=float, default=30.0, help="event time to generate")
    ap.add_argument("--late-every", type=int, default=0, help="also run with every Nth reading delivered late")
    ap.add_argument("--late-ms", type=int, default=400, help="how late (the bench site allows 100 ms)")
    args = ap.parse_args()
    devices = [(f"bd-{i:06d}", f"secret-{i:06d}-bench") for i in range(args.devices)]
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "sites.yaml"
        write_site_file(site, devices, "http://127.0.0.1:9/unused")
        concern = device_concern(load(site))
    names = [d for d, _ in devices]

    def measure(late_every: int) -> tuple[float, int, Runner[Any, Any]]:
        records, n = traffic(names, args.seconds, args.every_ms, args.tick_ms, late_every, args.late_ms)
        best = float("inf")
        runner: Runner[Any, Any] | None = None
        for _ in range(3):
            runner = Runner(concern, {}, PARTITIONS, arrived_ms=lambda: 0)
            start = time.process_time()
            for k, (p, value) in enumerate(records):
                runner.on_record(value, p)
                if k % 500 == 0:
                    runner.flush()
            best = min(best, time.process_time() - start)
        assert runner is not None
        print(
            f"{n:,} readings of {args.devices:,} devices (one every {args.every_ms} ms each), {len(records):,} "
            f"records, ticks every {args.tick_ms} ms"
            + (f", every {late_every}th reading {args.late_ms} ms late" if late_every else "")
            + f": {best / n * 1e6:.1f} µs of CPU a reading (best of 3), {n / best:,.0f} readings/s on one core"
        )
        return best, n, runner

    in_order, _, runner = measure(0)
    sizes = sorted(
        len(runner._detector(key, None).state_to_bytes(state))
        for p in range(PARTITIONS)
        for key, state in runner.states(p)
    )
    print(f"state per device (JSON, in order): median {sizes[len(sizes) // 2]} B, max {sizes[-1]} B")
    if args.late_every:
        with_late, n2, runner = measure(args.late_every)
        n_late = n2 // args.late_every
        print(f"cost of a late reading: {(with_late - in_order) / n_late * 1e6:.1f} µs of CPU beyond an in-order one")
        lates = runner.stats.annotations
        print(
            f"annotations (late data beyond the history bound, masked, ...): {lates:,}, alerts: {runner.stats.alerts}"
        )


if __name__ == "__main__":
    main()
