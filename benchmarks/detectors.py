"""Cost of the pure device detector per reading (no Kafka, no Faust): ``python -m benchmarks.detectors``.

Common case: one reading a minute, in range, lateness 1 min, every rule on (chilled profile: levels, cumulative,
rate of rise, MKT, door flag, battery). Prints µs per reading and the serialised state size.

``--late-every N``: the same stream with every N-th reading delivered ``--late-min`` minutes late (beyond the
allowed lateness: re-evaluated from the device's history since issue 25, annotated only before it), ticks every
10 s of event time in both runs; prints the extra cost per late reading and the largest state seen.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from pipeline.detectors.device import DeviceDetector
from pipeline.profiles import BUILTIN_PROFILES, device_rules_from

M = 60_000
T0 = 1_795_305_600_000


def _items(n: int) -> list[dict[str, Any]]:
    return [
        {
            "ts_ms": T0 + i * M,
            "seq": i,
            "temp_c": 4.0 + (i % 7) * 0.1 + (6.0 if 300 <= i % 1440 < 330 else 0.0),
            "battery": 0.9,
            "door_open": False,
        }
        for i in range(n)
    ]


def _delivery(items: list[dict[str, Any]], late_every: int, late_min: int) -> list[tuple[int, dict[str, Any]]]:
    """(arrival ms, item) in arrival order: every late_every-th item arrives late_min minutes after it was taken."""
    arrivals = [
        (d["ts_ms"] + (late_min * M if late_every and i % late_every == late_every - 1 else 0), i, d)
        for i, d in enumerate(items)
    ]
    return [(at, d) for at, _, d in sorted(arrivals, key=lambda x: (x[0], x[1]))]


def _run(det: DeviceDetector, delivery: list[tuple[int, dict[str, Any]]]) -> tuple[float, int, int, int]:
    """CPU seconds, alerts, annotations, largest state (bytes of JSON) for one pass with 10 s ticks."""
    s = det.initial()
    alerts = annotations = biggest = 0
    tick = delivery[0][0]
    start = time.process_time()
    for k, (at, d) in enumerate(delivery):
        while tick + 10_000 <= at:
            tick += 10_000
            s, out = det.on_tick(s, tick)
            alerts += sum(1 for o in out if hasattr(o, "alert_id"))
            annotations += sum(1 for o in out if not hasattr(o, "alert_id"))
        s, out = det.on_reading_dict(s, d, max(tick, at) if at > d["ts_ms"] else d["ts_ms"])
        if out:
            alerts += sum(1 for o in out if hasattr(o, "alert_id"))
            annotations += sum(1 for o in out if not hasattr(o, "alert_id"))
        if k % 97 == 0:
            biggest = max(biggest, len(det.state_to_bytes(s)))
    elapsed = time.process_time() - start
    return elapsed, alerts, annotations, biggest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=100_000, help="readings (one a minute)")
    ap.add_argument("--late-every", type=int, default=0, help="every Nth reading delivered late (0: in order only)")
    ap.add_argument("--late-min", type=int, default=3, help="how late, minutes (the allowed lateness is 1)")
    args = ap.parse_args()
    n = args.n
    det = DeviceDetector(device_rules_from(BUILTIN_PROFILES["chilled"], site="S", device="d", profile="chilled"))
    items = _items(n)
    best = float("inf")
    for _ in range(3):
        s = det.initial()
        start = time.process_time()
        for d in items:
            s, _out = det.on_reading_dict(s, d, d["ts_ms"])
        best = min(best, time.process_time() - start)
    tick_s = det.initial()
    for d in items[:100]:
        tick_s, _ = det.on_reading_dict(tick_s, d, d["ts_ms"])
    start = time.process_time()
    for _ in range(n):
        det.on_tick(tick_s, items[99]["ts_ms"])
    tick = time.process_time() - start
    print(f"device detector: {best / n * 1e6:.2f} us/reading (best of 3, {n} readings, all rules on)")
    print(f"idle on_tick: {tick / n * 1e6:.2f} us; state {len(det.state_to_bytes(s))} bytes JSON")
    if args.late_every:
        in_order = min(_run(det, _delivery(items, 0, 0)) for _ in range(3))
        late = min(_run(det, _delivery(items, args.late_every, args.late_min)) for _ in range(3))
        n_late = n // args.late_every
        print(
            f"with 10 s ticks, in order: {in_order[0] / n * 1e6:.2f} us/reading, {in_order[1]} alert records, "
            f"largest state {in_order[3]} B"
        )
        print(
            f"every {args.late_every}th reading {args.late_min} min late: {late[0] / n * 1e6:.2f} us/reading, "
            f"{(late[0] - in_order[0]) / n_late * 1e6:.1f} us more per late reading; {late[1]} alert records, "
            f"{late[2]} annotations, largest state {late[3]} B"
        )


if __name__ == "__main__":
    main()
