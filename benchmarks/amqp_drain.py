"""Who sets the RabbitMQ tier's pace, the cluster or the AMQP bridge? A backlog drained two ways on a quiet cluster.

    python -m benchmarks.amqp_drain [--n 20000]

Forms (or reuses) the cluster of ``pipeline.stack.rabbitmq`` and leaves it running (``benchmarks.mqtt_tier``
stops it). One device publishes ``--n`` QoS 1 readings with ``mosquitto_pub -l`` (one connection, its default
window) while nothing consumes; then (1) a bare aiormq consumer, no validation, no Kafka, acking every 500
cumulatively, drains them; the same again, then (2) one ``pipeline.ingest.amqp_bridge`` drains them into Kafka
(rate from the first to the last record's Kafka timestamp). Writes ``benchmarks/results/amqp-drain-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage

from benchmarks import resultfile
from benchmarks.ingest import machine
from pipeline import stack
from pipeline.ingest.amqp_bridge import urls_for
from pipeline.settings import Settings, load_settings
from pipeline.siteconfig import write_site_file
from pipeline.stack import rabbitmq
from pipeline.testing import Readings, consume, ingest_site_doc
from pipeline.topics import Topics

DEVICE, SECRET = "drain-dev-1", "drain-secret-1"


def publish(c: rabbitmq.RabbitCluster, n: int, workdir: Path) -> float:
    lines = workdir / "lines.txt"
    now = int(time.time())
    lines.write_text("".join(f'{{"ts": {now}, "seq": {i}, "temp_c": 3.5}}\n' for i in range(n)))
    argv = ["mosquitto_pub", "-h", c.host, "-p", str(c.mqtt_port(2)), "-u", DEVICE, "-P", SECRET, "-q", "1"]
    argv += ["-t", f"larder/v1/devices/{DEVICE}/readings", "-l"]
    t0 = time.monotonic()
    with lines.open("rb") as stdin:
        subprocess.run(argv, stdin=stdin, check=True)
    return n / (time.monotonic() - t0)


async def bare_drain(settings: Settings, c: rabbitmq.RabbitCluster, n: int) -> float:
    conn = await aiormq.connect(urls_for(settings, [f"{c.host}:{c.amqp_port(2)}"])[0])
    channel = await conn.channel()
    await channel.basic_qos(prefetch_count=20_000)
    got, first, done = 0, 0.0, asyncio.Event()

    async def on(m: DeliveredMessage) -> None:
        nonlocal got, first
        first = first or time.monotonic()
        got += 1
        if got % 500 == 0 or got == n:
            await channel.basic_ack(m.delivery_tag or 0, multiple=True)
        if got >= n:
            done.set()

    await channel.basic_consume(rabbitmq.QUEUE, on, no_ack=False)
    await asyncio.wait_for(done.wait(), 300)
    rate = n / (time.monotonic() - first)
    await conn.close()
    return rate


def bridge_drain(settings: Settings, c: rabbitmq.RabbitCluster, n: int, site: Path, workdir: Path) -> float:
    topics = Topics(prefix=f"b{uuid.uuid4().hex[:8]}", partitions=settings.readings_partitions)
    asyncio.run(stack.ensure_topics(settings, topics))
    env = {**os.environ, "LARDER_SITE_CONFIG": str(site), "LARDER_TOPIC_PREFIX": topics.prefix}
    env["LARDER_INGEST__BRIDGE_METRICS_PORT"] = "0"
    argv = [sys.executable, "-m", "pipeline.ingest.amqp_bridge", "--server", f"{c.host}:{c.amqp_port(2)}"]
    with (workdir / "bridge.log").open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        got, stamps = Readings(), []

        def on(record: Any) -> None:
            got(record)
            stamps.append(record.timestamp)

        asyncio.run(consume(settings, topics.readings, on, lambda: len(got.pairs) >= n, timeout=300))
        if len(got.pairs) < n:
            raise RuntimeError(f"only {len(got.pairs)} of {n} readings reached Kafka")
        return n / ((max(stamps) - min(stamps)) / 1000)
    finally:
        proc.terminate()
        proc.wait(30)
        asyncio.run(stack.delete_topics(settings, stack.prefixed(topics.prefix)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="readings in the backlog (mosquitto_pub -l: <= 50,000)")
    args = ap.parse_args()
    if not 0 < args.n <= 50_000:
        ap.error("--n must be between 1 and 50,000 (mosquitto_pub -l stops early past 65,535 lines)")
    settings = load_settings()
    c = rabbitmq.RabbitCluster.from_settings(settings)
    rabbitmq.install(settings)
    rabbitmq.up(c, report=lambda m: print(f"> {m}", file=sys.stderr))
    assert settings.mqtt.bridge_password is not None
    rabbitmq.configure(c, {DEVICE: SECRET}, settings.mqtt.bridge_user, settings.mqtt.bridge_password.get_secret_value())
    rabbitmq.ctl(c, 1, "purge_queue", "-p", rabbitmq.VHOST, rabbitmq.QUEUE)
    with tempfile.TemporaryDirectory(prefix="larder-amqp-drain-") as tmp:
        work = Path(tmp)
        site = work / "sites.yaml"
        write_site_file(site, ingest_site_doc({DEVICE: ("a1", SECRET)}, {}), header="benchmarks.amqp_drain device")
        pub1 = publish(c, args.n, work)
        bare = asyncio.run(bare_drain(settings, c, args.n))
        pub2 = publish(c, args.n, work)
        bridge = bridge_drain(settings, c, args.n, site, work)
    out = {
        "command": "python -m benchmarks.amqp_drain " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "load_average": os.getloadavg(),
        "readings": args.n,
        "publish_per_s": [round(pub1), round(pub2)],
        "bare_aiormq_drain_per_s": round(bare),
        "amqp_bridge_drain_into_kafka_per_s": round(bridge),
    }
    path = resultfile.save("amqp-drain", out)
    print(json.dumps(out, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
