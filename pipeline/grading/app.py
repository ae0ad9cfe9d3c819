"""`larder grade worker`: the Faust adapter over the pure grading fold (:mod:`pipeline.grading.evidence`).

* App id ``<topic prefix>-grading``: its own consumer group and changelog, apart from the detection worker's.
* One agent reads the alerts topic, the grade-overrides topic and the rapid-tests topic (record batches of
  contract 6 results, for the rollup's pass rate: a passing test opens no alert); all are keyed by site with
  Kafka's default partitioner and have the same partition count, so one site's records are in one partition
  number of each. Ticks on the rapid-tests topic (replay's clock) carry nothing for grading and are skipped.
* One table ``grading-state`` (bytes site id -> :func:`pipeline.grading.evidence.to_bytes`), ``key_type=bytes``,
  ``use_partitioner=True``, as many partitions as the sources: co-partitioned with them, so after a rebalance
  a worker restores exactly the sites of the partitions it now reads (docs/agents.md explains why bytes keys).
* Per record: fold; if the site's event time passed a local midnight, its daily grade record (history) goes to
  ``<prefix>.grades.v1`` and is awaited; the changed state is kept (dirty) and the record held, not acked.
* Acks never run ahead of the changelog (:mod:`pipeline.agents.faust.durable`, shared with the detection
  worker): a partition's changed states are written to the table (one changelog record batch, the local store
  once Kafka has it)
  every ``flush_interval_s`` (or ``flush_items`` records, or when the partition goes quiet), Kafka's ack of the
  batch is awaited, and only then are the held records acked (committable). A worker killed at any point
  restarts from a committed offset whose states are all in the changelog (issue 22: with Faust's
  ``table[key] = value`` the offset could be committed while the changelog write was still in Faust's buffer,
  or had failed, and the restarted worker lost the first half of the month). Faust's acks of events it skipped
  are refused (AckGate) and records it dropped are read again (Continuity). A crash re-reads records whose
  effect may already be in the table: the fold is idempotent (every fact is a min/max/latest merge), so the
  state is the same; a daily record may repeat.
* A record that is not JSON, not an alert event or override, whose key is not its site, or that sits in
  another partition than its key's (its state would live in another partition) goes to
  ``<prefix>.grading-deadletter.v1`` with the reason; so does a rapid-tests record that is not a batch, and
  each unusable item of a batch (its own bytes, with its index: the other items still count); nothing stops.

Readers (the CLI, the HTTP endpoint, the console) read the states from the table's changelog topic
(``<prefix>-grading-grading-state-changelog``, compacted, latest state per site): :mod:`pipeline.grading.store`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import faust
from faust.types import TP

from pipeline import serde
from pipeline.agents.core import counter
from pipeline.agents.faust.build import admitted, bytes_table, faust_app, own_producer, raw_topic
from pipeline.agents.faust.changelog import TableWriter
from pipeline.agents.faust.continuity import AckGate, Continuity
from pipeline.agents.faust.durable import Pending, check_continuity, gate_acks
from pipeline.contracts.records import BadRecord, read_batch
from pipeline.grading import evidence
from pipeline.grading.score import DEFAULT_WEIGHTS, Weights, daily
from pipeline.grading.topics import GradingTopics
from pipeline.partitioner import partition_for
from pipeline.producer import until_kafka_takes
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
    #: None, as the detection worker (its WorkerOptions says why: a Faust standby costs more CPU than the work).
    standby_replicas: int = 0
    #: Changed site states are written to the table (and their records acked) at most this long after the
    #: record that changed them, as the detection worker does...
    flush_interval_s: float = 2.8
    #: ...or once this many records of the partition are held...
    flush_items: int = 5_000
    #: ...or once the partition has had no record for this long.
    flush_idle_s: float = 0.5


@dataclass
class GradingStats:
    """The agent's counters, exported by `larder grade worker --metrics-port` (Prometheus:
    ``larder_grading_<name>_total``, each field's help; :mod:`pipeline.grading.metrics`)."""

    records: int = counter("Kafka records consumed (alert events, overrides, rapid-test batches)")
    folded: int = counter("records and rapid-test items that changed a site's state")
    unchanged: int = counter("records and rapid-test items that left a site's state as it was (repeats)")
    grades: int = counter("daily grade records published")
    dead_letters: int = counter("records or rapid-test items refused to the grading dead-letter topic")
    ignored_sites: int = counter("alert records of sites not in the site file (folded, graded once it names them)")
    rapid_tests: int = counter("rapid-test results read from batches")


class SiteStates:
    """Decoded site states per partition (decoding a few KB of JSON per record would cost more than the fold)
    and the ones changed since their last table write (:class:`~pipeline.agents.faust.durable.Dirty`)."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.cache: dict[int, dict[bytes, evidence.SiteEvidence]] = {}
        self.dirty: dict[int, dict[bytes, evidence.SiteEvidence]] = {}

    def get(self, partition: int, key: bytes, site_id: str) -> evidence.SiteEvidence:
        state = self.cache.get(partition, {}).get(key)
        if state is None:
            raw = self.table.get(key)
            state = evidence.from_bytes(raw) if raw else evidence.empty(site_id)
            self.cache.setdefault(partition, {})[key] = state
        return state

    def put(self, partition: int, key: bytes, state: evidence.SiteEvidence) -> None:
        self.cache.setdefault(partition, {})[key] = state
        self.dirty.setdefault(partition, {})[key] = state

    def take(self, partition: int) -> list[tuple[bytes, bytes]]:
        dirty = self.dirty.pop(partition, {})
        return [(key, evidence.to_bytes(state)) for key, state in sorted(dirty.items())]

    def partitions(self) -> set[int]:
        return set(self.cache) | set(self.dirty)

    def forget(self, partitions: Any) -> None:
        """Partitions revoked: their held records are re-read by their next owner from the committed offset, so
        their unsaved states go too; a partition that comes back is read from the (restored) table again."""
        for p in partitions:
            self.cache.pop(p, None)
            self.dirty.pop(p, None)


@dataclass
class GradingApp:
    app: faust.App
    topics: GradingTopics
    table: Any
    agent: Any
    stats: GradingStats = field(default_factory=GradingStats)
    gate: AckGate | None = None
    continuity: Continuity | None = None
    pending: Pending | None = None


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
    partitions = topics.base.partitions
    app = faust_app(aid, settings, options, data_dir, partitions)
    rapid_topic = topics.base.rapid_tests
    source_names = {topics.base.alerts, topics.overrides, rapid_topic}
    gate = gate_acks(app, source_names)
    source = raw_topic(app, topics.base.alerts, topics.overrides, rapid_topic, partitions=partitions)
    table = bytes_table(app, TABLE, partitions)
    # One idempotent acks=all producer for the daily grades, the dead letters and the changelog batches.
    producer = own_producer(app, settings)

    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        async def once() -> None:
            await (await producer.send_one(topic, key, value))

        await until_kafka_takes(once, f"a record for {topic}")

    states = SiteStates(table)
    pending = Pending(TableWriter(table, producer.send), gate=gate)
    continuity = Continuity(seeks=gate.seeks, held=pending.holds)
    gapp = GradingApp(app, topics, table, None, gate=gate, continuity=continuity, pending=pending)
    stats = gapp.stats
    # One lock for the agent, the flush timer and the rebalance handlers: a record's read-fold-write of its
    # site's state must not interleave with a release or a revocation of the same partition.
    lock = asyncio.Lock()

    def owned() -> list[TP]:
        return sorted(tp for tp in app.assignor.assigned_actives() if tp.topic in source_names)

    async def on_revoked(sender: Any, revoked: set[TP], *_: Any, **__: Any) -> None:
        async with lock:
            gone = sorted({tp.partition for tp in revoked if tp.topic in source_names})
            continuity.forget(tp for tp in revoked if tp.topic in source_names)
            states.forget(gone)
            pending.drop(gone)
            pending.writer.drop(gone)

    async def on_rebalanced(sender: Any, *_: Any, **__: Any) -> None:
        async with lock:
            # A record buffered before a revocation can reach the agent after it and re-populate the cache of a
            # partition no longer owned; were it assigned back later, those stale states would be used.
            gone = sorted(states.partitions() - {tp.partition for tp in owned()})
            states.forget(gone)
            pending.drop(gone)
            pending.writer.drop(gone)
        continuity.suspects.clear()

    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    app.on_rebalance_complete.connect(on_rebalanced)  # type: ignore[arg-type]

    async def dead(msg: Any, reason: str, item: int | None = None, value: bytes | None = None) -> None:
        """``item``: the index of an unusable item of a batch record, whose own bytes are ``value``."""
        stats.dead_letters += 1
        record: dict[str, Any] = {
            "v": 1,
            "source_topic": msg.topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "reason": reason,
            "key_b64": base64.b64encode(msg.key or b"").decode(),
            "value_b64": base64.b64encode(msg.value if value is None else value).decode(),
        }
        if item is not None:
            record["item"] = item
        await send(topics.deadletter, msg.key, serde.dumps(record))

    async def on_rapid_tests(event: Any) -> None:
        """A rapid-tests record batch: each item folded into its own site's state (a batch is one instrument's,
        so one site's, but only the partition is promised)."""
        msg = event.message
        partition = msg.partition
        try:
            batch = read_batch(event.value, "rapid_tests")
        except BadRecord as exc:
            await dead(msg, f"{exc.code}: {exc}"[:500])
            return
        for index, item in enumerate(batch.items):  # a tick has none
            try:
                if not isinstance(item, dict):
                    raise ValueError("item is not an object")
                site_id = item.get("site")
                if not isinstance(site_id, str) or not site_id:
                    raise ValueError(f"item without a site: {site_id!r}")
                if partition_for(site_id, partitions) != partition:
                    raise ValueError(f"site {site_id!r} belongs in partition {partition_for(site_id, partitions)}")
                key = site_id.encode()
                state = states.get(partition, key, site_id)
                new = evidence.fold_rapid_test(state, item)
            except Exception as exc:  # one bad item costs only itself
                await dead(msg, f"{type(exc).__name__}: {exc}"[:500], index, serde.dumps(item))
                continue
            stats.rapid_tests += 1
            if new is state:
                stats.unchanged += 1
            else:
                stats.folded += 1
                states.put(partition, key, new)

    async def on_event(event: Any) -> None:
        msg = event.message
        partition = msg.partition
        stats.records += 1
        if msg.topic == rapid_topic:
            await on_rapid_tests(event)
            return
        try:
            doc = serde.loads(event.value)
            site_id = doc["site"]
            if not isinstance(site_id, str) or (event.key or b"") != site_id.encode():
                raise ValueError(f"record key {event.key!r} is not its site {site_id!r}")
            if partition_for(site_id, partitions) != partition:
                raise ValueError(f"site {site_id!r} belongs in partition {partition_for(site_id, partitions)}")
            state = states.get(partition, event.key, site_id)
            new = evidence.fold(state, doc)
        except Exception as exc:  # bad input: dead-lettered with the reason, never a crash
            await dead(msg, f"{type(exc).__name__}: {exc}"[:500])
            return
        site = cfg.sites.get(site_id)
        if site is None:
            stats.ignored_sites += 1  # an alert of a site not in this site file: kept, graded once it is
        else:
            new, grades = daily(new, site, weights)
            for g in grades:
                # Awaited before the state that records this day as graded is written.
                await send(topics.grades, event.key, g.model_dump_json().encode())
                stats.grades += 1
        if new is state:
            stats.unchanged += 1
            return
        stats.folded += 1
        states.put(partition, event.key, new)

    async def agent(stream: Any) -> None:
        async for event in admitted(stream, app, pending, continuity):
            msg = event.message
            async with lock:
                await on_event(event)
                due = pending.hold(
                    msg.partition,
                    event,
                    1,
                    flush_interval_s=options.flush_interval_s,
                    flush_items=options.flush_items,
                )
                if due:
                    await pending.release(states, msg.partition)

    gapp.agent = app.agent(source, name="grading-agent")(agent)

    async def flush_idle() -> None:
        """Release partitions that went quiet or waited long enough: the agent releases only when a record
        arrives, so an idle partition would otherwise never be written nor committed."""
        if app.rebalancing or not app.consumer:
            return  # revoked partitions' held records are re-read by their next owner
        async with lock:
            for partition in pending.due(idle_s=options.flush_idle_s, interval_s=options.flush_interval_s):
                await pending.release(states, partition)

    period = max(0.5, min(options.flush_idle_s, options.flush_interval_s) / 2)
    app.timer(period, name="grading-flush-idle")(flush_idle)

    async def watch_continuity() -> None:
        await check_continuity(app, [(continuity, owned)])

    app.timer(1.0, name="grading-continuity")(watch_continuity)

    return gapp
