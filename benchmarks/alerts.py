"""Alert delivery and InfluxDB sink benchmark.

    python -m benchmarks.alerts [--readings 300000] [--alerts 10000]

Needs a running stack (`larder stack up`; honour LARDER_* like every command) for the sink part.

* **Sink**: ``--readings`` readings in 500-reading RecordBatch records are put in a fresh readings topic, then
  `InfluxSink` (the code `larder sink` runs) drains them into a fresh database, with gzip on and off. Rate =
  points acknowledged by InfluxDB over the wall time from start to the last acknowledged batch (includes Kafka
  fetch, decoding, line protocol, the HTTP write and the offset commit).
* **Router**: the pure routing code with ``--alerts`` open alerts spread over 1,000 sites: time to open them,
  the cost of one idle tick (nothing due), and how many messages a 1,000-site mass outage produces per role.

Prints a Markdown section for BENCHMARKS.md (## Alerts and sink).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
import uuid
from collections import Counter
from typing import Any

from aiokafka import AIOKafkaProducer

from benchmarks import quiet
from pipeline import stack
from pipeline.alerts.routing import Router, RouterState, RoutingConfig, Send
from pipeline.contracts import records
from pipeline.partitioner import partition_for
from pipeline.schemas import Alert, AlertState, Severity, alert_id, ms_to_iso
from pipeline.settings import NotifySettings, Settings, load_settings
from pipeline.sinks.influx import InfluxSink
from pipeline.siteconfig import SiteConfig
from pipeline.stack import influx
from pipeline.topics import Topics

T0 = 1_795_000_000_000


async def _fill(settings: Settings, topics: Topics, n: int, devices: int = 1000) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all", linger_ms=20)
    await producer.start()
    try:
        by_part: dict[int, list[dict[str, Any]]] = {}
        per_dev = n // devices
        for seq in range(per_dev):
            for d in range(devices):
                dev = f"bench-{d:05d}"
                by_part.setdefault(partition_for(dev, topics.partitions), []).append(
                    {
                        "device": dev,
                        "site": f"S{d % 50}",
                        "asset": "a",
                        "profile": "chilled",
                        "seq": seq,
                        "ts_ms": T0 + seq * 60_000,
                        "temp_c": 3.5 + (seq % 10) / 10,
                        "received_ms": T0 + seq * 60_000,
                    }
                )
        futs = []
        for p, items in by_part.items():
            for i in range(0, len(items), 500):
                value = records.readings_value(items[i : i + 500])
                futs.append(await producer.send(topics.readings, value, key=items[i]["device"].encode(), partition=p))
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def _sink_run(settings: Settings, topics: Topics, total: int, gzip: bool) -> tuple[float, float]:
    db = f"bench{uuid.uuid4().hex[:8]}"
    influx.create_database(settings, db)
    s = settings.model_copy(
        update={"notify": NotifySettings.model_validate({**settings.notify.model_dump(), "sink_gzip": gzip})}
    )
    sink = InfluxSink(s, topics, bucket=f"{db}/autogen", group_id=f"bench-{uuid.uuid4().hex[:6]}")
    stop = asyncio.Event()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    task = asyncio.create_task(sink.run(stop))
    while sink.stats.points < total:
        await asyncio.sleep(0.05)
        if task.done():
            task.result()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    stop.set()
    await task
    influx.drop_database(settings, db)
    return total / elapsed, cpu / total * 1e6


def _router_bench(n_alerts: int) -> dict[str, Any]:
    sites = {
        f"S{i:04d}": {
            "recipients": {
                "operator": [{"name": f"op{i}", "phone": "+8613800000001"}],
                "site_manager": [{"name": f"mgr{i}", "phone": "+8613800000002"}],
                "station": [{"name": f"station{i % 10}", "phone": f"+86139000000{i % 10:02d}"}],
            }
        }
        for i in range(1000)
    }
    router = Router(RoutingConfig.from_sites(SiteConfig.model_validate({"sites": sites})))
    state = RouterState()
    t0 = time.perf_counter()
    for k in range(n_alerts):
        site = f"S{k % 1000:04d}"
        a = Alert(
            alert_id=alert_id("liveness.offline", f"d{k}", T0),
            rule="liveness.offline",
            severity=Severity.WARNING,
            site=site,
            subject=f"d{k}",
            state=AlertState.OPEN,
            opened_at=ms_to_iso(T0),
            at_ms=T0,
        )
        state, _ = router.on_alert(state, a, T0)
    open_s = time.perf_counter() - t0
    sends: list[Send] = []
    now = T0
    t0 = time.perf_counter()
    for _ in range(0, 61 * 60, 30):  # an hour of 30 s ticks: step 0 at once, managers at 15, stations at 60
        now += 30_000
        state, acts = router.on_tick(state, now)
        sends += [a for a in acts if isinstance(a, Send)]
    busy_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(20):
        now += 1000
        state, _ = router.on_tick(state, now)
    idle_ms = (time.perf_counter() - t0) / 20 * 1000
    per_role = Counter(s.person.role for s in sends)
    return {
        "open_us": open_s / n_alerts * 1e6,
        "idle_tick_ms": idle_ms,
        "hour_s": busy_s,
        "messages": dict(per_role),
        "notifications": sum(len(s.items) for s in sends),
    }


async def main(args: argparse.Namespace) -> None:
    settings = load_settings()
    quiet.require_stack(settings)
    topics = Topics(prefix=f"bench{uuid.uuid4().hex[:6]}", partitions=settings.readings_partitions)
    await stack.ensure_topics(settings, topics)
    print(f"filling {args.readings:,} readings ...", flush=True)
    await _fill(settings, topics, args.readings)
    rows = []
    for gzip in (False, True):
        rate, cpu_us = await _sink_run(settings, topics, args.readings, gzip)
        rows.append((gzip, rate, cpu_us))
        print(f"sink gzip={gzip}: {rate:,.0f} points/s, {cpu_us:.1f} µs CPU per point (sink process)", flush=True)
    r = _router_bench(args.alerts)
    print(f"router: {r}", flush=True)
    print("\n## Alerts and sink\n")
    print(
        f"Machine: {platform.machine()}, {platform.python_version()}; `python -m benchmarks.alerts "
        f"--readings {args.readings} --alerts {args.alerts}`.\n"
    )
    print("| sink (Kafka -> InfluxDB, commit after ack) | points/s | sink CPU µs/point |")
    print("|---|---|---|")
    for gzip, rate, cpu_us in rows:
        print(
            f"| gzip {'on' if gzip else 'off'}, batches of {settings.notify.sink_batch} | {rate:,.0f} | {cpu_us:.1f} |"
        )
    print(
        f"\nRouter, {args.alerts:,} open alerts over 1,000 sites: opening {r['open_us']:.1f} µs/alert, idle tick "
        f"{r['idle_tick_ms']:.1f} ms, one simulated hour of escalation {r['hour_s']:.2f} s; "
        f"{r['notifications']:,} notifications went out as {sum(r['messages'].values()):,} messages "
        f"({', '.join(f'{k} {v}' for k, v in sorted(r['messages'].items()))})."
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=300_000)
    ap.add_argument("--alerts", type=int, default=10_000)
    asyncio.run(main(ap.parse_args()))
