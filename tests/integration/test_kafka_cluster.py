"""`larder stack up --brokers 3`: three KRaft nodes on loopback, Larder's topics with three copies and
``min.insync.replicas=2``, and the pipeline's own producer (idempotent, acks=all) writing through a ``kill -9``
of a partition leader and its restart without losing or duplicating a record. Checked with kcat, as an operator
would, on an isolated stack (own state folder and ports)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import TypedDict

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import testing
from pipeline.producer import durable_producer
from pipeline.services import free_port_block
from pipeline.settings import Settings, load_settings
from pipeline.stack.process import pid_alive, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

TOPIC = "larder.readings.v1"


def _metadata(bootstrap: str) -> dict[str, object]:
    out = subprocess.run(
        ["kcat", "-b", bootstrap, "-L", "-J", "-t", TOPIC], capture_output=True, text=True, timeout=30, check=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


class PartitionMeta(TypedDict):
    """One partition in kcat's ``-L -J`` metadata (the fields read here)."""

    leader: int
    replicas: list[object]
    isrs: list[object]


def _partitions(bootstrap: str) -> list[PartitionMeta]:
    return _metadata(bootstrap)["topics"][0]["partitions"]  # type: ignore[index,no-any-return]


#: Node n listens on PORT + 2(n - 1), its controller one above; InfluxDB and Mosquitto above the six.
PORT = free_port_block(9)


@pytest.fixture
def cluster(live_stack: Settings, tmp_path: Path) -> object:
    env = testing.own_stack_env(tmp_path / "state", live_stack.cache_dir, PORT, PORT + 6, PORT + 8)
    yield env
    testing.larder(env, "stack", "down")


async def _produce(settings: Settings, start: int, n: int) -> None:
    producer = durable_producer(settings, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(TOPIC, f"r{i}".encode(), key=f"dev-{i % 97}".encode()) for i in range(start, start + n)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _read_all(settings: Settings) -> Counter[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(settings.readings_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        seen: Counter[str] = Counter()
        while True:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                return seen
            for msgs in (await consumer.getmany(timeout_ms=1000)).values():
                seen.update(m.value.decode() for m in msgs if m.value is not None)
    finally:
        await consumer.stop()


def test_three_brokers_replicate_and_survive_a_leader_kill(cluster: dict[str, str], tmp_path: Path) -> None:
    env = cluster
    up = testing.larder(env, "stack", "up", "--brokers", "3")
    assert up.returncode == 0, up.stdout + up.stderr
    # Later commands know every node without the flag (recorded by `up`).
    status = testing.larder(env, "stack", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    for node, port in (("kafka-1", PORT), ("kafka-2", PORT + 2), ("kafka-3", PORT + 4)):
        assert node in status.stdout and f"127.0.0.1:{port}" in status.stdout
    assert status.stdout.count("healthy") == 5

    bootstrap = f"127.0.0.1:{PORT}"
    parts = _partitions(bootstrap)
    assert len(parts) == 4
    for p in parts:
        assert len(p["replicas"]) == 3 and len(p["isrs"]) == 3, p
    configs = subprocess.run(
        ["kcat", "-b", bootstrap, "-L", "-t", TOPIC], capture_output=True, text=True, timeout=30, check=True
    )
    assert "3 brokers" in configs.stdout

    old = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("LARDER_")})
    try:
        settings = load_settings()
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert settings.kafka.brokers == 3 and settings.kafka.bootstrap_servers.count(",") == 2

    # Half the records, then kill -9 the leader of partition 0, the rest while it is down, then restart it.
    asyncio.run(_produce(settings, 0, 10_000))
    leader = int(parts[0]["leader"])
    pid_file = tmp_path / "state" / "run" / f"kafka-{leader}.pid"
    pid = int(pid_file.read_text())
    os.killpg(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), timeout=10)
    asyncio.run(_produce(settings, 10_000, 10_000))
    survivors = f"127.0.0.1:{PORT + 2 * (leader % 3)}"  # a node that is still up
    after = _partitions(survivors)
    assert all(int(p["leader"]) != leader for p in after), after
    assert all(len(p["isrs"]) == 2 for p in after), after

    again = testing.larder(env, "stack", "up")  # restarts only the dead node
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"kafka-{leader}: started" in again.stdout + again.stderr
    assert wait_until(lambda: all(len(p["isrs"]) == 3 for p in _partitions(bootstrap)), timeout=60)

    seen = asyncio.run(_read_all(settings))
    missing = {f"r{i}" for i in range(20_000)} - set(seen)
    assert not missing, f"{len(missing)} records lost, e.g. {sorted(missing)[:5]}"
    assert max(seen.values()) == 1, f"{sum(n - 1 for n in seen.values())} duplicates"
    print(f"20,000 records through a kill -9 of leader kafka-{leader} and its restart: none lost, none duplicated")

    down = testing.larder(env, "stack", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    pids = [int(p.read_text()) for p in (tmp_path / "state" / "run").glob("*.pid")]
    assert not [p for p in pids if pid_alive(p)], "down left a process behind"
