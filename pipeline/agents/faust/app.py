"""The Faust app of `larder worker`: one agent and one changelogged table per concern, thin over :class:`Runner`.

Layout (see ``docs/agents.md``):

* app id ``<topic prefix>-worker``: the consumer group and the changelog topic names derive from the topic
  prefix, so tests and deployments with different prefixes never share state;
* per concern (devices: cold chain + liveness; kitchens) an agent on its record-batch topic and a table
  ``<concern>-state`` (bytes -> bytes, ``use_partitioner=True``, as many partitions as the source), keyed by
  the subject id, co-partitioned with the source by Kafka's default partitioner;
* outputs: alerts to ``Topics.alerts`` and annotations to ``Topics.annotations`` (key = site, value = the
  model's JSON), bad items to ``Topics.deadletter``;
* timers: live, a 1 s ``app.timer`` publishes a ``tick`` record into every source partition this worker owns;
  replay (``--clock replay``), only the replay tool's ticks count. Either way timers run when the agent reads
  a tick, in stream context and in log order, so a re-run after a crash re-derives the same outputs.
* coalesced table writes: a record is acked only once its changed states are in the table (changelog, then
  local store, written in bulk by :mod:`pipeline.agents.faust.changelog`); a partition's held records are released
  by the agent on a later record once ``flush_interval_s`` passed, or by the ``larder-flush-idle`` timer when
  the partition has gone quiet (otherwise an idle input would never be committed).

Processing guarantee: at-least-once with deterministic alert ids and ordered durability: a record's outputs
are awaited (acked by Kafka) *before* the states they came from are written to the table, and the changelog
batches are awaited before the records that changed those states are acked (committable). A crash can
therefore repeat an output (same alert id and state, consumers de-duplicate by id) but never lose one, and
never restore a state that claims an output was sent when it was not.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import faust
from aiokafka.errors import KafkaError
from faust.types import TP

from pipeline.agents.core import Concern, Outputs, Result, Runner, Settled, Stats, encode_output, settled
from pipeline.agents.faust.build import admitted, bytes_table, faust_app, own_producer, raw_topic
from pipeline.agents.faust.changelog import KafkaBatches, SendBatch, TableWriter
from pipeline.agents.faust.continuity import AckGate, Continuity
from pipeline.agents.faust.durable import Pending, check_continuity, gate_acks
from pipeline.clock import Clock, WallClock
from pipeline.contracts.records import encode, tick_value
from pipeline.producer import until_kafka_takes
from pipeline.settings import Settings
from pipeline.topics import Topics

log = logging.getLogger(__name__)

ClockMode = Literal["live", "replay"]


@dataclass(frozen=True)
class WorkerOptions:
    """Worker tuning; the defaults are production's, tests shorten the intervals."""

    store: Literal["rocksdb", "memory"] = "rocksdb"
    #: Local table files; defaults to ``settings.data_dir / "worker" / <app id>``. Two workers of one app on one
    #: host need two.
    data_dir: Path | None = None
    clock: ClockMode = "live"
    tick_interval_s: float = 1.0
    commit_interval_s: float = 2.8
    commit_every: int = 10_000
    #: A killed worker's partitions wait this long before the group moves them (a restarted worker's join waits
    #: for the dead member to expire): 30 s made every alert 30 s late after a kill -9 (issue 27). 6 s is Kafka's
    #: smallest by default (group.min.session.timeout.ms); heartbeats a quarter of it.
    session_timeout_s: float = 6.0
    heartbeat_interval_s: float = 1.5
    #: Static group membership (KIP-345): a worker restarted with the same id (host + data folder, which no two
    #: workers share) takes its partitions back at once instead of waiting for its dead self's session to end.
    static_membership: bool = True
    #: Warm copies of each table partition on other workers. None by default, as in Kafka Streams: with
    #: faust-streaming 0.15.3 a standby reads its changelog as one Faust event per record, and a group of two
    #: workers spent 3x the CPU per reading of one worker with them (34 % of its efficiency), 97 % without
    #: (`benchmarks.scaleout --standby-replicas 0,1`, BENCHMARKS.md). Without, a failed worker's partitions are
    #: restored from their changelog by the worker that takes them over.
    standby_replicas: int = 0
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    #: Changed states are written to the table at most this long after the record that changed them (the
    #: commit interval: Kafka Streams likewise flushes its caching stores at commit time)...
    flush_interval_s: float = 2.8
    #: ...or once this many readings/events of the partition are held, whichever comes first (bounds the work
    #: read again after a crash; counted in items, not records, so small record batches from a bridge at a
    #: low linger do not multiply the table writes)...
    flush_items: int = 20_000
    #: ...or once the partition has had no record for this long (an idle input is committed promptly).
    flush_idle_s: float = 0.5
    #: The clock of the ``larder_worker_busy_*`` metrics (:class:`~pipeline.agents.core.Stats`): wall time, or the
    #: main thread's CPU time (exact while the consumer thread waits for the interpreter, a system call a read).
    busy_clock: Literal["wall", "cpu"] = "wall"


@dataclass
class KafkaOutputs:
    """Sends a record's outputs and dead letters; :meth:`send` hands them to the producer, the :data:`Settled`
    it returns waits until Kafka has acknowledged all of them (sending the whole set again after a failure)."""

    producer: KafkaBatches
    topics: Topics

    async def send(self, result: Result) -> Settled:
        if not result.outputs and not result.dead_letters:
            return settled
        t = self.topics
        names = {"alerts": t.alerts, "annotations": t.annotations}
        keyed: dict[str, list[tuple[bytes, bytes]]] = {}
        for which, key, value in map(encode_output, result.outputs):
            keyed.setdefault(names[which], []).append((key, value))
        letters = [encode(d) for d in result.dead_letters]
        what = f"{len(result.outputs) + len(letters)} output(s)"

        async def hand_over() -> list[asyncio.Future[Any]]:
            # The outputs in one record batch per partition (an alert storm is thousands of them); dead
            # letters, keyless and rare, one record each.
            acks: list[asyncio.Future[Any]] = []
            for topic, pairs in keyed.items():
                acks += await self.producer.send_keyed(topic, pairs)
            for value in letters:
                acks.append(await self.producer.send_one(t.deadletter, None, value))
            return acks

        async def send_all() -> None:
            await asyncio.gather(*await hand_over())

        async def again() -> None:
            # The runner already holds the states that produced them: giving up (the agent restarting past this
            # record) would lose the alerts for good. A repeat is harmless: consumers de-duplicate by id.
            await until_kafka_takes(send_all, what)

        try:
            acks = await hand_over()
        except KafkaError as exc:
            log.warning("Kafka did not take %s (%s); sending again", what, exc)
            return again
        for ack in acks:
            ack.add_done_callback(_retrieved)  # a failure is handled by ``first_time``, or nobody waits

        async def first_time() -> None:
            try:
                await asyncio.gather(*acks)
            except KafkaError as exc:
                log.warning("Kafka did not take %s (%s); sending again", what, exc)
                await again()

        return first_time


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


@dataclass
class WorkerApp:
    app: faust.App
    topics: Topics
    options: WorkerOptions
    runners: dict[str, Runner[Any, Any]]
    agents: dict[str, Any]
    tables: dict[str, Any]
    sources: dict[str, Any]
    gate: AckGate | None = None
    continuities: dict[str, Continuity] = field(default_factory=dict)
    #: Per concern, its records held until their states are in the table (:class:`Pending`).
    pendings: dict[str, Pending] = field(default_factory=dict)

    def stats(self) -> dict[str, Stats]:
        return {name: r.stats for name, r in self.runners.items()}


ConcernFactory = Callable[[Settings], Concern[Any, Any]]


def _instance_id(app_id: str, data_dir: Path) -> str:
    where = f"{socket.gethostname()}:{data_dir.resolve()}"
    return f"{app_id}-{hashlib.sha1(where.encode()).hexdigest()[:12]}"


def make_app(
    settings: Settings,
    topics: Topics,
    concerns: Iterable[Concern[Any, Any]],
    options: WorkerOptions | None = None,
    *,
    outputs: Outputs | None = None,
    clock: Clock | None = None,
    announce: Callable[[str], None] | None = None,
    changelog: SendBatch | None = None,
) -> WorkerApp:
    """Build the Faust app (not started). ``outputs`` defaults to Kafka; ``clock`` to wall time (live ticks);
    ``announce`` receives one line per completed rebalance (the partitions this worker now owns);
    ``changelog`` sends the tables' changelog batches (default: Kafka, :class:`KafkaBatches`)."""
    options = options or WorkerOptions()
    app = _faust_app(settings, topics, options)
    gate = gate_acks(app, _sources(topics).values())
    producer = own_producer(app, settings, start=outputs is None)
    wiring = _Wiring(app, topics, options, gate, outputs or KafkaOutputs(producer, topics), changelog or producer.send)
    for concern in concerns:
        wiring.add(concern)
    wiring.follow_rebalances(announce)
    wiring.start_timers(clock or WallClock(), producer)
    return WorkerApp(
        app,
        topics,
        options,
        wiring.runners,
        wiring.agents,
        wiring.tables,
        wiring.sources,
        gate,
        wiring.continuities,
        wiring.pendings,
    )


def _faust_app(settings: Settings, topics: Topics, options: WorkerOptions) -> faust.App:
    """The Faust app itself: app id ``<topic prefix>-worker`` (:func:`~pipeline.agents.faust.build.faust_app`)."""
    app_id = f"{topics.prefix}-worker"
    # Faust names a table's RocksDB files after the table alone (``devices-state-<partition>.db``), not the app:
    # one folder per app id, or a worker with another topic prefix would open this one's files (and Faust
    # refuses a persisted offset beyond its own changelog's end).
    data_dir = options.data_dir or settings.data_dir / "worker" / app_id
    return faust_app(
        app_id,
        settings,
        options,
        data_dir,
        topics.partitions,
        processing_guarantee=options.processing_guarantee,
        broker_commit_every=options.commit_every,
        consumer_group_instance_id=_instance_id(app_id, data_dir) if options.static_membership else None,
    )


def _sources(topics: Topics) -> dict[str, str]:
    """Each concern kind's record-batch topic."""
    return {
        "readings": topics.readings,
        "kitchen_events": topics.kitchen_events,
        "rapid_tests": topics.rapid_tests,
    }


class _Wiring:
    """What the agents, the rebalance handlers and the timers of one app share: per concern its runner, table,
    source topic, held records (:class:`Pending`) and continuity watch, and one lock for all of them."""

    def __init__(
        self, app: faust.App, topics: Topics, options: WorkerOptions, gate: AckGate, sink: Outputs, changelog: SendBatch
    ) -> None:
        self.app = app
        self.topics = topics
        self.options = options
        self.gate = gate
        self.sink = sink
        self.changelog = changelog
        # One lock for all agents and rebalance handlers: a record's read-modify-publish-write of its subjects'
        # states must not interleave with another coroutine touching the same cache.
        self.lock = asyncio.Lock()
        self.runners: dict[str, Runner[Any, Any]] = {}
        self.agents: dict[str, Any] = {}
        self.tables: dict[str, Any] = {}
        self.sources: dict[str, Any] = {}
        self.source_names: dict[str, str] = {}
        self.pendings: dict[str, Pending] = {}
        self.continuities: dict[str, Continuity] = {}

    def add(self, concern: Concern[Any, Any]) -> None:
        """An agent on the concern's record-batch topic and its changelogged table (bytes -> bytes)."""
        app, topics = self.app, self.topics
        source_name = _sources(topics)[concern.kind]
        source = raw_topic(app, source_name, partitions=topics.partitions)
        table = bytes_table(app, f"{concern.name}-state", topics.partitions)
        clock = time.thread_time if self.options.busy_clock == "cpu" else time.perf_counter
        runner: Runner[Any, Any] = Runner(concern, table, topics.partitions, arrived_ms=_arrived_ms, busy_clock=clock)
        pending = self.pendings[concern.name] = Pending(
            TableWriter(table, self.changelog, stats=runner.stats, clock=clock), gate=self.gate
        )
        self.runners[concern.name] = runner
        self.tables[concern.name] = table
        self.sources[concern.name] = source
        self.source_names[concern.name] = source_name
        continuity = self.continuities[concern.name] = Continuity(seeks=self.gate.seeks, held=pending.holds)
        body = _agent_body(app, source_name, runner, table, self.sink, self.lock, pending, self.options, continuity)
        self.agents[concern.name] = app.agent(source, name=f"{concern.name}-agent")(body)

    def owned(self, name: str) -> list[TP]:
        """The active partitions of concern ``name``'s source topic this worker is assigned now."""
        return sorted(tp for tp in self.app.assignor.assigned_actives() if tp.topic == self.source_names[name])

    # -- rebalances ------------------------------------------------------------------------------------------

    def follow_rebalances(self, announce: Callable[[str], None] | None) -> None:
        self._announce = announce
        self.app.on_partitions_revoked.connect(self.on_revoked)  # type: ignore[arg-type]
        self.app.on_rebalance_complete.connect(self.on_rebalanced)  # type: ignore[arg-type]

    async def on_revoked(self, sender: Any, revoked: set[TP], *_: Any, **__: Any) -> None:
        async with self.lock:
            for name, runner in self.runners.items():
                gone = [tp.partition for tp in revoked if tp.topic == self.source_names[name]]
                self.continuities[name].forget(tp for tp in revoked if tp.topic == self.source_names[name])
                runner.forget(gone)
                self.pendings[name].drop(gone)
                self.pendings[name].writer.drop(gone)

    async def on_rebalanced(self, sender: Any, *_: Any, **__: Any) -> None:
        # After table recovery, before the streams resume: the line operators (and tests) wait for.
        owned = {name: [tp.partition for tp in self.owned(name)] for name in self.runners}
        async with self.lock:
            for name, runner in self.runners.items():
                # A record buffered before a revocation can still reach the agent after it and re-populate the
                # cache of a partition this worker no longer owns; were that partition assigned back later
                # without a revocation in between, those stale states would be used instead of the table's.
                gone = runner.held_partitions() - set(owned[name])
                runner.forget(gone)
                self.pendings[name].drop(gone)
                self.pendings[name].writer.drop(list(gone))
        # Stalls are measured from here: before, Faust was holding deliveries back on purpose (recovery).
        now = time.monotonic()
        for continuity in self.continuities.values():
            continuity.suspects.clear()
            if continuity.idle_since is not None:
                continuity.idle_since = now
        if self._announce is not None:
            self._announce(
                "assigned " + " ".join(f"{name}={','.join(map(str, ps)) or '-'}" for name, ps in owned.items())
            )

    # -- timers ----------------------------------------------------------------------------------------------

    def start_timers(self, clock: Clock, producer: KafkaBatches) -> None:
        options = self.options
        # Not faster than 0.5 s: a release can take a few hundred ms (thousands of states, then Kafka's ack),
        # and Faust warns about a timer that outruns its period.
        period = max(0.5, min(options.flush_idle_s, options.flush_interval_s) / 2)
        self.app.timer(period, name="larder-flush-idle")(self.flush_idle)
        self.app.timer(1.0, name="larder-continuity")(self.watch_continuity)
        if options.clock == "live":
            self._clock, self._producer = clock, producer
            self.app.timer(options.tick_interval_s, name="larder-live-clock")(self.live_clock)

    async def flush_idle(self) -> None:
        """Release the partitions that went quiet (``flush_idle_s``) or whose held records have waited
        ``flush_interval_s``: the agents release only when a record arrives, so without this an idle partition
        (replay finished, or nothing but ticks) would never get its states written nor its offset committed."""
        app, options = self.app, self.options
        if app.rebalancing or not app.consumer:
            return  # revoked partitions' held records are re-read by their next owner; nothing to save
        now = time.monotonic()
        async with self.lock:
            for name, pending in self.pendings.items():
                for partition in pending.due(idle_s=options.flush_idle_s, interval_s=options.flush_interval_s, now=now):
                    await pending.release(self.runners[name], partition)
                # What the agent flushed without waiting: acked here once Kafka has it, waited for when it has
                # taken longer than an interval (a failed batch is resent by that wait).
                await pending.settle_flushed(older_than_s=options.flush_interval_s, now=now)

    async def watch_continuity(self) -> None:
        """Rewind partitions whose fetch position ran past records the agent never received (see
        :mod:`pipeline.agents.faust.continuity`), once the agent has waited ``stall_s`` for its next event."""
        await check_continuity(
            self.app, [(c, functools.partial(self.owned, name)) for name, c in self.continuities.items()]
        )

    async def live_clock(self) -> None:
        """Publish the wall clock into every owned source partition; the agents run timers on reading it.
        All partitions' ticks go out at once and are not awaited: the next tick supersedes a lost one."""
        if self.app.rebalancing or not self.app.consumer:
            return
        record = tick_value(self._clock.now_ms())
        for name in self.sources:
            for tp in self.owned(name):
                await self._producer.send_to(self.source_names[name], tp.partition, record)


def _arrived_ms() -> int:
    return WallClock().now_ms()


def _agent_body(
    app: faust.App,
    source_name: str,
    runner: Runner[Any, Any],
    table: Any,
    sink: Outputs,
    lock: asyncio.Lock,
    pending: Pending,
    options: WorkerOptions,
    continuity: Continuity,
) -> Callable[[Any], Any]:
    async def agent(stream: Any) -> None:
        async for event in admitted(stream, app, pending, continuity):
            message = event.message
            partition = message.partition
            async with lock:
                if not runner.loaded(partition):
                    # First record of this partition since the assignment: decode its stored states once, so
                    # ticks reach subjects that have gone silent. This partition only: another newly assigned
                    # one may still be recovering its table (a record buffered before the rebalance can arrive
                    # meanwhile), and loading it now would mark half-restored states as complete.
                    n = runner.load(table.items(), {partition})
                    log.info("%s: loaded %d states for partition %d", source_name, n, partition)
                items_before = runner.stats.items
                result = runner.on_record(event.value, partition)
                # The previous record's outputs were handed to Kafka before this record was processed; they
                # must be in Kafka (and their subjects' states written) before this one's are sent, so that
                # outputs keep their order even when a send fails and is repeated.
                await pending.settle_sent()
                start = runner.busy_clock()
                sent = await sink.send(result)  # hands them over; suspends only when the producer's buffer is full
                runner.stats.busy_outputs_seconds += runner.busy_clock() - start
                if result.outputs or result.dead_letters:
                    # The subjects that just produced outputs are written as soon as Kafka has the outputs,
                    # ahead of the ack: the only window where a crash repeats an output is until these writes
                    # reach the changelog. Their states are taken now (later records change them again). A
                    # state ahead of the committed offset is safe: the records read again are exact duplicates
                    # to it (seq / event_id de-dup) and ticks before its frontier do nothing.
                    subjects = {o.subject.encode() for o in result.outputs}
                    pending.sent(partition, sent, runner.take(partition, subjects) if subjects else [])
                    # aiokafka's sender is a task of this loop: left alone it sends these outputs only when the
                    # agent next waits, i.e. after the next record, which then waits a whole produce round trip
                    # in settle_sent(). Three turns of the loop (data waiter, sender, request) put them on the
                    # wire now, and Kafka's ack arrives while the next record is processed.
                    for _ in range(3):
                        await asyncio.sleep(0)
                items = runner.stats.items - items_before
                if pending.hold(
                    partition, event, items, flush_interval_s=options.flush_interval_s, flush_items=options.flush_items
                ):
                    # Coalesced: one table write per changed subject per interval, not per record batch. A
                    # partition that goes quiet is released by the ``larder-flush-idle`` timer instead. Not
                    # waiting for the changelog's ack here: the records are acked once it is in (below).
                    await pending.release(runner, partition, wait=False)
                await pending.ack_settled()

    return agent
