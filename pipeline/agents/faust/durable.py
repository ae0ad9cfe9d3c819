"""Acks that never run ahead of the changelog: what every Faust worker of Larder with a table uses.

A source record may be committed only once the state it changed is in Kafka (the table's changelog): a
worker killed after the commit and restarted elsewhere restores its table from the changelog and reads on
from the committed offset, so anything committed but not yet in the changelog is lost for good. Faust's own
``table[key] = value`` does not hold to that: the changelog message is queued in Faust's producer buffer,
the record is acked when the agent asks for the next one, and the commit's ``producer.flush()`` gives up
on the buffer after 0.1 s without a send (``ProducerBuffer.flush_atmost``) and goes on committing when a
changelog send failed (the failure only reaches a callback). Faust also acks the events its streams skip
around a rebalance (:class:`~pipeline.agents.faust.continuity.AckGate`).

So a worker here:

* reads its source with a manual-ack stream (``stream.noack()``) and installs an :class:`AckGate`
  (:func:`gate_acks`) so that only its own acks count;
* keeps changed states in a dirty set of its own (anything with :class:`Dirty`'s ``take``) and holds the
  records that changed them in :class:`Pending`;
* on :meth:`Pending.release` writes the partition's changed states with a
  :class:`~pipeline.agents.faust.changelog.TableWriter` (one changelog record batch, then the local store once
  Kafka has it), and acks the held records only once Kafka has acknowledged the batch (resending until it is
  accepted). The timer
  waits for that ack; the agent does not (``wait=False``): it goes on with the next record and acks the
  flushed ones when their batches are in (:meth:`Pending.ack_settled`), so the changelog's round trip is not
  on the hot path;
* releases when ``flush_interval_s`` has passed or enough items are held (:meth:`Pending.hold`), and from a
  timer when a partition went quiet (:meth:`Pending.due`), so an idle input is committed too;
* watches :class:`~pipeline.agents.faust.continuity.Continuity` so that records Faust dropped are read again.

Used by the detection worker (:mod:`pipeline.agents.faust.app`) and the grading worker
(:mod:`pipeline.grading.app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import faust
import faust.transport.consumer as faust_consumer
from faust.streams import _current_event
from faust.types import TP

from pipeline.agents.faust.changelog import TableWriter
from pipeline.agents.faust.consumers import on_every_consumer
from pipeline.agents.faust.continuity import AckGate, Continuity, awaiting

log = logging.getLogger(__name__)

#: How long the agent may handle one event before :func:`check_continuity` logs what it awaits.
STUCK_S = 60.0


class Dirty(Protocol):
    """Changed states not yet written to the table, per partition (the detection :class:`Runner`, the grading
    worker's site cache)."""

    def take(self, partition: int) -> list[tuple[bytes, bytes]]:
        """Remove and return the partition's changed states as (key, encoded state)."""
        ...


@dataclass
class Pending:
    """Events of a partition whose state changes are not yet in the table: acked (committable) only once they
    are, so a committed offset never runs ahead of the changelog."""

    writer: TableWriter
    events: dict[int, list[Any]] = field(default_factory=dict)
    since: dict[int, float] = field(default_factory=dict)
    #: partition -> readings/events in its held records.
    items: dict[int, int] = field(default_factory=dict)
    #: partition -> when its latest held record arrived.
    last: dict[int, float] = field(default_factory=dict)
    #: partition -> records whose states are written and whose changelog batches Kafka has not yet
    #: acknowledged: acked by :meth:`ack_settled` (or a waiting :meth:`release`) once it has.
    flushed: dict[int, list[Any]] = field(default_factory=dict)
    #: partition -> when its oldest flushed record was flushed.
    flushed_at: dict[int, float] = field(default_factory=dict)
    #: The agent's manual-ack stream's ``ack``, set when the agent starts.
    ack: Callable[[Any], Awaitable[bool]] | None = None
    gate: AckGate | None = None
    #: The last record's outputs, handed to Kafka and not yet known to be there, and the states of their
    #: subjects, written once they are: (partition, settled, states). One at a time: a record's outputs are
    #: sent only once the previous record's are in Kafka (see :meth:`sent`).
    _sent: tuple[int, Callable[[], Awaitable[None]], list[tuple[bytes, bytes]]] | None = None

    def sent(self, partition: int, settled: Callable[[], Awaitable[None]], states: list[tuple[bytes, bytes]]) -> None:
        """Outputs of ``partition`` handed to Kafka (``settled`` waits until Kafka has them) and the states of
        the subjects that produced them, to write after that. The agent goes on with the next record meanwhile
        and calls :meth:`settle_sent` before it sends more outputs."""
        assert self._sent is None, "settle_sent() before sending the next record's outputs"
        self._sent = (partition, settled, states)

    async def settle_sent(self) -> None:
        """Wait until Kafka has the last record's outputs, then write their subjects' states to the table."""
        if self._sent is None:
            return
        partition, settled, states = self._sent
        await settled()
        self._sent = None
        # The store's partition is explicit (:func:`~pipeline.agents.faust.changelog.put_all`): the current
        # event may be of another partition by now.
        await self.writer.write(partition, states, contextlib.nullcontext)

    def holds(self, partition: int) -> bool:
        """Whether records or outputs of ``partition`` wait here (not yet acked)."""
        return (
            bool(self.events.get(partition))
            or bool(self.flushed.get(partition))
            or (self._sent is not None and self._sent[0] == partition)
        )

    def hold(self, partition: int, event: Any, items: int, *, flush_interval_s: float, flush_items: int) -> bool:
        """Hold ``event`` (carrying ``items`` readings/events) until its partition is released; True when the
        partition is due now (held for ``flush_interval_s`` or ``flush_items`` items held)."""
        self.events.setdefault(partition, []).append(event)
        held = self.items[partition] = self.items.get(partition, 0) + items
        now = self.last[partition] = time.monotonic()
        started = self.since.setdefault(partition, now)
        return now - started >= flush_interval_s or held >= flush_items

    def due(self, *, idle_s: float, interval_s: float, now: float | None = None) -> list[int]:
        """The partitions that went quiet for ``idle_s`` or whose held records waited ``interval_s``."""
        now = time.monotonic() if now is None else now
        return [
            partition
            for partition, started in self.since.items()
            if now - self.last.get(partition, started) >= idle_s or now - started >= interval_s
        ]

    async def release(self, dirty: Dirty, partition: int, *, wait: bool = True) -> None:
        """Write the partition's changed states to the table and ack its held records once Kafka has them
        (call under the agent's lock): the committed offset never runs ahead of the saved states. ``wait``:
        wait for Kafka's ack here; otherwise the records are acked by a later :meth:`ack_settled`."""
        # Outputs first, then the states that produced them, then the rest: the table never holds a state whose
        # outputs Kafka might not have.
        await self.settle_sent()
        events = self.events.get(partition)
        if events:
            assert self.ack is not None, "events are held only by a running agent"
            # The RocksDB store files a write under the *current event's* partition; the agent is in stream
            # context, the idle timer is not. A held record of this very partition is the correct context.
            await self.writer.write(partition, dirty.take(partition), lambda: event_context(events[-1]))
            self.flushed.setdefault(partition, []).extend(events)
            self.flushed_at.setdefault(partition, time.monotonic())
            self._forget_held(partition)
        if wait and self.flushed.get(partition):
            await self._ack_flushed(partition)

    async def ack_settled(self) -> None:
        """Ack the flushed records of every partition whose changelog batches Kafka has acknowledged by now;
        never waits for Kafka (a failed batch is left to the waiting :meth:`release`, which resends it)."""
        for partition in [p for p in self.flushed if self.writer.settled(p)]:
            await self._ack_flushed(partition)

    async def settle_flushed(self, *, older_than_s: float = 0.0, now: float | None = None) -> None:
        """Ack the flushed records whose batches Kafka has; for those flushed ``older_than_s`` ago or earlier
        and still not acknowledged (a slow broker, a failed batch), wait for Kafka (resending) and ack them."""
        await self.ack_settled()
        now = time.monotonic() if now is None else now
        for partition in [p for p, at in self.flushed_at.items() if now - at >= older_than_s]:
            await self._ack_flushed(partition)

    async def _ack_flushed(self, partition: int) -> None:
        await self.writer.settle(partition)
        assert self.ack is not None, "events are held only by a running agent"
        # Popped only now: a revocation meanwhile (drop) leaves nothing to ack.
        self.flushed_at.pop(partition, None)
        for done in self.flushed.pop(partition, []):
            with self.gate.allow(done.message) if self.gate else contextlib.nullcontext():
                await self.ack(done)

    def _forget_held(self, partition: int) -> None:
        self.events.pop(partition, None)
        self.since.pop(partition, None)
        self.items.pop(partition, None)
        self.last.pop(partition, None)

    def drop(self, partitions: Iterable[int]) -> None:
        # Revoked: never acked, so their records are read again, by the new owner, from the committed offset.
        partitions = list(partitions)
        if self._sent is not None and self._sent[0] in partitions:
            # Its records were never acked: the new owner reads them again and sends the outputs again.
            self._sent = None
        for p in partitions:
            self._forget_held(p)
            self.flushed.pop(p, None)
            self.flushed_at.pop(p, None)


def commit_past_repeated_acks() -> None:
    """Faust commits a partition up to the end of the first run of consecutive offsets in its acked list
    (``Consumer._new_offset``), and ``faust.utils.functional.consecutive_numbers`` ends a run at a repeated
    offset. The list gets repeats: when Faust saw a gap in the offsets it read, it later adds the gap's offsets
    to the list as done, whether or not the agent acked some of them when they were read again. Then each
    commit moves past one or two offsets only, one commit every ``commit_interval_s``: the chaos test's
    partition that crawled from 38 to 317, 1-2 offsets a commit, for minutes (``acked=[38, 39, 39, 40, 40,
    ...]``, 2026-12-05), and in CI did not finish within 300 s. A repeat is the same offset done twice, so it
    belongs to the run. Installed once per process (the function is looked up in Faust's consumer module)."""
    faust_consumer.consecutive_numbers = runs_of_offsets


def runs_of_offsets(it: Iterable[int]) -> Iterator[Sequence[int]]:
    """Runs of consecutive offsets in a sorted sequence, a repeated offset staying in its run:
    ``[1, 2, 2, 3, 5]`` -> ``[1, 2, 2, 3]``, ``[5]`` (a drop-in for Faust's ``consecutive_numbers``, same
    signature)."""
    run: list[int] = []
    for offset in it:
        if run and offset > run[-1] + 1:
            yield run
            run = []
        run.append(offset)
    if run:
        yield run


def clamp_recovery_seeks(app: faust.App) -> None:
    """Faust's table recovery seeks each changelog partition to an offset it computes one below the real one
    (its "-1" convention) and maps only ``-1`` to 0. While a broker was down the surviving worker computed a
    lower one for a standby partition and its Recovery service crashed
    (``ValueError: Offset must be a positive integer`` from aiokafka's ``seek``: issue 26's chaos run); the
    worker then processed nothing. Any negative offset now means "from the start": a changelog holds the last
    value per key, so reading it from offset 0 costs time and changes nothing."""
    tables: Any = app.tables  # the TableManager type does not declare its recovery service
    recovery = tables.recovery
    seek = recovery._seek_offsets

    async def seek_from_zero_at_worst(consumer: Any, tps: Any, offsets: Any, title: str) -> None:
        for tp in tps:
            if offsets[tp] < -1:
                log.warning("%s[%d]: recovery computed offset %d; reading it from the start", *tp, offsets[tp])
                offsets[tp] = -1
        await seek(consumer, tps, offsets, title)

    recovery._seek_offsets = seek_from_zero_at_worst


def gate_acks(app: faust.App, topics: Iterable[str]) -> AckGate:
    """Only the agents' own acks commit records of ``topics``: Faust acks the events its streams skip around a
    rebalance (see :class:`AckGate`); and the gate's ``seeks`` knows when Faust has sought an assignment to its
    committed offsets, the start the agents check a partition's first event against (:class:`SeekWatch`).
    Installed on every consumer the app creates."""
    gate = AckGate(set(topics))

    def install(consumer: Any) -> None:
        gate.install(consumer)
        gate.seeks.install(consumer, app)

    on_every_consumer(app, install)
    return gate


async def check_continuity(app: faust.App, watched: Iterable[tuple[Continuity, Callable[[], Iterable[TP]]]]) -> None:
    """Rewind partitions whose fetch position ran past records the agent never received (see
    :mod:`pipeline.agents.faust.continuity`), once the agent has waited ``stall_s`` for its next event, and
    partitions whose commits are stuck behind acks Faust lost (:meth:`Continuity.commit_hole`), at any time,
    while the agent is idle, partitions processed to their end that the group never committed
    (:meth:`Continuity.uncommitted_tails`), and, at any time, partitions without any progress for a while,
    whatever the cause (:meth:`Continuity.without_progress`). ``watched``: each agent's continuity and a
    function giving the source partitions it owns now."""
    watched = list(watched)
    for continuity, _ in watched:
        if continuity.stuck(STUCK_S):
            # Not a repair: one event held this long means the agent awaits something that does not come (CI's
            # chaos run once left a partition uncommitted for 300 s without a line in the log). Say what.
            chains = [chain for chain, ours in map(awaiting, asyncio.all_tasks()) if ours]
            log.error(
                "the agent has handled one event for %.0f s; the tasks awaiting: %s",
                time.monotonic() - (continuity.busy_since or 0.0),
                " || ".join(chains),
            )
    consumer = app.consumer
    recovering = getattr(app, "in_recovery", False)  # set by Faust's Recovery service
    held = app.rebalancing or recovering or not getattr(consumer, "flow_active", True)
    if held or not app.flow_control.is_active():
        # Faust holds deliveries back on purpose and seeks to the committed offsets afterwards.
        for continuity, _ in watched:
            continuity.suspects.clear()
            continuity.still.clear()
        return
    for continuity, owned in watched:
        stalled = continuity.stalled()
        if not stalled:
            continuity.suspects.clear()  # the agent is getting events: start looking afresh
            continuity.tails.clear()
        tps = list(owned())
        for tp in tps:
            try:
                hole = continuity.commit_hole(consumer, tp)
                if hole is not None:
                    await continuity.rewind(consumer, tp, hole[0], unacked=hole[1])
                elif stalled:
                    await continuity.check(consumer, tp)
            except Exception:  # a safety net must never take the worker down
                log.exception("%s: continuity check failed", tp)
        if stalled:
            try:
                for tp, offset in (await continuity.uncommitted_tails(consumer, tps)).items():
                    await continuity.rewind(consumer, tp, offset, uncommitted=True)
            except Exception:
                log.exception("continuity: the check of uncommitted partition ends failed")
        try:
            for tp, (offset, report) in (await continuity.without_progress(consumer, tps)).items():
                await continuity.revive(consumer, tp, offset, report)
        except Exception:
            log.exception("continuity: the check of partitions without progress failed")


@contextlib.contextmanager
def event_context(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event for the block (what a stream sets while it yields the event).

    Faust has no public way to do this outside a stream; the context variable is reset on exit so the
    caller's context (a timer's) is unchanged."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
