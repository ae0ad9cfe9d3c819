"""Every record of an owned partition reaches the agent, in offset order, even when Faust drops some.

faust-streaming 0.15.3 can lose records around a rebalance without a trace: its fetch loop discards the rest
of a fetched batch when the generation changes or a partition is not yet active, its streams skip events
while flow control is paused, and its "seek to committed offsets" after a rebalance races with records
already being delivered (it can also reset the read offset to below what was delivered, or leave a
partition's fetch position at its end). Each time aiokafka's position has moved past records the agent never
saw, and nothing brings them back until the next restart. Measured here: after a failover the survivor
skipped the rest of the killed worker's partitions in ~1 run in 7 of
``tests/integration/test_worker.py::test_rebalance_survivor_restores_state``.

So the agent checks continuity itself, per partition:

* **a start**: the first event of a partition since its assignment is checked against the group's committed
  offset (:meth:`Continuity.start`), not taken as the start. Without it a dropped *first* record went unnoticed:
  measured in the grading worker's restart test (issue 22), a partition committed at 195 delivered 196 first (or
  96 where 79 was committed), and the restarted worker lost those records' effect for good (5 failed runs of 10);
  in the chaos test a partition with no commit yet delivered offset 74 first (2026-12-04: 3 true alerts lost in
  an earlier run). The offset is the one Faust itself seeks to after each assignment (:class:`SeekWatch`), so
  checking costs no round trip (asking the consumer's thread instead stalled a restarted worker 5-30 s:
  BENCHMARKS, "Worker failover after kill -9"). Faust delivers some events before that seek (its flow resumes
  during table recovery): they are skipped unacked, and read again from the offset it seeks to.
* **a gap**: an event's offset is beyond the next expected one. The event is not processed (nor acked) and
  the partition is rewound to the expected offset; events beyond it are skipped until it arrives, so the
  records are processed again in log order (a tick processed before the readings it follows would make
  them late). A record below the expected offset is Faust's own re-delivery from the committed offset, and
  is processed: the detectors de-duplicate by (device, seq) / (camera, event id).
* **a stall**: the agent has been waiting for its next event for ``stall_s`` while a partition's fetch
  position is past the next expected offset (or past the group's committed offset, when nothing of the
  partition arrived since it was assigned): the partition is rewound there. If its position is not past it
  but the log holds records from there on, the partition is stuck (left paused, or its fetch never resumed):
  it is resumed, in Faust and in aiokafka, and sought to that offset.

Rewinding clamps to the partition's first retained offset, and happens on the consumer's thread in one step
(assignment, position, seek), so a partition revoked or seeked meanwhile is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiokafka.structs import TopicPartition

log = logging.getLogger(__name__)


class SeekWatch:
    """Which consumer generation Faust last sought to its committed offsets (``Consumer.perform_seek``, after
    every assignment's table recovery), and the part of that seek Faust leaves out: it seeks only partitions
    whose committed offset is above 0 (aiokafka's ``seek_to_committed``), so one with no commit (or 0) kept
    whatever position its fetches reached meanwhile, past records Faust dropped or the agent skipped, and
    nothing delivered them again until the stall check (seen: a restarted worker whose predecessor had not
    committed yet waited 6 s for it, 10.5 s from kill -9 to alerts in the failover test). Those are sought to
    the earliest, the group's start for them. From then on ``consumer._committed_offset`` holds the committed
    offsets of that assignment (none for the partitions without)."""

    def __init__(self, topics: set[str]) -> None:
        self.topics = topics
        self.generation: int | None = None

    def install(self, consumer: Any, app: Any) -> None:
        perform_seek = consumer.perform_seek

        async def watched_seek() -> None:
            generation = app.consumer_generation_id
            await perform_seek()
            committed = consumer._committed_offset
            for tp in consumer.assignment():
                if tp.topic in self.topics and not committed.get(tp):
                    await consumer.seek(tp, 0)  # out of range (retention): reset to the earliest
            self.generation = generation

        consumer.perform_seek = watched_seek


@dataclass
class Continuity:
    """Per-partition expected offsets of one agent's source topic (``TP``-like keys: ``topic``, ``partition``)."""

    #: Faust's seeks to the committed offsets (None: the first event of a partition needs no seek first).
    seeks: SeekWatch | None = None
    stall_s: float = 2.0
    #: partition -> the next offset the agent must see.
    expected: dict[Any, int] = field(default_factory=dict)
    #: partition -> offset being waited for after a rewind; events beyond it are skipped until it arrives.
    rewinding: dict[Any, int] = field(default_factory=dict)
    #: partition -> when it was last rewound. Records of the batch fetched before the seek may still be
    #: delivered after it, and Faust then raises its read offset past the re-read ones and drops them: a
    #: partition still skipping a second later is rewound again.
    rewound_at: dict[Any, float] = field(default_factory=dict)
    retry_s: float = 1.0
    #: When the agent last finished an event and began waiting for the next (None while it is processing).
    idle_since: float | None = None
    #: When the agent took the event it handles now (meaningful while ``idle_since`` is None).
    busy_since: float | None = None
    #: The ``busy_since`` of the event last reported as stuck (:func:`stuck_report`), so it is reported once.
    reported_busy: float | None = None
    rewinds: int = 0
    #: partition -> ((fetch position, expected offset), when first seen so) while it looks stalled.
    suspects: dict[Any, tuple[tuple[int | None, int | None], float]] = field(default_factory=dict)
    #: partition -> ((committed offset, lowest acked offset), when first seen so) while its commits look stuck.
    holes: dict[Any, tuple[tuple[int, int], float]] = field(default_factory=dict)
    #: Whether the agent holds records of a partition (by number) not yet acked; set by the app (its Pending).
    held: Callable[[int], bool] = lambda _partition: False
    #: partition -> ((the group's committed offset, expected offset), when first seen so) while records the
    #: idle agent processed look neither held, acked nor committed (:meth:`uncommitted_tails`).
    tails: dict[Any, tuple[tuple[int | None, int], float]] = field(default_factory=dict)
    tails_asked: float = float("-inf")
    #: The window over which :meth:`without_progress` judges a partition's progress: a group's committed offset
    #: that moved less than one offset a second over it, with more than that waiting in the log, is read again.
    progress_s: float = 20.0
    #: partition -> (the group's committed offset at the start of the window, when the window started) while
    #: its log end is past it (:meth:`without_progress`).
    still: dict[Any, tuple[int | None, float]] = field(default_factory=dict)
    progress_asked: float = float("-inf")

    def forget(self, tps: Any) -> None:
        """The partitions were revoked or (re)assigned: Faust restarts them from the committed offset."""
        for tp in tps:
            self.expected.pop(tp, None)
            self.rewinding.pop(tp, None)
            self.rewound_at.pop(tp, None)
            self.suspects.pop(tp, None)
            self.holes.pop(tp, None)
            self.tails.pop(tp, None)
            self.still.pop(tp, None)

    async def uncommitted_tails(
        self, consumer: Any, tps: Iterable[Any], now: float | None = None
    ) -> dict[Any, int | None]:
        """Partitions whose last processed records the group never committed, with the offset to read again
        from (the group's committed offset, or its start); call while the agent is idle (:meth:`stalled`).

        :meth:`commit_hole` sees lost acks only below acked ones. Lost at a partition's *end*, nothing is acked
        after them and the commits stop for good, silently: seen once in CI's chaos run (a partition that stayed
        uncommitted for 300 s after the input ended). One way there is Faust's own: a commit refused because the
        group "already rebalanced" returns without a crash, yet Faust has removed those acks and recorded the
        offsets as committed (``Consumer._commit_offsets`` updates ``_committed_offset`` whether or not the
        commit succeeded); for a partition that comes back with no commit on the broker that stale view stays,
        and every ack below it is ignored. So the broker's committed offsets are asked (one request on the
        consumer's thread, only while the agent is idle and nothing of a partition is held or acked) and a
        partition still behind ``stall_s`` later is read again from there; Faust's view is corrected first, so
        the re-read records' acks count."""
        now = time.monotonic() if now is None else now
        acked, committing = consumer._acked, getattr(consumer, "_commit_fut", None) is not None
        candidates = [
            tp
            for tp in tps
            if tp in self.expected
            and tp not in self.rewinding
            and not acked.get(tp)
            and not self.held(tp.partition)
            and not committing
        ]
        for tp in set(self.tails) - set(candidates):
            del self.tails[tp]
        if not candidates or now - self.tails_asked < self.stall_s:
            return {}  # asked once a stall_s at most: two looks that far apart decide anyway
        kafka = getattr(consumer._thread, "_consumer", None)
        if kafka is None:
            return {}
        self.tails_asked = now

        async def ask() -> dict[Any, int | None]:
            # aiokafka's own TopicPartition: Faust's TP is another namedtuple of the same fields.
            asked = {tp: TopicPartition(tp.topic, tp.partition) for tp in candidates}
            found = await kafka._coordinator.fetch_committed_offsets(list(asked.values()))
            offsets = {tp: found[k].offset if k in found else None for tp, k in asked.items()}
            return {tp: (o if o is not None and o >= 0 else None) for tp, o in offsets.items()}

        committed = await consumer._thread.call_thread(ask)
        due: dict[Any, int | None] = {}
        for tp in candidates:
            expected = self.expected.get(tp)
            at = committed.get(tp)
            if expected is None or (at or 0) >= expected:
                self.tails.pop(tp, None)
                continue
            if _held_for(self.tails, tp, (at, expected), now, self.stall_s):
                # Faust ignores acks below what it believes committed: its view is the broker's again.
                consumer._committed_offset[tp] = at if at else None
                due[tp] = at  # None: no commit, the group's start
        return due

    async def without_progress(
        self, consumer: Any, tps: Iterable[Any], now: float | None = None
    ) -> dict[Any, tuple[int | None, str]]:
        """Partitions that made (almost) no progress for ``progress_s`` while records wait past the group's
        committed offset: that offset moved less than one offset a second. Returns each with the offset to read
        again from (the committed one, None: the group's start) and what Kafka, Faust and the agent showed of
        it (for the log). Call every second or so, outside rebalances and table recovery; the broker is asked
        (committed offsets, log ends, in one thread call) once every ``progress_s / 4``.

        The net under the specific repairs above, for whatever they do not recognise: CI's chaos run left a
        partition committed at 136 of 302 (and once at 171 of 836) for 300 s, with nothing logged by any of
        them; reproduced locally, the commit of such a partition crawled one offset every ~2.5 s (the agent
        getting one record per fetch) and the run passed or failed by how far behind it was. Reading it again
        from the committed offset is always safe (the detectors de-duplicate); it does not help an agent stuck
        inside one event (:meth:`stuck` reports that)."""
        now = time.monotonic() if now is None else now
        tps = list(tps)
        for tp in set(self.still) - set(tps):
            del self.still[tp]
        kafka = getattr(consumer._thread, "_consumer", None)
        if not tps or kafka is None or now - self.progress_asked < self.progress_s / 4:
            return {}
        self.progress_asked = now

        async def ask() -> tuple[dict[Any, int | None], dict[Any, int], dict[Any, str]]:
            asked = {tp: TopicPartition(tp.topic, tp.partition) for tp in tps}
            found = await kafka._coordinator.fetch_committed_offsets(list(asked.values()))
            committed = {tp: found[k].offset if k in found else None for tp, k in asked.items()}
            ends = await kafka.end_offsets(tps)
            return (
                {tp: (o if o is not None and o >= 0 else None) for tp, o in committed.items()},
                {tp: int(ends[tp]) for tp in tps},
                {tp: _fetch_state(kafka, tp) for tp in tps},
            )

        committed, ends, states = await consumer._thread.call_thread(ask)
        due: dict[Any, tuple[int | None, str]] = {}
        for tp in tps:
            at, end, expected = committed.get(tp), ends[tp], self.expected.get(tp)
            if end <= (at or 0):
                self.still.pop(tp, None)  # committed to its end
                continue
            # The committed offset alone: with records flowing it moves by hundreds every few seconds (a release
            # every ``flush_interval_s``, a commit every ``commit_interval_s``); an agent that processes records
            # whose commits never come is as stuck as one that gets none (seen in the chaos run: a worker
            # expecting offset 141 while the group's commit stood at 254, neither moving).
            start = self.still.get(tp)
            if start is None or (at or 0) < (start[0] or 0):
                self.still[tp] = (at, now)
                continue
            if now - start[1] < self.progress_s:
                continue
            self.still[tp] = (at, now)  # the next window
            moved = (at or 0) - (start[0] or 0)
            if moved >= self.progress_s or end - (at or 0) <= moved:
                continue  # keeping up, or nothing much waiting
            acked = consumer._acked.get(tp) or []
            due[tp] = (
                at,
                f"group committed {at} ({moved} more than {now - start[1]:.0f} s before), log end {end}; aiokafka "
                f"{states[tp]}; Faust committed {consumer._committed_offset.get(tp)}, read offset "
                f"{consumer._read_offset.get(tp)}, {len(acked)} acked ({min(acked, default=None)}.."
                f"{max(acked, default=None)}), active={tp in (consumer._active_partitions or ())} "
                f"paused={tp in consumer._paused_partitions}; agent expects {expected}, rewinding to "
                f"{self.rewinding.get(tp)}, holds={self.held(tp.partition)}",
            )
        return due

    async def revive(self, consumer: Any, tp: Any, offset: int | None, report: str) -> bool:
        """Read ``tp`` again from ``offset`` (None: the group's start) whatever its fetch state: resumed (in
        aiokafka and Faust), sought there even with no valid position; Faust's view of its committed offset
        set to ``offset`` so the re-read records' acks count (see :meth:`without_progress`)."""
        thread = consumer._thread

        async def seek_anyway() -> int | None:
            kafka = thread._ensure_consumer()
            if tp not in kafka.assignment():
                return None  # revoked meanwhile: its next owner reads it from the committed offset
            start = offset if offset is not None else await _group_start(kafka, tp)
            target = max(start, (await kafka.beginning_offsets([tp]))[tp])
            # aiokafka's resume() refuses Faust's TP (another namedtuple of the same fields).
            kafka.resume(TopicPartition(tp.topic, tp.partition))
            kafka.seek(tp, target)
            return int(target)

        target = await thread.call_thread(seek_anyway)
        if target is None:
            return False
        log.warning(
            "%s[%d]: (almost) no progress for %.0f s (%s); re-reading from offset %d",
            tp.topic,
            tp.partition,
            self.progress_s,
            report,
            target,
        )
        consumer._committed_offset[tp] = offset if offset else None
        consumer.resume_partitions({tp})
        consumer._read_offset[tp] = target
        self.rewound_at[tp] = time.monotonic()
        self.rewinding[tp] = target
        self.rewinds += 1
        return True

    def commit_hole(self, consumer: Any, tp: Any, now: float | None = None) -> tuple[int, int] | None:
        """``(committed, lowest acked)`` if Faust's commits of ``tp`` have been stuck for ``stall_s`` behind
        offsets whose acks it never got; call every so often whether or not events arrive.

        Faust commits only up to the first hole in a partition's acked offsets (``_new_offset``), and the agent
        acks every record it processes, in offset order, from the committed offset on; so a hole right after
        the committed offset is acks Faust lost, and its commits stop there for good: seen in the chaos test
        (2026-12-04 17:56, a coordinator failover meanwhile), a survivor processed a partition to its end while
        its commits stayed at 245 with 249 the lowest acked, and the group never caught up. Reading the hole
        again brings its acks again (the detectors de-duplicate the records)."""
        now = time.monotonic() if now is None else now
        acked = consumer._acked.get(tp)
        committed = consumer._committed_offset.get(tp)
        lowest = min(acked) if acked else None
        if not committed or lowest is None or lowest - committed <= 1:  # Faust's own test: it commits past 1
            self.holes.pop(tp, None)
            return None
        look = (committed, lowest)
        return look if _held_for(self.holes, tp, look, now, self.stall_s) else None

    def start(self, consumer: Any, tp: Any, generation: int) -> bool:
        """Expect ``tp``'s committed offset first if nothing is expected of it yet; call before :meth:`admit`
        for every event. False: Faust has not yet sought this assignment (``generation``) to its committed
        offsets, and the event is to be skipped unacked (the seek reads it again, or, with no commit to seek to,
        the expectation below finds the gap). With no commit (or 0) the group reads from the earliest: 0 is
        expected, and a rewind clamps it to the first retained offset."""
        if tp in self.expected or tp in self.rewinding:
            return True
        thread: Any = getattr(consumer, "_thread", None)
        if getattr(thread, "_consumer", None) is None:
            return True  # no Kafka consumer running (Faust's test context): the first event sets the expectation
        if self.seeks is not None and self.seeks.generation != generation:
            return False
        committed = consumer._committed_offset.get(tp)
        self.expected[tp] = committed if committed is not None and committed > 0 else 0
        return True

    def admit(self, tp: Any, offset: int) -> int | None:
        """``None`` to process the event; else skip it (not acked) and, if >= 0, rewind the partition there."""
        waiting = self.rewinding.get(tp)
        if waiting is not None:
            if offset > waiting:
                # Rewound already: skip what was fetched before the seek and wait for the re-read.
                if time.monotonic() - self.rewound_at.get(tp, 0.0) >= self.retry_s:
                    return waiting
                return -1
            if offset == waiting:
                del self.rewinding[tp]
                # The target may be past the expectation (clamped to the first retained offset).
                self.expected[tp] = offset
        expected = self.expected.get(tp)
        if expected is not None and offset > expected:
            self.rewinding[tp] = expected
            return expected
        if expected is None or offset >= expected:
            self.expected[tp] = offset + 1
        return None

    def stuck(self, after_s: float, now: float | None = None) -> bool:
        """True once per event the agent has been handling for ``after_s`` (to report what it waits for)."""
        now = time.monotonic() if now is None else now
        busy = self.busy_since
        if self.idle_since is not None or busy is None or now - busy < after_s or self.reported_busy == busy:
            return False
        self.reported_busy = busy
        return True

    def stalled(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.idle_since is not None and now - self.idle_since >= self.stall_s

    async def check(self, consumer: Any, tp: Any, now: float | None = None) -> bool:
        """Rewind ``tp`` if it has looked stalled, unchanged, for ``stall_s`` (call while :meth:`stalled`).

        A single look is not enough: right after a rebalance the agent has been idle for a while and records
        may be between the fetch and the agent for a moment. Looking is cheap (the fetch position read
        without a round trip to the consumer's thread); only a partition still stalled ``stall_s`` later
        costs a thread call (and, if nothing arrived since its assignment, a committed-offset request)."""
        now = time.monotonic() if now is None else now
        kafka = getattr(consumer._thread, "_consumer", None)
        if kafka is None:
            return False
        position = _position(kafka, tp)
        if position is None:
            self.suspects.pop(tp, None)  # not fetching (revoked, or awaiting its offset reset)
            return False
        expected = self.expected.get(tp)
        if expected is not None and position == expected:
            highwater = consumer.highwater(tp)
            if highwater is not None and highwater <= position:
                self.suspects.pop(tp, None)  # all caught up
                return False
        if not _held_for(self.suspects, tp, (position, expected), now, self.stall_s):
            return False
        return await self.rewind(consumer, tp, expected)

    async def rewind(
        self,
        consumer: Any,
        tp: Any,
        offset: int | None,
        *,
        arrived: int | None = None,
        unacked: int | None = None,
        uncommitted: bool = False,
    ) -> bool:
        """Make ``tp`` deliver again from ``offset`` (``None``: its committed offset) if records from there on
        were fetched and never delivered, or are waiting in the log while nothing arrives; False when there
        was nothing to do. ``arrived``: the offset whose arrival showed a gap (the agent's check);
        ``unacked``: the lowest acked offset above a hole of lost acks (:meth:`commit_hole`); ``uncommitted``:
        records processed to the partition's end and never committed (:meth:`uncommitted_tails`)."""
        thread = consumer._thread

        async def seek_back() -> tuple[str, int | None, int | None]:
            """("skipped", target, old position) | ("stuck", target, end offset) | ("ok", expected, None)."""
            kafka = thread._ensure_consumer()
            # With no commit yet (a worker killed before its first commit) the group reads from the earliest:
            # leaving such a partition alone lost a killed worker's whole share in the failover test.
            start = offset if offset is not None else await _group_start(kafka, tp)
            before = _position(kafka, tp)
            if before is None:
                return "ok", None, None
            if before <= start and arrived is not None:
                return "ok", None, None  # sought back already (Faust's own seek): the records will come again
            if before <= start:
                # Nothing fetched past it. Records waiting in the log while the agent sits idle are stuck too
                # (a partition left paused, or a fetch that never resumed).
                end = (await kafka.end_offsets([tp]))[tp]
                if end <= start or _position(kafka, tp) != before:
                    return "ok", start, None
                # aiokafka's resume() refuses Faust's TP (another namedtuple of the same fields).
                kafka.resume(TopicPartition(tp.topic, tp.partition))
                kafka.seek(tp, start)
                return "stuck", start, end
            target = max(start, (await kafka.beginning_offsets([tp]))[tp])  # retention may have deleted some
            # No await from here: the check and the seek are one step on the consumer's thread.
            if _position(kafka, tp) != before or before <= target:
                return "ok", None, None  # moved meanwhile (Faust's own seek): leave it
            kafka.seek(tp, target)
            return "skipped", target, before

        self.rewound_at[tp] = time.monotonic()
        verdict, target, other = await thread.call_thread(seek_back)
        if verdict == "ok" or target is None:
            if offset is None and target is not None:
                # Nothing pending past the committed offset: that is the next offset the agent must see.
                self.expected.setdefault(tp, target)
            return False
        if verdict == "stuck":
            log.warning(
                "%s[%d]: records %d..%d are in the log but none reached the agent (Faust active=%s paused=%s); "
                "resuming and re-reading from offset %d",
                tp.topic,
                tp.partition,
                target,
                (other or target) - 1,
                tp in (consumer._active_partitions or ()),
                tp in consumer._paused_partitions,
                target,
            )
            consumer.resume_partitions({tp})
        elif uncommitted:
            log.warning(
                "%s[%d]: the agent processed offsets %d..%d but the group's committed offset stayed at %d (acks or a "
                "commit Faust lost); re-reading from offset %d",
                tp.topic,
                tp.partition,
                target,
                (other or target) - 1,
                target,
                target,
            )
        elif unacked is not None:
            log.warning(
                "%s[%d]: Faust's commits stopped at offset %d: it never got the acks of offsets %d..%d, which the "
                "agent processed; re-reading from offset %d",
                tp.topic,
                tp.partition,
                target,
                target,
                unacked - 1,
                target,
            )
        elif arrived is not None:
            log.warning(
                "%s[%d]: offset %d arrived while %d was expected; re-reading from offset %d",
                tp.topic,
                tp.partition,
                arrived,
                target,
                target,
            )
        else:
            log.warning(
                "%s[%d]: %d records fetched but never delivered to the agent; re-reading from offset %d",
                tp.topic,
                tp.partition,
                (other or target) - target,
                target,
            )
        # What Faust's own seek does: its fetch loop drops records below the read offset as already seen.
        consumer._read_offset[tp] = target
        self.rewinding[tp] = target
        self.rewinds += 1
        return True


def _held_for(looks: dict[Any, tuple[Any, float]], tp: Any, look: Any, now: float, seconds: float) -> bool:
    """Whether ``tp`` has looked like ``look`` for ``seconds`` (then forgotten, to start afresh); records it."""
    seen = looks.get(tp)
    if seen is None or seen[0] != look:
        looks[tp] = (look, now)
        return False
    if now - seen[1] < seconds:
        return False
    del looks[tp]
    return True


async def _group_start(kafka: Any, tp: Any) -> int:
    """Where the group resumes ``tp``: its committed offset or, with no commit yet, its first retained offset
    (the workers' consumers reset to the earliest)."""
    committed: int | None = await kafka.committed(tp)
    if committed is None:
        committed = int((await kafka.beginning_offsets([tp]))[tp])
    return committed


def _fetch_state(kafka: Any, tp: Any) -> str:
    """aiokafka's view of ``tp``, for a log line."""
    if tp not in kafka.assignment():
        return "not assigned"
    state = kafka._fetcher._subscriptions.subscription.assignment.state_value(tp)
    if state is None:
        return "no state"
    position = state.position if state.has_valid_position else "none (awaiting reset)"
    return f"position {position}, paused={getattr(state, 'paused', '?')}"


def _position(kafka: Any, tp: Any) -> int | None:
    """aiokafka's fetch position of ``tp``; None if not assigned (revoked) or awaiting its offset reset."""
    if tp not in kafka.assignment():
        return None
    state = kafka._fetcher._subscriptions.subscription.assignment.state_value(tp)
    if state is None or not state.has_valid_position:
        return None
    pos: int = state.position
    return pos


class AckGate:
    """Only the agent's own acks make a source record committable.

    Faust acks the events its streams *skip* as if they had been processed (``Stream._py_aiter``: ``if event
    is not None and (do_ack or value is skipped_value): event.ack()``), even on a ``noack()`` stream, and it
    skips every event that arrives while flow control is paused or that carries a stale generation, i.e.
    around each rebalance. Those acks let the group's committed offset pass records no agent ever saw: a
    failover survivor committed the killed worker's partitions to their end offsets and never processed
    them. The gate refuses acks of source-topic messages the agent is not acking itself; the records stay
    uncommitted and :class:`Continuity` has them read again.
    """

    def __init__(self, topics: set[str]) -> None:
        self.topics = topics
        self.seeks = SeekWatch(topics)
        self.refused = 0
        self._allowed: set[int] = set()
        self._warned: set[tuple[str, int]] = set()

    def install(self, consumer: Any) -> None:
        ack = consumer.ack

        def gated_ack(message: Any) -> bool:
            if message.topic in self.topics and id(message) not in self._allowed:
                self.refused += 1
                where = (message.topic, message.partition)
                if where not in self._warned:
                    self._warned.add(where)
                    log.warning(
                        "%s[%d]: Faust acked offset %d without the agent (a skipped event); not committing it",
                        message.topic,
                        message.partition,
                        message.offset,
                    )
                return False
            result: bool = ack(message)
            return result

        consumer.ack = gated_ack

    @contextlib.contextmanager
    def allow(self, message: Any) -> Iterator[None]:
        """The agent acks ``message`` inside this block."""
        self._allowed.add(id(message))
        try:
            yield
        finally:
            self._allowed.discard(id(message))


def awaiting(task: Any) -> tuple[str, bool]:
    """What ``task`` waits for: its chain of awaits, outermost first, down to the future at its end (one line,
    for a log: a CI run keeps only a log's lines that start with a timestamp); and whether Larder's own code
    (``/pipeline/``) is in the chain."""
    parts: list[str] = []
    ours = False
    obj: Any = task.get_coro()
    while obj is not None and len(parts) < 40:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "ag_frame", None) or getattr(obj, "gi_frame", None)
        if frame is None:
            parts.append(repr(obj)[:300])  # a future, or a coroutine that finished
            break
        path = frame.f_code.co_filename
        ours = ours or "/pipeline/" in path
        parts.append(f"{frame.f_code.co_name} ({path.rsplit('/', 1)[-1]}:{frame.f_lineno})")
        obj = getattr(obj, "cr_await", None) or getattr(obj, "ag_await", None) or getattr(obj, "gi_yieldfrom", None)
    return " -> ".join(parts), ours
