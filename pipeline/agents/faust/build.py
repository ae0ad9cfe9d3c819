"""What both Faust apps of Larder, the detection worker (:mod:`pipeline.agents.faust.app`) and the grading worker
(:mod:`pipeline.grading.app`), are built from, so that the settings their guarantees rest on are set in one place:

* :func:`faust_app`: raw bytes in and out, manual acks (no waiting for empty streams), no web server, no
  autodiscovery, a new group starting at the earliest offsets, its data folder made with its parents, and
  messages handed to the streams without Faust's four tasks a message when nothing can block
  (:mod:`pipeline.agents.faust.delivery`);
* :func:`raw_topic` / :func:`bytes_table`: sources read as bytes, and tables of bytes keyed by the subject id
  with ``use_partitioner=True`` and the source's partition count, i.e. co-partitioned with the source
  (docs/agents.md says why the keys are bytes);
* :func:`own_producer`: the app's idempotent producer (outputs, dead letters, changelog batches), started with
  the app and stopped after its consumer;
* :func:`admitted`: the source's events that :class:`~pipeline.agents.faust.continuity.Continuity` lets
  through, read with a manual-ack stream whose acks go to :class:`~pipeline.agents.faust.durable.Pending`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, Protocol

import faust

from pipeline.agents.faust.changelog import KafkaBatches
from pipeline.agents.faust.continuity import Continuity
from pipeline.agents.faust.delivery import quick_deliveries
from pipeline.agents.faust.durable import Pending, clamp_recovery_seeks, commit_past_repeated_acks
from pipeline.settings import Settings

#: Bytes a partition per fetch (Faust's ``consumer_max_fetch_size``, aiokafka's ``max_partition_fetch_bytes``).
FETCH_BYTES = 4 * 1024 * 1024


class AppOptions(Protocol):
    """The tuning every app has (``WorkerOptions``, ``GradingOptions``)."""

    @property
    def store(self) -> Literal["rocksdb", "memory"]: ...
    @property
    def commit_interval_s(self) -> float: ...
    @property
    def session_timeout_s(self) -> float: ...
    @property
    def heartbeat_interval_s(self) -> float: ...
    @property
    def standby_replicas(self) -> int: ...


def faust_app(
    app_id: str, settings: Settings, options: AppOptions, data_dir: Path, partitions: int, **extra: Any
) -> faust.App:
    """The app (not started); ``extra``: further ``faust.App`` settings of this app only."""
    # Faust creates its datadir without parents: on a fresh machine nothing above it exists yet.
    data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=[f"kafka://{b.strip()}" for b in settings.kafka.bootstrap_servers.split(",")],
        store=f"{options.store}://",
        datadir=str(data_dir),
        topic_partitions=partitions,
        # The tables' changelog topics Faust creates get the same copies as Larder's own topics.
        topic_replication_factor=settings.kafka.replication_factor,
        broker_commit_interval=options.commit_interval_s,
        broker_session_timeout=options.session_timeout_s,
        broker_heartbeat_interval=options.heartbeat_interval_s,
        table_standby_replicas=options.standby_replicas,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        # Records are acked only once their states are in the changelog (coalesced writes): waiting for "all
        # streams empty" at a rebalance or stop would wait for a release that needs the next record or timer.
        # Unacked ones are re-read.
        stream_wait_empty=False,
        # aiokafka keeps one fetch a partition ahead, and its consumer thread waits for the GIL the agent holds
        # at every step of a fetch: with Faust's 1 MB a partition the agent sat idle for the next fetch 1-1.6 s
        # of a 7-9 s backlog (BENCHMARKS, issue 24). 4 MB a partition (still within the fetch's 50 MB) lets a
        # backlog, e.g. after an outage, arrive in a quarter of the round trips; live fetches are small anyway.
        consumer_max_fetch_size=FETCH_BYTES,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        **extra,
    )
    clamp_recovery_seeks(app)
    commit_past_repeated_acks()
    quick_deliveries(app)
    return app


def raw_topic(app: faust.App, *names: str, partitions: int) -> Any:
    """A source of ``names`` read as raw bytes (keys and values)."""
    return app.topic(
        *names,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )


def bytes_table(app: faust.App, name: str, partitions: int) -> Any:
    """A changelogged table bytes -> bytes, co-partitioned with a source of ``partitions`` partitions keyed by
    the same ids: the changelog partition is the key's under Kafka's default partitioner."""
    return app.Table(
        name,
        default=None,
        key_type=bytes,
        value_type=bytes,
        partitions=partitions,
        use_partitioner=True,
    )


def own_producer(app: faust.App, settings: Settings, *, start: bool = True) -> KafkaBatches:
    """The app's own producer, stopped after the consumer; ``start``: started with the app."""
    producer = KafkaBatches(settings)

    async def stop_producer(sender: Any, **_: Any) -> None:
        await producer.stop()  # after the consumer stopped: nothing writes any more

    app.on_before_shutdown.connect(stop_producer)  # type: ignore[arg-type]

    async def start_producer() -> None:
        # At start-up, not on the first output: connecting and the idempotent producer's id request take ~1 s,
        # which the first output would otherwise wait for.
        await producer.start()

    if start:
        app.task(start_producer)
    return producer


async def admitted(stream: Any, app: faust.App, pending: Pending, continuity: Continuity) -> AsyncIterator[Any]:
    """The events of an agent's ``stream`` in offset order, read with manual acks (``pending`` acks them once
    their states are in the changelog). An event after records that never arrived is skipped (not acked) and
    its partition read again from the first missing one. ``continuity.idle_since`` is the time the agent
    started waiting for its next event (``None`` while it handles one). A partition's first event since its
    assignment is checked against the group's committed offset (:meth:`Continuity.start`)."""
    manual = stream.noack()
    pending.ack = manual.ack
    continuity.idle_since = time.monotonic()
    async for event in manual.events():
        continuity.idle_since, continuity.busy_since = None, time.monotonic()
        message = event.message
        if not continuity.start(app.consumer, message.tp, message.generation_id):
            continuity.idle_since = time.monotonic()
            continue  # delivered before Faust's seek to the committed offsets: read again from there
        rewind_to = continuity.admit(message.tp, message.offset)
        if rewind_to is not None:
            # Records before this one never arrived: skip it (not acked) and read them all again in order.
            if rewind_to >= 0:
                await continuity.rewind(app.consumer, message.tp, rewind_to, arrived=message.offset)
        else:
            yield event
        continuity.idle_since = time.monotonic()
