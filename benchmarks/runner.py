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


def traffic(devices: list[str], seconds: float, every_ms: int, tick_ms: int) -> tuple[list[tuple[int, bytes]], int]:
    """Records in log order, per partition: readings batches every RECORD_MS, ticks every ``tick_ms``."""
    per_ms = len(devices) / every_ms
    out: list[tuple[int, bytes]] = []
    pending: dict[int, list[dict[str, Any]]] = {p: [] for p in range(PARTITIONS)}
    seq = dict.fromkeys(devices, 0)
    due = 0.0
    i = n = 0
    for ms in range(int(seconds * 1000)):
        now = T0 + ms
        due += per_ms
        while due >= 1:
            due -= 1
            d = devices[i % len(devices)]
            i += 1
            seq[d] += 1
            pending[partition_for(d, PARTITIONS)].append(
                {
                    "device": d,
                    "site": "B00000",
                    "asset": f"a-{d}",
                    "profile": "bench",
                    "seq": seq[d],
                    "ts_ms": now,
                    "temp_c": 4.0,
                    "received_ms": now,
                }
            )
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
    args = ap.parse_args()
    devices = [(f"bd-{i:06d}", f"secret-{i:06d}-bench") for i in range(args.devices)]
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "sites.yaml"
        write_site_file(site, devices, "http://127.0.0.1:9/unused")
        concern = device_concern(load(site))
    records, n = traffic([d for d, _ in devices], args.seconds, args.every_ms, args.tick_ms)
    best = float("inf")
    for _ in range(3):
        runner: Runner[Any, Any] = Runner(concern, {}, PARTITIONS, arrived_ms=lambda: 0)
        start = time.process_time()
        for k, (p, value) in enumerate(records):
            runner.on_record(value, p)
            if k % 500 == 0:
                runner.flush()
        best = min(best, time.process_time() - start)
    print(
        f"{n:,} readings of {args.devices:,} devices (one every {args.every_ms} ms each), {len(records):,} records, "
        f"ticks every {args.tick_ms} ms: {best / n * 1e6:.1f} µs of CPU a reading (best of 3), "
        f"{n / best:,.0f} readings/s on one core"
    )


if __name__ == "__main__":
    main()
