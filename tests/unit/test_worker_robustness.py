"""What other producers may write to the worker's topics, and Kafka failing under it: a tombstone, a reading
of the wrong types, outputs Kafka does not take at first. None of it may stop a device or lose an alert."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaTimeoutError, NotEnoughReplicasError
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import serde
from pipeline.agents.core import Runner, encode_output
from pipeline.agents.devices import device_concern
from pipeline.agents.faust.app import KafkaOutputs
from pipeline.contracts import records
from pipeline.siteconfig import load
from pipeline.topics import Topics
from tests.agents_support import STEP_MS, batches, device_reading, tick, write_sites

T0 = 1_700_000_000_000


def runner(tmp_path: Path) -> Runner[Any, Any]:
    concern = device_concern(load(write_sites(tmp_path / "sites.yaml", ["dev-0001", "dev-0002"])))
    return Runner(concern, {}, 1, arrived_ms=lambda: 0)


def test_a_tombstone_is_dead_lettered(tmp_path: Path) -> None:
    result = runner(tmp_path).on_record(None, 0)
    assert [d.reason_code for d in result.dead_letters] == ["worker.bad_record"]


def test_a_reading_of_the_wrong_types_is_refused_on_arrival_and_its_device_goes_on(tmp_path: Path) -> None:
    r = runner(tmp_path)
    bad = {**device_reading("dev-0001", 1, T0, 4.0), "temp_c": None}
    good = [device_reading("dev-0001", s, T0 + s * STEP_MS, 4.0) for s in (2, 3)]
    letters = [d for _, v in batches([bad, *good], 1) for d in r.on_record(v, 0).dead_letters]
    assert [d.reason_code for d in letters] == ["worker.bad_item"], "the bad one only, at once"
    outputs = []
    for k in range(1, 40):  # hours of silence after: the device still goes offline
        res = r.on_record(tick(T0 + 3 * STEP_MS + k * 10 * 60_000), 0)
        assert not res.dead_letters
        outputs += res.outputs
    assert any(getattr(o, "rule", "") == "liveness.offline" and o.subject == "dev-0001" for o in outputs)


class FlakyBatches:
    """The first hand-over raises, the second's future fails, then Kafka takes everything. Outputs go in record
    batches (``send_keyed``, a call a topic), dead letters one by one (``send_one``), as :class:`KafkaBatches`."""

    def __init__(self) -> None:
        self.calls = 0
        self.handed = 0
        self.taken: list[tuple[str, bytes]] = []

    def _hand(self, topic: str, values: list[bytes]) -> asyncio.Future[Any]:
        self.calls += 1
        self.handed += len(values)
        if self.calls == 1:
            raise KafkaTimeoutError()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.calls == 2:
            fut.set_exception(NotEnoughReplicasError())
        else:
            fut.set_result(None)
            self.taken += [(topic, v) for v in values]
        return fut

    async def send_one(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        return self._hand(topic, [value])

    async def send_keyed(self, topic: str, records: list[tuple[bytes, bytes]]) -> list[asyncio.Future[Any]]:
        return [self._hand(topic, [v for _, v in records])]


async def test_outputs_kafka_does_not_take_at_first_are_sent_again(tmp_path: Path, monkeypatch: Any) -> None:
    r = runner(tmp_path)
    for _, v in batches([device_reading("dev-0001", 1, T0, 4.0)], 1):
        r.on_record(v, 0)
    result = r.on_record(tick(T0 + 100 * STEP_MS), 0)  # silence: offline alerts
    assert result.outputs
    monkeypatch.setattr(asyncio, "sleep", _no_wait)
    batches_ = FlakyBatches()
    topics = Topics(prefix="t", partitions=1)
    await (await KafkaOutputs(batches_, topics).send(result))()  # type: ignore[arg-type]
    sent = [serde.loads(v)["alert_id"] for t, v in batches_.taken if t == topics.alerts]
    # All of them, some twice (the whole set is sent again after a failure; consumers de-duplicate by id).
    assert set(sent) == {o.alert_id for o in result.outputs if hasattr(o, "alert_id")}


_sleep = asyncio.sleep


async def _no_wait(_delay: float) -> None:
    await _sleep(0)


def test_a_backlog_of_camera_events_does_not_depend_on_where_the_last_tick_fell(tmp_path: Path) -> None:
    """An HTTP body of events recorded 10-20 min ago arrives in one record. Whether the previous tick was
    long before or just before it, the events are the same and so must be the outputs (live and replay)."""
    from pipeline.agents.kitchen import kitchen_concern
    from tests.agents_support import kitchen_batches, kitchen_event

    cfg = load(write_sites(tmp_path / "sites.yaml", ["dev-0001"], ("k1",)))
    minute = 60_000

    def run(last_tick: int) -> list[Any]:
        r: Runner[Any, Any] = Runner(kitchen_concern(cfg), {}, 1, arrived_ms=lambda: 0)
        outs: list[Any] = []
        for _, v in kitchen_batches([kitchen_event("k1", "e0", T0, "person_present")], 1):
            outs += r.on_record(v, 0).outputs
        outs += r.on_record(tick(T0 + 2 * minute), 0).outputs
        outs += r.on_record(tick(last_tick), 0).outputs
        upload = T0 + 30 * minute
        items = [
            kitchen_event("k1", "e1", upload - 20 * minute, "person_absent"),
            kitchen_event("k1", "e2", upload - 19 * minute, "stove_on"),
            kitchen_event("k1", "e3", upload - 10 * minute, "no_hat"),
        ]
        for _, v in kitchen_batches(items, 1):
            outs += r.on_record(v, 0).outputs
        outs += r.on_record(tick(upload + 40 * minute), 0).outputs
        return [o.model_dump(mode="json") for o in outs]

    early, late = run(T0 + 3 * minute), run(T0 + 30 * minute)
    assert early == late
    assert not [o for o in late if o.get("kind") == "late"], "none of the backlog is late"


def test_a_camera_event_of_the_wrong_types_is_refused_on_arrival_and_its_kitchen_goes_on(tmp_path: Path) -> None:
    from pipeline.agents.kitchen import kitchen_concern
    from tests.agents_support import kitchen_batches, kitchen_event

    cfg = load(write_sites(tmp_path / "sites.yaml", ["dev-0001"], ("k1",)))
    r: Runner[Any, Any] = Runner(kitchen_concern(cfg), {}, 1, arrived_ms=lambda: 0)
    bad = {**kitchen_event("k1", "e1", T0, "no_hat"), "confidence": "high"}
    good = [kitchen_event("k1", f"e{i}", T0 + i * 60_000, "no_hat") for i in range(2, 6)]
    letters = [d for _, v in kitchen_batches([bad, *good], 1) for d in r.on_record(v, 0).dead_letters]
    assert [d.reason_code for d in letters] == ["worker.bad_item"], "the bad one only, at once"
    for k in range(1, 10):
        assert not r.on_record(tick(T0 + k * 10 * 60_000), 0).dead_letters


def test_a_verdict_record_reaches_the_kitchen_rules_and_a_bad_one_is_dead_lettered(tmp_path: Path) -> None:
    """The console writes a ``kitchen_verdicts`` record to the kitchen's partition of the kitchen-events topic:
    the runner feeds it to the kitchen's detector (a false positive ends the open hygiene episode) at the
    partition's clock, and dead-letters one it cannot apply, as any other item."""
    from pipeline.agents.kitchen import kitchen_concern
    from pipeline.contracts.models import Alert, KitchenVerdict
    from tests.agents_support import kitchen_batches, kitchen_event

    cfg = load(write_sites(tmp_path / "sites.yaml", ["dev-0001"], ("k1",)))
    r: Runner[Any, Any] = Runner(kitchen_concern(cfg), {}, 1, arrived_ms=lambda: 0)
    outs: list[Any] = []
    for _, v in kitchen_batches([kitchen_event("k1", "e1", T0, "no_hat")], 1):
        outs += r.on_record(v, 0).outputs
    outs += r.on_record(tick(T0 + 2 * 60_000), 0).outputs
    (opened,) = [o for o in outs if getattr(o, "rule", "").startswith("kitchen.hygiene")]
    verdict = KitchenVerdict(kitchen="k1", site=opened.site, alert_id=opened.alert_id, verdict="false_positive",
                             by="st-1", at_ms=T0 + 86_400_000)  # fmt: skip
    res = r.on_record(records.kitchen_verdicts_value([verdict.model_dump(mode="json")]), 0)
    (closed,) = res.outputs
    assert isinstance(closed, Alert)
    assert closed.alert_id == opened.alert_id and closed.state.value == "resolved" and not res.dead_letters
    assert closed.evidence["verdict_by"] == "st-1" and r.stats.duplicates == 0
    (state,) = [s for _, s in r.states(0)]
    assert state.hygiene == () and state.frontier < T0 + 86_400_000, "a verdict does not move event time"
    bad = r.on_record(records.kitchen_verdicts_value([{"kitchen": "k1", "alert_id": 7}]), 0)
    assert [d.reason_code for d in bad.dead_letters] == ["worker.bad_item"] and not bad.outputs


class FailingAcks(FlakyBatches):
    """Takes the first ``failing`` hand-overs, but Kafka's acks of them fail; then Kafka takes everything."""

    failing = 0

    def _hand(self, topic: str, values: list[bytes]) -> asyncio.Future[Any]:
        self.calls += 1
        self.handed += len(values)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.calls <= self.failing:
            fut.set_exception(NotEnoughReplicasError())
        else:
            fut.set_result(None)
            self.taken += [(topic, v) for v in values]
        return fut


async def test_outputs_whose_acks_fail_are_sent_again_when_settled(tmp_path: Path, monkeypatch: Any) -> None:
    r = runner(tmp_path)
    for _, v in batches([device_reading("dev-0001", 1, T0, 4.0)], 1):
        r.on_record(v, 0)
    result = r.on_record(tick(T0 + 100 * STEP_MS), 0)
    assert result.outputs
    monkeypatch.setattr(asyncio, "sleep", _no_wait)
    batches_ = FailingAcks()
    topics = Topics(prefix="t", partitions=1)
    batches_.failing = len({encode_output(o)[0] for o in result.outputs})  # every first batch: one a topic
    settle = await KafkaOutputs(batches_, topics).send(result)  # type: ignore[arg-type]
    assert batches_.handed == len(result.outputs) and not batches_.taken  # handed over, not acknowledged yet
    await settle()
    sent = [serde.loads(v)["alert_id"] for t, v in batches_.taken if t == topics.alerts]
    assert set(sent) == {o.alert_id for o in result.outputs if hasattr(o, "alert_id")}


class OrderedWriter:
    """A :class:`TableWriter` stand-in that records what happens in which order."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def write(self, partition: int, records: list[tuple[bytes, bytes]], context: Any) -> None:
        if records:
            self.log.append(f"write p{partition} " + ",".join(k.decode() for k, _ in records))

    async def settle(self, partition: int) -> None:
        self.log.append(f"settle p{partition}")

    def settled(self, partition: int) -> bool:
        return True


class OneDirty:
    def __init__(self, key: bytes) -> None:
        self.key = key

    def take(self, partition: int) -> list[tuple[bytes, bytes]]:
        return [(self.key, b"state")]


async def test_release_writes_states_only_after_their_outputs_are_in_kafka() -> None:
    """The pipelined outputs (the agent processes the next record while Kafka acknowledges the last one's):
    the table must never hold a state whose outputs Kafka might not have, and records are acked last."""
    from pipeline.agents.faust.durable import Pending

    log: list[str] = []
    pending = Pending(OrderedWriter(log))  # type: ignore[arg-type]

    async def ack(event: Any) -> bool:
        log.append(f"ack {event}")
        return True

    pending.ack = ack

    async def settled() -> None:
        log.append("outputs in kafka")

    pending.hold(0, "r1", 10, flush_interval_s=99, flush_items=99)
    pending.sent(0, settled, [(b"dev-1", b"after-its-alert")])
    assert log == []  # nothing written while the outputs may still be on their way
    await pending.release(OneDirty(b"dev-2"), 0)
    assert log == ["outputs in kafka", "write p0 dev-1", "write p0 dev-2", "settle p0", "ack r1"]


async def test_revoked_partition_forgets_its_unsettled_outputs() -> None:
    from pipeline.agents.faust.durable import Pending

    log: list[str] = []
    pending = Pending(OrderedWriter(log))  # type: ignore[arg-type]

    async def never() -> None:
        raise AssertionError("a revoked partition's outputs are not waited for")

    pending.sent(3, never, [(b"dev-9", b"s")])
    pending.drop([1, 3])
    await pending.settle_sent()
    assert log == []


class ChangelogTable:
    """What :class:`TableWriter` uses of a Faust table: a key-by-key store and the changelog's name."""

    class Store(dict[bytes, bytes]):
        persisted: dict[Any, int]

        def set_persisted_offset(self, tp: Any, offset: int) -> None:
            self.persisted[tp] = offset

    class Topic:
        def get_topic_name(self) -> str:
            return "states-changelog"

    def __init__(self) -> None:
        self.data = self.Store()
        self.data.persisted = {}
        self.changelog_topic = self.Topic()


class Record:
    """A held event (Faust's current event is a weak reference to it while its states are written)."""

    def __init__(self, name: str) -> None:
        self.name = name


class HeldAcks:
    """A :class:`Pending` over a real :class:`TableWriter` whose changelog batches Kafka acknowledges (or
    refuses) when the test says so."""

    def __init__(self) -> None:
        from pipeline.agents.faust.changelog import TableWriter
        from pipeline.agents.faust.durable import Pending

        self.table = ChangelogTable()
        self.batches: list[asyncio.Future[int]] = []
        #: The records of each batch handed over, in the order of ``batches``.
        self.sent: list[list[tuple[bytes, bytes]]] = []
        self.writer = TableWriter(self.table, self.send, retry_s=0.0)
        self.pending = Pending(self.writer)
        self.acked: list[str] = []

        async def ack(event: Any) -> bool:
            self.acked.append(event.name)
            return True

        self.pending.ack = ack

    async def send(self, topic: str, partition: int, records: list[tuple[bytes, bytes]]) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.batches.append(future)
        self.sent.append(records)
        return future

    def hold(self, partition: int, *events: str) -> None:
        for event in events:
            self.pending.hold(partition, Record(event), 1, flush_interval_s=99, flush_items=99)


async def test_the_agents_release_acks_its_records_once_the_changelog_has_them_without_waiting_for_it() -> None:
    """The agent flushes and goes on with the next record; the flushed records are acked (committable) only
    once Kafka has the batch with their states, by a later :meth:`Pending.ack_settled`."""
    kit = HeldAcks()
    kit.hold(0, "r1", "r2")
    await kit.pending.release(OneDirty(b"dev-1"), 0, wait=False)  # returns with the batch unacknowledged
    assert kit.table.data == {} and len(kit.batches) == 1  # the local store waits for Kafka too
    assert kit.acked == [] and kit.pending.holds(0)
    await kit.pending.ack_settled()
    assert kit.acked == []  # Kafka has not acknowledged the batch yet
    kit.batches[0].set_result(41)
    await kit.pending.ack_settled()
    assert kit.acked == ["r1", "r2"] and not kit.pending.holds(0)
    assert kit.table.data == {b"dev-1": b"state"}
    assert list(kit.table.data.persisted.values()) == [41]


async def test_the_local_store_only_ever_holds_what_kafka_has_of_the_changelog() -> None:
    """A worker killed between handing a batch to Kafka and Kafka's ack must not restart with that batch in its
    local files: Faust's recovery applies the changelog records past the persisted offset (older batches) over
    them, and the table comes back mixed, some subjects older than the partition clock written with them (a CI
    run of the kill -9 test during store-and-forward re-runs lost 256 alert events that way). So the local store
    is written batch by batch, in order, as Kafka acknowledges each."""
    kit = HeldAcks()
    writer = kit.writer
    await writer.write(0, [(b"dev-1", b"old"), (b"\x00clock/0", b"1")], contextlib.nullcontext)
    await writer.write(0, [(b"dev-2", b"new"), (b"\x00clock/0", b"2")], contextlib.nullcontext)
    await writer.write(0, [(b"dev-1", b"newer")], contextlib.nullcontext)
    assert kit.table.data == {}  # handed over, nothing acknowledged
    settling = asyncio.create_task(writer.settle(0))
    kit.batches[1].set_result(12)  # acknowledged out of order: still applied in order
    for _ in range(3):
        await asyncio.sleep(0)
    assert kit.table.data == {}
    kit.batches[0].set_result(10)
    for _ in range(3):
        await asyncio.sleep(0)
    # What a kill -9 now leaves in the files: the first two batches, as in the changelog; not the third.
    assert kit.table.data == {b"dev-1": b"old", b"dev-2": b"new", b"\x00clock/0": b"2"}
    assert kit.table.data.persisted == {}  # recovery re-reads all three from the changelog
    kit.batches[2].set_result(13)
    await settling
    assert kit.table.data == {b"dev-1": b"newer", b"dev-2": b"new", b"\x00clock/0": b"2"}
    assert list(kit.table.data.persisted.values()) == [13]


async def test_a_flushed_batch_kafka_refused_is_sent_again_and_its_records_acked_by_the_timers_wait() -> None:
    from aiokafka.errors import KafkaTimeoutError

    kit = HeldAcks()
    kit.hold(2, "r1")
    await kit.pending.release(OneDirty(b"dev-1"), 2, wait=False)
    kit.batches[0].set_exception(KafkaTimeoutError())
    await kit.pending.ack_settled()
    assert kit.acked == []  # a refused batch is never taken for acknowledged
    await kit.pending.settle_flushed(older_than_s=60.0)
    assert kit.acked == [] and len(kit.batches) == 1  # not yet stale: the timer does not wait for it

    async def kafka_takes_the_resend() -> None:
        while len(kit.batches) < 2:
            await asyncio.sleep(0)
        kit.batches[1].set_result(7)

    helper = asyncio.create_task(kafka_takes_the_resend())
    await kit.pending.settle_flushed(older_than_s=0.0)
    await helper
    assert kit.acked == ["r1"] and not kit.pending.holds(2)


_write = st.lists(st.tuples(st.sampled_from([b"dev-1", b"dev-2", b"dev-3", b"\x00clock/0"]), st.binary(max_size=3)))
_step: st.SearchStrategy[tuple[str, list[tuple[bytes, bytes]]]] = st.one_of(
    st.tuples(st.just("write"), _write),  # a flush or a subject written ahead: handed to Kafka
    st.tuples(st.just("ack"), st.just([])),  # Kafka appends the oldest batch it does not have yet
    st.tuples(st.just("settle"), st.just([])),  # the agent's ack_settled(): settles once every batch is in
)


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(_step, max_size=30))
def test_after_a_kill_at_any_point_recovery_restores_exactly_what_the_changelog_holds(
    steps: list[tuple[str, list[tuple[bytes, bytes]]]],
) -> None:
    """Any interleaving of writes, Kafka's appends and settles, then a kill -9: what Faust's recovery makes of the
    local store (the changelog records past the persisted offset applied over it, in order) is the changelog's
    own last value per key, never a mix with a batch Kafka does not have."""

    async def run() -> None:
        kit = HeldAcks()
        changelog: list[tuple[int, bytes, bytes]] = []  # (offset, key, value) of the batches Kafka appended
        appended = 0
        for op, pairs in steps:
            if op == "write":
                await kit.writer.write(0, pairs, contextlib.nullcontext)
            elif op == "ack" and appended < len(kit.batches):
                # Kafka appends batches in the order they were sent (one idempotent producer, one partition).
                changelog += [(len(changelog), k, v) for k, v in kit.sent[appended]]
                kit.batches[appended].set_result(len(changelog) - 1)
                appended += 1
            elif op == "settle" and kit.writer.settled(0):
                await kit.writer.settle(0)
        # kill -9 here; the restart's recovery:
        table = dict(kit.table.data)
        persisted = kit.table.data.persisted.get(TP("states-changelog", 0), -1)
        for offset, key, value in changelog:
            if offset > persisted:
                table[key] = value
        assert table == {k: v for _, k, v in changelog}

    asyncio.run(run())


async def test_records_of_an_earlier_flush_are_acked_before_the_next_ones() -> None:
    kit = HeldAcks()
    kit.hold(0, "r1")
    await kit.pending.release(OneDirty(b"dev-1"), 0, wait=False)
    kit.hold(0, "r2")
    kit.batches[0].set_result(1)

    async def acknowledge_the_second() -> None:
        while len(kit.batches) < 2:
            await asyncio.sleep(0)
        kit.batches[1].set_result(2)

    helper = asyncio.create_task(acknowledge_the_second())
    await kit.pending.release(OneDirty(b"dev-1"), 0)  # the timer's release: waits, and acks in offset order
    await helper
    assert kit.acked == ["r1", "r2"]


async def test_a_revoked_partition_never_acks_its_flushed_records() -> None:
    """Its next owner reads them again from the committed offset; an ack now would commit past them."""
    kit = HeldAcks()
    kit.hold(1, "r1")
    await kit.pending.release(OneDirty(b"dev-1"), 1, wait=False)
    kit.pending.drop([1])
    kit.writer.drop([1])
    kit.batches[0].set_result(5)
    await kit.pending.ack_settled()
    await kit.pending.settle_flushed(older_than_s=0.0)
    assert kit.acked == [] and not kit.pending.holds(1)
