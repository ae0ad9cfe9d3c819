"""`larder stack prune` on the real broker and InfluxDB: a run's topics (its own, Faust's, quix-streams'),
database and table files go; another run's and the pipeline's stay; --dry-run deletes nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline import stack
from pipeline.services import larder_argv
from pipeline.settings import Settings
from pipeline.stack import influx
from pipeline.topics import Topics

pytestmark = pytest.mark.integration


def _names(prefix: str) -> list[str]:
    return [
        f"{prefix}.readings.v1",
        f"{prefix}-worker-devices-state-changelog",
        f"changelog__quix-842115ed--{prefix}-base.single-readings.v1--default",
    ]


async def _create(settings: Settings, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 2, 1) for n in names])
    finally:
        await admin.close()


async def _existing(settings: Settings) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def _prune(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*larder_argv(), "stack", "prune", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_prune_deletes_one_runs_leftovers_and_nothing_else(live_stack: Settings) -> None:
    doomed, kept = f"t{uuid.uuid4().hex[:10]}", f"t{uuid.uuid4().hex[:10]}"
    asyncio.run(_create(live_stack, _names(doomed) + _names(kept)))
    for run in (doomed, kept):
        influx.create_database(live_stack, run)
        (live_stack.data_dir / "worker" / f"{run}-worker").mkdir(parents=True)
    try:
        dry = _prune("--prefix", doomed, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "would delete 3 topics of 1 runs, 1 InfluxDB databases and 1 workers' table folders" in dry.stderr
        assert set(_names(doomed)) <= asyncio.run(_existing(live_stack))

        done = _prune("--prefix", doomed)
        assert done.returncode == 0, done.stderr
        assert "deleted 3 topics" in done.stderr
        left = asyncio.run(_existing(live_stack))
        assert not set(_names(doomed)) & left
        assert set(_names(kept)) <= left
        assert Topics(live_stack.topic_prefix, 1).readings in left  # the pipeline's own
        databases = influx.list_databases(live_stack)
        assert doomed not in databases and kept in databases and live_stack.influx.database in databases
        assert not (live_stack.data_dir / "worker" / f"{doomed}-worker").exists()
        assert (live_stack.data_dir / "worker" / f"{kept}-worker").is_dir()

        refused = _prune("--prefix", live_stack.topic_prefix)
        assert refused.returncode == 1 and "refusing" in refused.stderr
    finally:
        asyncio.run(stack.delete_topics(live_stack, stack.prefixed(kept)))
        influx.drop_database(live_stack, kept)
        (live_stack.data_dir / "worker" / f"{kept}-worker").rmdir()
