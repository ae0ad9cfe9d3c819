"""`larder grade worker`: the Faust adapter over the pure grading fold (:mod:`pipeline.grading.evidence`).

* App id ``<topic prefix>-grading``: its own consumer group and changelog, apart from the detection worker's.
* One agent reads the alerts topic and the grade-overrides topic; both are keyed by site with Kafka's default
  partitioner and have the same partition count, so one site's records are in one partition number of each.
* One table ``grading-state`` (bytes site id -> :func:`pipeline.grading.evidence.to_bytes`), ``key_type=bytes``,
  ``use_partitioner=True``, as many partitions as the sources: co-partitioned with them, so after a rebalance
  a worker restores exactly the sites of the partitions it now reads (docs/agents.md explains why bytes keys).
* Per record: fold; if the site's event time passed a local midnight, its daily grade record (history) goes to
  ``<prefix>.grades.v1`` and is awaited; then the table is written. Offsets are committed by Faust after the
  record was processed, so a crash re-reads records whose effect may already be in the table: the fold is
  idempotent (every fact is a min/max/latest merge), so the state is the same; a daily record may repeat.
* A record that is not JSON, not an alert event or override, or whose key is not its site (its state would
  live in another partition) goes to ``<prefix>.grading-deadletter.v1`` with the reason; nothing stops.

Readers (the CLI, the HTTP endpoint, the console) read the states from the table's changelog topic
(``<prefix>-grading-grading-state-changelog``, compacted, latest state per site): :mod:`pipeline.grading.store`.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import faust
from aiokafka import AIOKafkaProducer

from pipeline import serde
from pipeline.grading import evidence
from pipeline.grading.score import DEFAULT_WEIGHTS, Weights, daily
from pipeline.grading.topics import GradingTopics
from pipeline.producer import durable_producer, until_kafka_takes
from pipeline.settings import Settings
from pipeline.siteconfig import SiteConfig

log = logging.getLogger(__name__)

TABLE = "grading-state"


@dataclass(frozen=True)
class GradingOptions:
    store: Literal["rocksdb", "memory"] = "rocksdb"
    data_dir: Path | None = None
    commit_interval_s: float = 2.8
    session_timeout_s: float = 30.0
    heartbeat_interval_s: float = 3.0
    standby_replicas: int = 1


@dataclass
class GradingStats:
    records: int = 0
    folded: int = 0
    unchanged: int = 0
    grades: int = 0
    dead_letters: int = 0
    ignored_sites: int = 0


@dataclass
class GradingApp:
    app: faust.App
    topics: GradingTopics
    table: Any
    agent: Any
    stats: GradingStats = field(default_factory=GradingStats)


def app_id(topics: GradingTopics) -> str:
    return f"{topics.base.prefix}-grading"


def make_app(
    settings: Settings,
    topics: GradingTopics,
    cfg: SiteConfig,
    options: GradingOptions | None = None,
    weights: Weights = DEFAULT_WEIGHTS,
) -> GradingApp:
    options = options or GradingOptions()
    aid = app_id(topics)
    data_dir = options.data_dir or settings.data_dir / "grading" / aid
    data_dir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = faust.App(
        aid,
        broker=[f"kafka://{b.strip()}" for b in settings.kafka.bootstrap_servers.split(",")],
        store=f"{options.store}://",
        datadir=str(data_dir),
        topic_partitions=topics.base.partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        broker_commit_interval=options.commit_interval_s,
        broker_session_timeout=options.session_timeout_s,
        broker_heartbeat_interval=options.heartbeat_interval_s,
        table_standby_replicas=options.standby_replicas,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    source = app.topic(
        topics.base.alerts,
        topics.overrides,
        partitions=topics.base.partitions,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    table = app.Table(
        TABLE,
        default=None,
        key_type=bytes,
        value_type=bytes,
        partitions=topics.base.partitions,
        use_partitioner=True,
    )
    producer: dict[str, AIOKafkaProducer] = {}

    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        if "p" not in producer:
            producer["p"] = durable_producer(settings)
            await producer["p"].start()

        async def once() -> None:
            await (await producer["p"].send(topic, value, key=key))

        await until_kafka_takes(once, f"a record for {topic}")

    async def stop_producer(sender: Any, **_: Any) -> None:
        if "p" in producer:
            await producer.pop("p").stop()

    app.on_before_shutdown.connect(stop_producer)  # type: ignore[arg-type]
    gapp = GradingApp(app, topics, table, None)
    stats = gapp.stats
    # Decoded states of the sites this worker has touched since its last rebalance: decoding a site's state
    # (a few KB of JSON) per record would cost more than the fold. Cleared whenever partitions move, so a site
    # whose partition comes back is read from the (restored) table again, never from a stale copy.
    cache: dict[bytes, evidence.SiteEvidence] = {}

    async def forget(sender: Any, *_: Any, **__: Any) -> None:
        cache.clear()

    app.on_partitions_revoked.connect(forget)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(forget)  # type: ignore[arg-type]
    app.on_rebalance_complete.connect(forget)  # type: ignore[arg-type]

    async def dead(msg: Any, reason: str) -> None:
        stats.dead_letters += 1
        record = {
            "v": 1,
            "source_topic": msg.topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "reason": reason,
            "key_b64": base64.b64encode(msg.key or b"").decode(),
            "value_b64": base64.b64encode(msg.value or b"").decode(),
        }
        await send(topics.deadletter, msg.key, serde.dumps(record))

    async def agent(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            stats.records += 1
            try:
                doc = serde.loads(event.value)
                site_id = doc["site"]
                if not isinstance(site_id, str) or (event.key or b"") != site_id.encode():
                    raise ValueError(f"record key {event.key!r} is not its site {site_id!r}")
                state = cache.get(event.key)
                if state is None:
                    raw = table.get(event.key)
                    state = evidence.from_bytes(raw) if raw else evidence.empty(site_id)
                new = evidence.fold(state, doc)
            except Exception as exc:  # bad input: dead-lettered with the reason, never a crash
                await dead(msg, f"{type(exc).__name__}: {exc}"[:500])
                continue
            site = cfg.sites.get(site_id)
            if site is None:
                stats.ignored_sites += 1  # an alert of a site not in this site file: kept, graded once it is
            else:
                new, grades = daily(new, site, weights)
                for g in grades:
                    await send(topics.grades, event.key, g.model_dump_json().encode())
                    stats.grades += 1
            if new is state:
                stats.unchanged += 1
                cache[event.key] = state
                continue
            stats.folded += 1
            table[event.key] = evidence.to_bytes(new)
            cache[event.key] = new

    gapp.agent = app.agent(source, name="grading-agent")(agent)
    return gapp
