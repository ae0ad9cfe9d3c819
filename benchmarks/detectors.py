"""Cost of the pure device detector per reading (no Kafka, no Faust): ``python -m benchmarks.detectors``.

Common case: one reading a minute, in range, lateness 1 min, every rule on (chilled profile: levels, cumulative,
rate of rise, MKT, door flag, battery). Prints µs per reading and the serialised state size.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.detectors.device import DeviceDetector
from pipeline.profiles import BUILTIN_PROFILES, device_rules_from

M = 60_000
T0 = 1_795_305_600_000


def main(n: int = 200_000) -> None:
    det = DeviceDetector(device_rules_from(BUILTIN_PROFILES["chilled"], site="S", device="d", profile="chilled"))
    items: list[dict[str, Any]] = [
        {"ts_ms": T0 + i * M, "seq": i, "temp_c": 4.0 + (i % 7) * 0.1, "battery": 0.9, "door_open": False}
        for i in range(n)
    ]
    best = float("inf")
    for _ in range(3):
        s = det.initial()
        start = time.perf_counter()
        for d in items:
            s, _out = det.on_reading_dict(s, d, d["ts_ms"])
        best = min(best, time.perf_counter() - start)
    tick_s = det.initial()
    for d in items[:100]:
        tick_s, _ = det.on_reading_dict(tick_s, d, d["ts_ms"])
    start = time.perf_counter()
    for _ in range(n):
        det.on_tick(tick_s, items[99]["ts_ms"])
    tick = time.perf_counter() - start
    print(f"device detector: {best / n * 1e6:.2f} us/reading (best of 3, {n} readings, all rules on)")
    print(f"idle on_tick: {tick / n * 1e6:.2f} us; state {len(det.state_to_bytes(s))} bytes JSON")


if __name__ == "__main__":
    main()
