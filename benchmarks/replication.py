"""What replication factor 3 costs the bridge and the sink: ``python -m benchmarks.replication``.

The same flood (``--n`` QoS 1 readings from 8 devices with ``mosquitto_pub -l``) goes through one
``larder bridge`` into Kafka and one ``larder sink`` into InfluxDB, both running live, on two Kafkas in the same
run, alternating ``--rounds`` times:

* **rf1**: the running stack (``larder stack up``, one broker, replication factor 1);
* **rf3**: a three-node KRaft cluster this script starts for itself (``larder stack up --brokers 3`` in a state
  folder and on free ports of its own, with its own InfluxDB and Mosquitto: replication factor 3,
  ``min.insync.replicas`` 2), stopped at the end.

Producers are the production ones (idempotent, ``acks=all``), so with RF 3 every bridge batch waits for a
follower. Measured per reading: the bridge's and the sink's CPU from just before the flood to the moment they
have it all (the bridge's ``larder_ingest_accepted_total``; the sink: every reading in InfluxDB), and the
brokers' CPU (all nodes) over the same time. Also wall rates. Writes ``benchmarks/results/replication-*.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from benchmarks import quiet, resultfile
from benchmarks.ingest import Bench
from pipeline import testing
from pipeline.kafkaadmin import delete_topics, ensure_topics, prefixed
from pipeline.services import Services, free_port
from pipeline.settings import Settings, load_settings
from pipeline.stack import influx, kafka, logins
from pipeline.stack.process import read_pid
from pipeline.topics import Topics

ROOT = Path(__file__).resolve().parents[1]


def _counter(port: int, series: str) -> int:
    import httpx

    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0
    for line in text.splitlines():
        if line.startswith(series):
            return int(float(line.split()[-1]))
    return 0


def _influx_count(settings: Settings, database: str) -> int:
    from influxdb_client import InfluxDBClient

    i = settings.influx
    flux = (
        f'from(bucket: "{database}/autogen") |> range(start: 2000-01-01T00:00:00Z) '
        '|> filter(fn: (r) => r._measurement == "reading" and r._field == "temp_c") |> group() |> count()'
    )
    with InfluxDBClient(url=i.base_url, token=i.token_value(), org=i.org, timeout=30_000) as client:
        try:
            tables = client.query_api().query(flux)
        except Exception:  # the database does not exist until the sink's first write
            return 0
    return sum(int(r.get_value()) for t in tables for r in t.records)


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def measure(n: int) -> dict[str, Any]:
    """One flood through a bridge and a sink on the stack the environment names; returns its figures."""
    settings = load_settings()
    prefix = f"rep{uuid.uuid4().hex[:8]}"
    topics = Topics(prefix=prefix, partitions=settings.readings_partitions)
    asyncio.run(ensure_topics(settings, topics))
    influx.create_database(settings, prefix)  # the flood's own database, so the count is exact
    work = Path(tempfile.mkdtemp(prefix="larder-replication-"))
    env = testing.make_env(settings, topics, work, n_devices=8, n_cameras=0)
    bench = Bench(settings, env, n)
    metrics_port = free_port()
    svc = Services(
        settings,
        env.site_file,
        prefix,
        names=("bridge", "sink"),
        extra_env={"LARDER_INFLUX__DATABASE": prefix, "LARDER_INGEST__BRIDGE_METRICS_PORT": str(metrics_port)},
    )
    try:
        svc.start()
        time.sleep(3.0)  # past start-up: what follows is the flood's work
        procs = {p.name: psutil.Process(p.proc.pid) for p in svc.processes if p.proc is not None}
        brokers = [
            psutil.Process(pid) for n_ in kafka.nodes(settings) if (pid := read_pid(kafka.paths(settings, n_)["pid"]))
        ]
        cpu0 = {k: _cpu(p) for k, p in procs.items()}
        kafka0 = sum(_cpu(b) for b in brokers)
        t0 = time.perf_counter()
        bench.publish()
        series = 'larder_ingest_accepted_total{source="mqtt"}'
        deadline = t0 + 600
        while _counter(metrics_port, series) < bench.n:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the bridge accepted {_counter(metrics_port, series)} of {bench.n} in 600 s")
            time.sleep(0.05)
        bridge_s = time.perf_counter() - t0
        bridge_cpu = _cpu(procs["bridge"]) - cpu0["bridge"]
        while (seen := _influx_count(settings, prefix)) < bench.n:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the sink wrote {seen} of {bench.n} in 600 s")
            time.sleep(0.5)
        sink_s = time.perf_counter() - t0
        sink_cpu = _cpu(procs["sink"]) - cpu0["sink"]
        kafka_cpu = sum(_cpu(b) for b in brokers) - kafka0
        return {
            "brokers": settings.kafka.brokers,
            "replication_factor": settings.kafka.replication_factor,
            "min_insync_replicas": settings.kafka.min_insync_replicas,
            "readings": bench.n,
            "bridge_cpu_us": round(bridge_cpu / bench.n * 1e6, 2),
            "sink_cpu_us": round(sink_cpu / bench.n * 1e6, 2),
            "kafka_cpu_us": round(kafka_cpu / bench.n * 1e6, 2),
            "into_kafka_per_s": round(bench.n / bridge_s, 1),
            "into_influx_per_s": round(bench.n / sink_s, 1),
        }
    finally:
        svc.stop()
        env.close()
        logins.revoke_bridges(settings, [bench.sub_instance])  # the login Bench made for its subscribers
        asyncio.run(delete_topics(settings, prefixed(prefix)))
        influx.drop_database(settings, prefix)
        shutil.rmtree(work, ignore_errors=True)


def _child(env: dict[str, str], n: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.replication", "--measure", "--n", str(n)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(f"measurement failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _cluster_env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LARDER_") or k == "LARDER_CACHE_DIR"}
    return {**env, **testing.cluster_env(state), "COLUMNS": "200"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="readings per flood")
    ap.add_argument("--rounds", type=int, default=2, help="floods per Kafka, alternating rf1 / rf3")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # one flood, on this environment
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.n)))
        return
    settings = load_settings()
    if settings.kafka.brokers != 1:
        sys.exit("run this against the single-broker stack (`larder stack up`): it starts the 3-node one itself")
    noise = quiet.check(settings)
    state = Path(tempfile.mkdtemp(prefix="larder-rf3-"))
    cluster = _cluster_env(state)
    larder = [sys.executable, "-m", "pipeline.cli", "stack"]
    print("starting a 3-node cluster of this run's own (larder stack up --brokers 3) ...", flush=True)
    t = time.monotonic()
    up = subprocess.run([*larder, "up", "--brokers", "3"], env=cluster, capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        sys.exit(f"the cluster did not start:\n{up.stdout}\n{up.stderr}")
    print(f"  up in {time.monotonic() - t:.0f} s", flush=True)
    runs: list[dict[str, Any]] = []
    try:
        for r in range(1, args.rounds + 1):
            for label, env in (("rf1", dict(os.environ)), ("rf3", cluster)):
                print(f"round {r}, {label}: {args.n:,} readings ...", flush=True)
                res = {"round": r, "kafka": label, **_child(env, args.n)}
                print(
                    f"  bridge {res['bridge_cpu_us']} µs, sink {res['sink_cpu_us']} µs, brokers "
                    f"{res['kafka_cpu_us']} µs of CPU a reading; {res['into_kafka_per_s']:,.0f}/s into Kafka",
                    flush=True,
                )
                runs.append(res)
    finally:
        subprocess.run([*larder, "down"], env=cluster, capture_output=True, timeout=300)
        shutil.rmtree(state, ignore_errors=True)

    def mean(kind: str, key: str) -> float:
        xs = [x[key] for x in runs if x["kafka"] == kind]
        return sum(xs) / len(xs)

    print(
        f"\n`python -m benchmarks.replication --n {args.n} --rounds {args.rounds}`, {os.cpu_count()} cores"
        f"{'; NOT A QUIET RUN' if noise else ''}:\n"
    )
    print(
        "| round | Kafka | bridge µs CPU a reading | sink µs | brokers µs, all nodes | to Kafka /s | to InfluxDB /s |"
    )
    print("|---|---|---|---|---|---|---|")
    for x in runs:
        print(
            f"| {x['round']} | {x['kafka']} | {x['bridge_cpu_us']} | {x['sink_cpu_us']} | {x['kafka_cpu_us']} | "
            f"{x['into_kafka_per_s']:,.0f} | {x['into_influx_per_s']:,.0f} |"
        )
    ratios = {k: round(mean("rf3", k) / mean("rf1", k), 2) for k in ("bridge_cpu_us", "sink_cpu_us", "kafka_cpu_us")}
    print(
        f"\nRF 3 / RF 1 (means of {args.rounds} rounds): bridge {ratios['bridge_cpu_us']}x, sink "
        f"{ratios['sink_cpu_us']}x, brokers {ratios['kafka_cpu_us']}x of CPU a reading"
    )
    path = resultfile.save(
        "replication",
        {
            "command": "python -m benchmarks.replication " + " ".join(a for a in sys.argv[1:]),
            "cpus": os.cpu_count(),
            "not_quiet": noise,
            "runs": runs,
            "rf3_over_rf1": ratios,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    quiet.unwind_on_sigterm()
    main()
