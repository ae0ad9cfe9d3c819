"""Continuity of a partition's offsets at the agent: gaps and stalls lead to a rewind, re-deliveries do not."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from aiokafka.structs import TopicPartition

from pipeline.agents.faust.continuity import AckGate, Continuity, SeekWatch


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


A, B = TP("readings", 0), TP("readings", 1)


def test_in_order_and_redelivered_events_are_processed() -> None:
    c = Continuity()
    assert [c.admit(A, o) for o in (5, 6, 7)] == [None, None, None]
    assert c.admit(A, 6) is None, "a re-delivery from the committed offset is processed (detectors de-dup)"
    assert c.expected[A] == 8
    assert c.admit(B, 40) is None, "the first event after an assignment sets the expectation"


def test_a_gap_skips_until_the_missing_offset_is_read_again() -> None:
    c = Continuity(retry_s=60)
    c.admit(A, 5)
    assert c.admit(A, 9) == 6, "offsets 6-8 never arrived: rewind to 6, this event is skipped"
    c.rewound_at[A] = 1e18  # just rewound
    assert c.admit(A, 10) == -1, "fetched before the seek: skipped, read again later"
    assert c.admit(A, 6) is None
    assert [c.admit(A, o) for o in (7, 8, 9, 10)] == [None] * 4
    assert c.expected[A] == 11 and A not in c.rewinding


def test_still_skipping_after_retry_s_rewinds_again() -> None:
    c = Continuity(retry_s=0.0)
    c.admit(A, 5)
    assert c.admit(A, 9) == 6
    assert c.admit(A, 10) == 6, "Faust dropped the re-read records: seek again"


def test_forget_on_revocation() -> None:
    c = Continuity()
    c.admit(A, 5)
    c.admit(A, 9)
    c.forget([A])
    assert c.admit(A, 100) is None


def test_stalled_only_after_waiting_stall_s() -> None:
    c = Continuity(stall_s=2.0)
    assert not c.stalled(now=10.0), "processing (never idle yet)"
    c.idle_since = 10.0
    assert not c.stalled(now=11.9)
    assert c.stalled(now=12.0)


# -- rewind, against a fake of the consumer thread's aiokafka state ------------------------------------------


@dataclass
class FakeKafka:
    positions: dict[TP, int]
    beginning: int = 0
    committed_offsets: dict[TP, int] = field(default_factory=dict)
    ends: dict[TP, int] = field(default_factory=dict)
    resumed: list[TP] = field(default_factory=list)
    seeks: list[tuple[TP, int]] = field(default_factory=list)
    #: Partitions awaiting an offset reset (no valid fetch position).
    unpositioned: set[TP] = field(default_factory=set)

    def __post_init__(self) -> None:
        kafka = self

        class Assignment:
            def state_value(self, tp: TP) -> Any:
                valid = tp not in kafka.unpositioned
                return type("State", (), {"position": kafka.positions[tp], "has_valid_position": valid})()

        subscription = type("Sub", (), {"assignment": Assignment()})()
        self._fetcher = type("F", (), {"_subscriptions": type("S", (), {"subscription": subscription})()})()

    def assignment(self) -> set[TP]:
        return set(self.positions)

    async def committed(self, tp: TP) -> int | None:
        return self.committed_offsets.get(tp)

    async def end_offsets(self, tps: list[TP]) -> dict[TP, int]:
        return {tp: self.ends.get(tp, self.positions[tp]) for tp in tps}

    def resume(self, *tps: Any) -> None:
        # aiokafka's own check: Faust's TP is a different namedtuple and is refused (seek only asserts).
        if not all(isinstance(tp, TopicPartition) for tp in tps):
            raise TypeError("partitions must be TopicPartition namedtuples")
        self.resumed.extend(tps)

    async def beginning_offsets(self, tps: list[TP]) -> dict[TP, int]:
        return {tp: self.beginning for tp in tps}

    def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.positions[tp] = offset


class FakeConsumer:
    def __init__(self, kafka: FakeKafka, committed: dict[TP, int] | None = None) -> None:
        kafka_ = kafka

        class Thread:
            _consumer = kafka_

            def _ensure_consumer(self) -> FakeKafka:
                return kafka_

            async def call_thread(self, fun: Any) -> Any:
                return await fun()

        self._thread = Thread()
        # What Faust's seek to the committed offsets leaves (no entry for a committed offset of 0 or none).
        self._committed_offset: dict[TP, int] = dict(committed or {})
        self._acked: dict[TP, list[int]] = {}
        self._read_offset: dict[TP, int | None] = {}
        self._active_partitions: set[TP] = set()
        self._paused_partitions: set[TP] = set()

    def highwater(self, tp: TP) -> int | None:
        return self._thread._consumer.ends.get(tp)

    def resume_partitions(self, tps: set[TP]) -> None:
        self._active_partitions |= tps
        self._paused_partitions -= tps


async def test_rewind_seeks_back_and_resets_the_read_offset() -> None:
    kafka = FakeKafka({A: 80})
    consumer = FakeConsumer(kafka)
    c = Continuity()
    assert await c.rewind(consumer, A, 62)
    assert kafka.seeks == [(A, 62)] and consumer._read_offset[A] == 62
    assert c.rewinding[A] == 62 and c.rewinds == 1


async def test_rewind_to_the_committed_offset_when_nothing_arrived() -> None:
    kafka = FakeKafka({A: 80, B: 80}, committed_offsets={A: 44})
    c = Continuity()
    assert await c.rewind(FakeConsumer(kafka), A, None)
    # B's owner was killed before its first commit: the group reads it from the earliest retained offset.
    assert await c.rewind(FakeConsumer(kafka), B, None), "no committed offset: rewound to the first retained one"
    assert kafka.seeks == [(A, 44), (B, 0)]


async def test_no_commit_and_nothing_retained_before_the_position_is_left_alone() -> None:
    kafka = FakeKafka({A: 80}, beginning=80)
    c = Continuity()
    assert not await c.rewind(FakeConsumer(kafka), A, None)
    assert kafka.seeks == [] and c.expected[A] == 80


async def test_a_partition_at_its_committed_offset_expects_it_next() -> None:
    kafka = FakeKafka({A: 44}, committed_offsets={A: 44})
    c = Continuity()
    assert not await c.rewind(FakeConsumer(kafka), A, None)
    assert c.expected[A] == 44, "verified once: later checks need no committed-offset request"


async def test_no_rewind_when_not_past_revoked_or_deleted() -> None:
    kafka = FakeKafka({A: 62}, beginning=70)
    c = Continuity()
    assert not await c.rewind(FakeConsumer(kafka), A, 62), "position not past the offset: nothing to do"
    assert not await c.rewind(FakeConsumer(kafka), B, 10), "not assigned (revoked)"
    kafka.positions[A] = 90
    assert await c.rewind(FakeConsumer(kafka), A, 62)
    assert kafka.seeks == [(A, 70)], "records deleted by retention: from the first one retained"


async def test_records_waiting_in_the_log_with_nothing_fetched_are_a_stuck_partition() -> None:
    kafka = FakeKafka({A: 44}, committed_offsets={A: 44}, ends={A: 80})
    consumer = FakeConsumer(kafka)
    consumer._paused_partitions.add(A)
    c = Continuity()
    assert await c.rewind(consumer, A, None)
    assert kafka.resumed == [TopicPartition(A.topic, A.partition)] and kafka.seeks == [(A, 44)]
    assert A in consumer._active_partitions and A not in consumer._paused_partitions
    assert c.rewinding[A] == 44


async def test_check_acts_only_on_a_stall_unchanged_for_stall_s() -> None:
    kafka = FakeKafka({A: 80, B: 30}, ends={A: 80, B: 30})
    consumer = FakeConsumer(kafka)
    c = Continuity(stall_s=2.0)
    c.expected.update({A: 62, B: 30})
    assert not await c.check(consumer, A, now=100.0), "first look: maybe records on their way to the agent"
    assert not await c.check(consumer, B, now=100.0), "caught up"
    assert not await c.check(consumer, A, now=101.0)
    assert await c.check(consumer, A, now=102.0), "unchanged for stall_s: rewind"
    assert kafka.seeks == [(A, 62)]
    assert B not in c.suspects


async def test_check_forgets_a_suspect_that_moved() -> None:
    kafka = FakeKafka({A: 80}, ends={A: 90})
    consumer = FakeConsumer(kafka)
    c = Continuity(stall_s=2.0)
    c.expected[A] = 62
    assert not await c.check(consumer, A, now=100.0)
    c.expected[A] = 70  # the agent got records meanwhile
    assert not await c.check(consumer, A, now=102.5)
    assert kafka.seeks == []


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int


def test_ack_gate_commits_only_what_the_agent_acks() -> None:
    acked: list[Msg] = []

    class Consumer:
        def ack(self, message: Msg) -> bool:
            acked.append(message)
            return True

    consumer = Consumer()
    gate = AckGate({"readings"})
    gate.install(consumer)
    skipped, processed, changelog = Msg("readings", 0, 5), Msg("readings", 0, 6), Msg("state-changelog", 0, 1)
    assert consumer.ack(skipped) is False, "Faust acking a skipped event: refused"
    with gate.allow(processed):
        assert consumer.ack(processed) is True
    assert consumer.ack(changelog) is True, "other topics are not gated"
    assert acked == [processed, changelog] and gate.refused == 1


async def test_a_gap_already_sought_back_by_faust_needs_no_seek() -> None:
    kafka = FakeKafka({A: 50}, ends={A: 80})
    c = Continuity()
    assert not await c.rewind(FakeConsumer(kafka), A, 58, arrived=70), "position 50 <= 58: records come again"
    assert kafka.seeks == [] and kafka.resumed == []


def test_repairs_are_exported_as_prometheus_counters() -> None:

    from prometheus_client import CollectorRegistry, generate_latest

    from pipeline.agents.metrics import RunnerCollector

    devices, kitchens = Continuity(), Continuity()
    devices.rewinds, kitchens.rewinds = 3, 0
    gate = AckGate({"readings"})
    gate.refused = 7
    wapp = SimpleNamespace(runners={}, continuities={"devices": devices, "kitchens": kitchens}, gate=gate)
    registry = CollectorRegistry()
    registry.register(RunnerCollector(lambda: wapp))  # type: ignore[arg-type,return-value]
    text = generate_latest(registry).decode()
    assert 'larder_worker_rewinds_total{concern="devices"} 3.0' in text
    assert 'larder_worker_rewinds_total{concern="kitchens"} 0.0' in text
    assert "larder_worker_skip_acks_refused_total 7.0" in text


async def test_the_first_event_after_an_assignment_is_checked_against_the_committed_offset() -> None:
    """Issue 22: Faust skipped the first record after the committed offset (195) and delivered 196 first; with
    the committed offset as the start that is a gap, rewound to 195, not a new start."""
    kafka = FakeKafka({A: 200, B: 0})
    consumer = FakeConsumer(kafka, committed={A: 195})
    c = Continuity()
    c.start(consumer, A, 1)
    assert c.admit(A, 196) == 195, "196 first: 195 never arrived"
    assert await c.rewind(consumer, A, 195, arrived=196)
    assert kafka.seeks == [(A, 195)]
    assert c.admit(A, 195) is None and c.admit(A, 196) is None
    # No commit (or 0, which Faust leaves out too): the group reads from the earliest.
    c.start(consumer, B, 1)
    assert c.expected[B] == 0 and c.admit(B, 0) is None
    # Taken once per assignment: known partitions keep their expectation; forgotten ones start again.
    consumer._committed_offset[A] = 999
    c.start(consumer, A, 1)
    assert c.expected[A] == 197
    c.forget([A])
    c.start(consumer, A, 1)
    assert c.expected[A] == 999


async def test_a_partition_whose_start_was_deleted_by_retention_is_read_from_its_first_retained_offset() -> None:
    """No commit: 0 is expected, the log begins at 500. One rewind, clamped to 500, then the expectation
    follows the re-read record (not a second rewind to 0)."""
    kafka = FakeKafka({A: 520}, beginning=500)
    consumer = FakeConsumer(kafka)
    c = Continuity(retry_s=60)
    c.start(consumer, A, 1)
    assert c.admit(A, 500) == 0
    assert await c.rewind(consumer, A, 0, arrived=500)
    assert kafka.seeks == [(A, 500)]
    c.rewound_at[A] = 1e18
    assert c.admit(A, 501) == -1, "fetched before the seek"
    assert [c.admit(A, o) for o in (500, 501, 502)] == [None] * 3
    assert c.expected[A] == 503 and A not in c.rewinding


async def test_events_before_fausts_seek_to_the_committed_offsets_are_skipped() -> None:
    """Faust resumes its flow during table recovery, before it seeks the assignment to its committed offsets:
    an event delivered then is skipped (unacked), not taken as the start. The seek reads it again where there
    is a committed offset; a partition without one (Faust seeks only those with) is sought to the earliest."""
    consumer = FakeConsumer(FakeKafka({A: 30, B: 12}))
    seeks = SeekWatch({"readings"})
    sought: list[tuple[TP, int]] = []

    async def perform_seek() -> None:
        consumer._committed_offset[A] = 20  # B has no commit: Faust leaves it where it is

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    consumer.perform_seek = perform_seek  # type: ignore[attr-defined]
    consumer.seek = seek  # type: ignore[attr-defined]
    consumer.assignment = lambda: {A, B, TP("changelog", 0)}  # type: ignore[attr-defined]
    seeks.install(consumer, SimpleNamespace(consumer_generation_id=3))
    c = Continuity(seeks=seeks)
    assert not c.start(consumer, A, 3) and not c.start(consumer, B, 3), "generation 3 not sought yet"
    assert A not in c.expected and B not in c.expected
    await consumer.perform_seek()  # type: ignore[attr-defined]
    assert seeks.generation == 3 and sought == [(B, 0)], "not A (Faust's seek), nor another topic"
    assert not c.start(consumer, A, 2), "an event of an older generation"
    assert c.start(consumer, A, 3) and c.expected[A] == 20
    assert c.admit(A, 25) == 20, "the records from the committed offset must come first"
    assert c.start(consumer, B, 3) and c.expected[B] == 0


async def test_commits_stuck_behind_lost_acks_read_the_hole_again() -> None:
    """Faust commits up to the first hole in its acked offsets; a hole right after the committed offset (acks
    it lost) stops the partition's commits for good unless the records are read, and acked, again."""
    kafka = FakeKafka({A: 532})
    consumer = FakeConsumer(kafka, committed={A: 245})
    consumer._acked[A] = [249, 250, 251, 530, 531]
    c = Continuity(stall_s=2.0, retry_s=60)
    assert c.commit_hole(consumer, A, now=10.0) is None, "first look"
    assert c.commit_hole(consumer, A, now=11.9) is None, "not for stall_s yet"
    assert c.commit_hole(consumer, A, now=12.0) == (245, 249)
    assert await c.rewind(consumer, A, 245, unacked=249)
    assert kafka.seeks == [(A, 245)] and c.rewinding[A] == 245
    # Commits moving on, a hole of one (Faust commits past it), or nothing acked: no hole.
    consumer._acked[A] = [246, 247]
    assert c.commit_hole(consumer, A, now=20.0) is None and c.commit_hole(consumer, A, now=30.0) is None
    consumer._acked[A] = []
    assert c.commit_hole(consumer, A, now=40.0) is None
    consumer._acked[A] = [300]
    c.commit_hole(consumer, A, now=50.0)
    consumer._committed_offset[A] = 290
    assert c.commit_hole(consumer, A, now=53.0) is None, "a changed look starts the wait again"


async def test_a_redelivery_below_the_committed_offset_is_processed() -> None:
    c = Continuity()
    c.start(FakeConsumer(FakeKafka({A: 50}), committed={A: 40}), A, 1)
    assert [c.admit(A, o) for o in (38, 39, 40, 41)] == [None] * 4
    assert c.expected[A] == 42


def test_without_a_kafka_consumer_the_first_event_sets_the_expectation() -> None:
    c = Continuity()
    c.start(object(), A, 1)
    assert A not in c.expected and c.admit(A, 7) is None and c.expected[A] == 8


class FakeCoordinator:
    """aiokafka's group coordinator: the group's committed offsets on the broker (-1: none)."""

    def __init__(self, committed: dict[TP, int]) -> None:
        self.committed = committed
        self.asked = 0

    async def fetch_committed_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, Any]:
        self.asked += 1
        by_key = {TopicPartition(tp.topic, tp.partition): o for tp, o in self.committed.items()}
        return {k: SimpleNamespace(offset=by_key.get(k, -1)) for k in partitions}


async def test_a_partition_processed_to_its_end_and_never_committed_is_read_again() -> None:
    """Faust's ``_commit_offsets`` records offsets as committed even when the commit failed ("already
    rebalanced"), having removed their acks: the partition's end is then never committed and nothing is acked
    after it for :meth:`commit_hole` to see. The broker's committed offset decides, while the agent is idle."""
    kafka = FakeKafka({A: 532, B: 90})
    kafka._coordinator = FakeCoordinator({A: 500, B: 90})  # type: ignore[attr-defined]
    consumer = FakeConsumer(kafka, committed={A: 532, B: 90})  # A: Faust's stale view of a failed commit
    c = Continuity(stall_s=2.0)
    c.expected.update({A: 532, B: 90})
    assert await c.uncommitted_tails(consumer, [A, B], now=10.0) == {}, "first look"
    assert await c.uncommitted_tails(consumer, [A, B], now=11.9) == {}, "not for stall_s yet"
    assert await c.uncommitted_tails(consumer, [A, B], now=12.0) == {A: 500}, "B is committed to its end"
    assert consumer._committed_offset[A] == 500, "Faust's view is the broker's again: the re-read acks count"
    assert await c.rewind(consumer, A, 500, uncommitted=True)
    assert kafka.seeks == [(A, 500)] and c.rewinding[A] == 500


async def test_no_commit_at_all_reads_from_the_group_start() -> None:
    kafka = FakeKafka({A: 40})
    kafka._coordinator = FakeCoordinator({})  # type: ignore[attr-defined]
    consumer = FakeConsumer(kafka)
    c = Continuity(stall_s=2.0)
    c.expected[A] = 40
    await c.uncommitted_tails(consumer, [A], now=0.0)
    assert await c.uncommitted_tails(consumer, [A], now=2.0) == {A: None}
    assert await c.rewind(consumer, A, None, uncommitted=True) and kafka.seeks == [(A, 0)]


async def test_records_held_acked_or_being_committed_are_not_an_uncommitted_end() -> None:
    kafka = FakeKafka({A: 532})
    coordinator = kafka._coordinator = FakeCoordinator({A: 500})  # type: ignore[attr-defined]
    consumer = FakeConsumer(kafka, committed={A: 500})
    held: set[int] = {0}
    c = Continuity(stall_s=2.0, held=lambda p: p in held)
    c.expected[A] = 532
    for now in (0.0, 5.0):
        assert await c.uncommitted_tails(consumer, [A], now=now) == {}, "held by the agent (Pending)"
    held.clear()
    consumer._acked[A] = [500, 501]
    for now in (10.0, 15.0):
        assert await c.uncommitted_tails(consumer, [A], now=now) == {}, "acked, waiting for the next commit"
    consumer._acked[A] = []
    consumer._commit_fut = object()  # type: ignore[attr-defined]
    for now in (20.0, 25.0):
        assert await c.uncommitted_tails(consumer, [A], now=now) == {}, "a commit in flight"
    assert coordinator.asked == 0, "nothing asked of the broker while any of those holds"
    del consumer._commit_fut  # type: ignore[attr-defined]
    c.rewinding[A] = 500
    assert await c.uncommitted_tails(consumer, [A], now=30.0) == {}, "being read again already"
    del c.rewinding[A]
    c.expected[A] = 500
    for now in (40.0, 45.0):
        assert await c.uncommitted_tails(consumer, [A], now=now) == {}, "committed to what the agent processed"
    c.expected[A] = 532
    await c.uncommitted_tails(consumer, [A], now=50.0)
    coordinator.committed[A] = 510
    assert await c.uncommitted_tails(consumer, [A], now=53.0) == {}, "the commit moved: the wait starts again"
    assert await c.uncommitted_tails(consumer, [A], now=55.0) == {A: 510}


async def test_an_agent_stuck_on_one_event_is_reported_once_with_what_it_awaits() -> None:
    import asyncio

    from pipeline.agents.faust.continuity import awaiting

    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def settle() -> None:
        await never

    async def handle_event() -> None:
        await settle()

    task = asyncio.create_task(handle_event())
    await asyncio.sleep(0)
    chain, ours = awaiting(task)
    assert chain.startswith("handle_event (test_continuity.py:") and " -> settle (" in chain and "Future" in chain
    assert not ours, "a test's coroutines are not under pipeline/"
    task.cancel()

    c = Continuity()
    c.idle_since, c.busy_since = None, 100.0
    assert not c.stuck(60.0, now=159.0) and c.stuck(60.0, now=160.0), "after 60 s on one event"
    assert not c.stuck(60.0, now=200.0), "reported once per event"
    c.busy_since = 300.0
    assert c.stuck(60.0, now=361.0), "the next stuck event is reported again"
    c.idle_since = 400.0
    assert not c.stuck(60.0, now=1000.0), "waiting for events is not being stuck"


async def test_a_partition_without_progress_is_read_again_whatever_held_it() -> None:
    """CI's chaos run left a partition committed at 136 of 302 for 300 s with nothing logged: the group's
    committed offset (nearly) still for ``progress_s`` while the log holds more records past it. Read again from
    the committed offset, even with no valid fetch position (awaiting a reset)."""
    kafka = FakeKafka({A: 136, B: 90}, ends={A: 302, B: 90}, unpositioned={A})
    coordinator = kafka._coordinator = FakeCoordinator({A: 136, B: 90})  # type: ignore[attr-defined]
    consumer = FakeConsumer(kafka, committed={A: 136, B: 90})
    c = Continuity(progress_s=20.0)
    c.expected.update({A: 171, B: 90})
    assert await c.without_progress(consumer, [A, B], now=0.0) == {}, "the window starts"
    assert await c.without_progress(consumer, [A, B], now=4.0) == {}, "asked every progress_s / 4 at most"
    assert coordinator.asked == 1
    coordinator.committed[A] = 140  # crawling: 4 offsets in 20 s, far less than what waits
    c.expected[A] = 172  # records processed whose commits never come are no progress either
    assert await c.without_progress(consumer, [A, B], now=10.0) == {}, "not a whole window yet"
    due = await c.without_progress(consumer, [A, B], now=20.0)
    assert list(due) == [A], "B is committed to its log end"
    offset, report = due[A]
    assert offset == 140 and "group committed 140 (4 more than 20 s before), log end 302" in report
    assert "agent expects 172" in report and "position none (awaiting reset)" in report
    assert await c.revive(consumer, A, offset, report)
    assert kafka.seeks == [(A, 140)] and kafka.resumed == [TopicPartition("readings", 0)]
    assert c.rewinding[A] == 140 and consumer._read_offset[A] == 140 and consumer._committed_offset[A] == 140
    assert A in consumer._active_partitions
    assert c.admit(A, 172) == -1 and c.admit(A, 140) is None, "what was fetched before the seek is skipped"


async def test_a_moving_commit_or_one_at_the_log_end_is_not_a_stall() -> None:
    kafka = FakeKafka({A: 300}, ends={A: 302})
    coordinator = kafka._coordinator = FakeCoordinator({A: 100})  # type: ignore[attr-defined]
    consumer = FakeConsumer(kafka, committed={A: 100})
    c = Continuity(progress_s=20.0)
    now: float
    for step, now in enumerate(range(0, 100, 5)):
        coordinator.committed[A] = 100 + 5 * step  # one offset a second while the agent catches up
        assert await c.without_progress(consumer, [A], now=float(now)) == {}
    coordinator.committed[A] = 302
    for now in (200.0, 230.0, 260.0):
        assert await c.without_progress(consumer, [A], now=now) == {}, "committed to its end"
    for step, now in enumerate((300.0, 325.0, 350.0)):
        # Live traffic: a few records a window, each committed within seconds.
        coordinator.committed[A], kafka.ends[A] = 305 + 5 * step, 310 + 5 * step
        assert await c.without_progress(consumer, [A], now=now) == {}, "nothing much waiting"
    c.forget([A])
    assert A not in c.still


async def test_a_revoked_partition_is_not_revived() -> None:
    kafka = FakeKafka({A: 10})
    consumer = FakeConsumer(kafka)
    kafka.positions.clear()  # no longer assigned to this consumer
    c = Continuity()
    assert not await c.revive(consumer, A, 5, "report") and kafka.seeks == [] and A not in c.rewinding


def test_repeated_acks_do_not_slow_fausts_commits_to_a_crawl() -> None:
    """Faust's own ``Consumer._new_offset`` on an acked list with repeats (a gap it filled in, whose offsets the
    agent also acked when they were read again): one commit takes the whole run, as without the repeats."""
    from collections import defaultdict

    from faust.transport.consumer import Consumer
    from faust.types import TP as FaustTP
    from intervaltree import IntervalTree

    from pipeline.agents.faust.durable import commit_past_repeated_acks, runs_of_offsets

    assert list(runs_of_offsets([1, 2, 2, 3, 5, 5, 6, 9])) == [[1, 2, 2, 3], [5, 5, 6], [9]]
    assert list(runs_of_offsets([])) == []

    def faust_consumer(acked: list[int], gap: tuple[int, int] | None = None) -> Any:
        gaps: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)
        if gap is not None:
            gaps[A].addi(*gap)
        return SimpleNamespace(
            _acked={A: list(acked)},
            _acked_index={A: set(acked)},
            _gap=gaps,
            _committed_offset={A: 38},
        )

    commit_past_repeated_acks()
    # ``_new_offset`` only uses the partition as a key of the fake's dicts: the test's TP stands in for Faust's.
    tp = cast(FaustTP, A)
    # 39..41 acked by the agent when re-read, and also a gap (39..41) Faust saw while they were skipped.
    fake = faust_consumer([38, 39, 40, 41, 42, 43], gap=(39, 42))
    assert Consumer._new_offset(fake, tp) == 44, "the whole run at once"
    assert fake._acked[A] == []
    fake = faust_consumer([38, 39, 39, 40, 40, 41, 45])
    assert Consumer._new_offset(fake, tp) == 42 and fake._acked[A] == [45], "the run ends at a real gap"
