"""`larder worker` through real Kafka: record batches in, alert events out; kill -9 and restart; two workers and
one killed. The worker runs as a subprocess (``python -m pipeline.cli worker``) with the production detectors
and a generated site file, and its outputs are compared with an uninterrupted run of the same detectors over
the same records (the oracle: :class:`pipeline.agents.core.Runner` over a dict)."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline import serde
from pipeline.agents.devices import device_concern
from pipeline.agents.kitchen import kitchen_concern
from pipeline.contracts import records
from pipeline.contracts.models import Alert
from pipeline.partitioner import partition_for
from pipeline.replay.timeline import wait_processed
from pipeline.services import free_port
from pipeline.settings import Settings
from pipeline.siteconfig import load
from pipeline.topics import Topics
from tests.agents_support import (
    STEP_MS,
    WorkerProcess,
    batches,
    cold_chain_scenario,
    device_names,
    device_reading,
    kitchen_batches,
    kitchen_event,
    oracle,
    outage_upload_scenario,
    scrape_metrics,
    tick,
    write_sites,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

T0 = 1_700_000_000_000


class Worker(WorkerProcess):
    """One `larder worker` subprocess with its own data folder and log file."""

    def __init__(self, topics: Topics, tmp: Path, name: str, *args: str, level: str | None = None) -> None:
        # LARDER_TEST_WORKER_LOG=info keeps Faust's rebalance and recovery steps in the workers' logs.
        level = level or os.environ.get("LARDER_TEST_WORKER_LOG", "warn")
        super().__init__(["worker"], topics, tmp / "sites.yaml", tmp / name, tmp / f"{name}.log", "-l", level, *args)
        self._seen = 0

    def start(self) -> Worker:
        self._seen = len(self.lines())
        self._spawn()
        return self

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []

    async def assigned(self, timeout: float = 40.0, want: Callable[[str], bool] = lambda line: True) -> str:
        """Wait for the worker's "assigned ..." line (printed after table recovery) and return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n" + "\n".join(self.lines()[-30:]))
            for line in reversed(self.lines()[self._seen :]):
                if "assigned devices=" in line:
                    owned = line.split("assigned ", 1)[1].strip()
                    if want(owned):
                        return owned
                    break
            await asyncio.sleep(0.2)
        raise AssertionError("worker not assigned in time:\n" + "\n".join(self.lines()[-30:]))


async def produce(settings: Settings, topic: str, records: list[tuple[int, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        await _send(producer, topic, records)
    finally:
        await producer.stop()


async def _send(producer: AIOKafkaProducer, topic: str, records: list[tuple[int, bytes]]) -> None:
    futs = []
    for p, value in records:
        try:
            key = serde.loads(value)["items"][0]["device"].encode()
        except (ValueError, KeyError, IndexError):
            key = None
        futs.append(await producer.send(topic, value, key=key, partition=p))
    await asyncio.gather(*futs)


class Collector:
    """Reads a topic from the beginning in the background."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=settings.kafka.bootstrap_servers, auto_offset_reset="earliest"
        )
        self.values: list[dict[str, Any]] = []
        self.keys: list[bytes | None] = []
        self.partitions: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                self.values.extend(serde.loads(m.value) for m in msgs)
                self.keys.extend(m.key for m in msgs)
                self.partitions.extend(m.partition for m in msgs)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await self.consumer.stop()

    async def until(
        self,
        cond: Callable[[list[dict[str, Any]]], bool],
        timeout: float,
        want: Counter[tuple[str, str, int]] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond(self.values):
                return
            await asyncio.sleep(0.2)
        detail = ""
        if want is not None:
            # Say which way it went wrong: still missing (slow or lost) or different (a restarted delay).
            got = set(keyed(self.values))
            missing, extra = sorted(set(want) - got), sorted(got - set(want))
            detail = f"; {len(missing)} missing {missing[:5]}, {len(extra)} unexpected {extra[:5]}"
        raise AssertionError(f"timed out with {len(self.values)} values{detail}")

    async def settle(self, quiet: float = 2.0) -> None:
        """Wait until nothing new arrived for ``quiet`` seconds (late duplicates would show up here)."""
        n = -1
        while n != len(self.values):
            n = len(self.values)
            await asyncio.sleep(quiet)


def keyed(values: list[dict[str, Any]]) -> Counter[tuple[str, str, int]]:
    return Counter((v["alert_id"], v["state"], v["at_ms"]) for v in values)


def repeats(values: list[dict[str, Any]]) -> int:
    """At-least-once may repeat an event after a crash (docs/agents.md); a repeat must be the identical event,
    so consumers that de-duplicate by (alert_id, state) see exactly the uninterrupted run."""
    first: dict[tuple[str, str], dict[str, Any]] = {}
    n = 0
    for v in values:
        k = (v["alert_id"], v["state"])
        if k in first:
            assert v == first[k], f"a repeated alert event differs from the first copy: {v} != {first[k]}"
            n += 1
        first.setdefault(k, v)
    return n


def expected(records: list[tuple[int, bytes]], partitions: int, sites: Path) -> Counter[tuple[str, str, int]]:
    result = oracle(records, partitions, device_concern(load(sites)))
    return Counter((a.alert_id, a.state.value, a.at_ms) for a in result.outputs if isinstance(a, Alert))


def flat(steps: list[list[tuple[int, bytes]]]) -> list[tuple[int, bytes]]:
    return [r for step in steps for r in step]


@pytest.fixture
def sites(tmp_path: Path) -> Path:
    return write_sites(tmp_path / "sites.yaml", device_names(200))


async def test_batches_in_alerts_out(live_stack: Settings, topics: Topics, tmp_path: Path, sites: Path) -> None:
    steps = cold_chain_scenario(devices=60, steps=30, partitions=topics.partitions, t0=T0)
    want = expected(flat(steps), topics.partitions, sites)
    assert {rule for rule in _rules(steps, topics.partitions, sites)} >= {"coldchain.high", "liveness.offline"}
    # A kitchen: stove on in the cook zone, nobody there -> kitchen.unattended once the warning delay passes.
    kitchen = kitchen_batches(
        [
            kitchen_event("k1", "e1", T0 + 1_000, "person_absent"),
            kitchen_event("k1", "e2", T0 + 2_000, "stove_on"),
        ],
        topics.partitions,
    ) + [(p, tick(T0 + 30 * 60_000)) for p in range(topics.partitions)]
    kitchen_want = [
        o for o in oracle(kitchen, topics.partitions, kitchen_concern(load(sites))).outputs if isinstance(o, Alert)
    ]
    assert kitchen_want, "the kitchen scenario must open an alert"
    bad = [
        (0, b"not json"),
        (1, records.readings_value([{"device": "dev-0001"}])),
    ]
    port = free_port()
    worker = Worker(topics, tmp_path, "w", "--clock", "replay", "--metrics-port", str(port)).start()
    try:
        await worker.assigned()
        async with (
            Collector(live_stack, topics.alerts) as alerts,
            Collector(live_stack, topics.deadletter) as dead,
            Collector(live_stack, topics.annotations) as notes,
        ):
            resent = steps[5][:1]  # a whole record again: every reading in it is a (device, seq) duplicate
            await produce(live_stack, topics.readings, [*flat(steps), *bad, *resent])
            await produce(live_stack, topics.kitchen_events, kitchen)
            everything = want + Counter((a.alert_id, a.state.value, a.at_ms) for a in kitchen_want)
            await alerts.until(lambda v: keyed(v) == everything, 40)
            await dead.until(lambda v: len(v) == 2, 10)
            await notes.until(lambda v: any(n["kind"] == "masked" for n in v), 10)
            await alerts.settle(1.5)
        assert keyed(alerts.values) == everything
        assert {d["reason_code"] for d in dead.values} == {"worker.bad_record", "worker.bad_item"}
        assert all(d["source"] == "mqtt" for d in dead.values)
        assert {v["site"] for v in alerts.values} == {"S01"}
        assert any(v["rule"].startswith("kitchen.") for v in alerts.values)
        # Outputs go out in record batches to explicit partitions: the partition Kafka's default partitioner
        # gives their key (the site), where the notifier's own alert events for that site go too.
        for out in (alerts, notes):
            assert set(out.keys) == {b"S01"}
            assert set(out.partitions) == {partition_for("S01", topics.partitions)}
        metrics = scrape_metrics(port)
        assert metrics['larder_worker_duplicates_total{concern="devices"}'] == len(serde.loads(resent[0][1])["items"])
        assert metrics['larder_worker_dead_letters_total{concern="devices"}'] == 2
        assert metrics['larder_worker_items_total{concern="kitchens"}'] == 2
        assert metrics['larder_worker_subjects{concern="devices"}'] == 60
        assert 'larder_worker_rewinds_total{concern="devices"}' in metrics
        assert "larder_worker_skip_acks_refused_total" in metrics
        # Where its time went: the detectors, and the states and alerts it wrote.
        for part in ("detect", "encode", "store", "outputs"):
            assert metrics[f'larder_worker_busy_{part}_seconds_total{{concern="devices"}}'] > 0, part
    finally:
        worker.stop()
    assert worker.proc is not None and worker.proc.returncode == 0, "\n".join(worker.lines()[-20:])


async def test_live_clock_ticks_open_alerts_of_silent_devices(
    live_stack: Settings, topics: Topics, tmp_path: Path, sites: Path
) -> None:
    """Live mode: no tick records are sent; the worker's own clock must open the offline alert of a device
    that went silent, stamped with the deadline (event time), not with the moment the timer ran."""
    now = int(time.time() * 1000)
    items = [device_reading("dev-0007", i, now - 3_600_000 + i * STEP_MS, 4.0) for i in range(3)]
    records = batches(items, topics.partitions)
    want = [
        a
        for a in oracle([*records, (records[0][0], tick(now))], topics.partitions, device_concern(load(sites))).outputs
        if isinstance(a, Alert) and a.rule == "liveness.offline"
    ]
    assert want
    worker = Worker(topics, tmp_path, "w", "--clock", "live", "--tick-interval", "0.5").start()
    try:
        await worker.assigned()
        async with Collector(live_stack, topics.alerts) as alerts:
            await produce(live_stack, topics.readings, records)
            await alerts.until(lambda v: any(a["rule"] == "liveness.offline" for a in v), 20)
        offline = [a for a in alerts.values if a["rule"] == "liveness.offline"]
        assert offline[0]["alert_id"] == want[0].alert_id
        assert offline[0]["at_ms"] == want[0].at_ms < now - 60_000
    finally:
        worker.stop()


@pytest.mark.parametrize("clock", ["replay", "live"])
async def test_idle_input_commits_everything(
    live_stack: Settings, topics: Topics, tmp_path: Path, sites: Path, clock: str
) -> None:
    """Records held for a coalesced table write must be released when the input goes quiet: after the last
    batch the worker group's committed offsets reach the end offsets within a few seconds (replay: nothing
    arrives any more; live: only the worker's own ticks), and every device's state is in the changelog."""
    steps = cold_chain_scenario(devices=40, steps=3, partitions=topics.partitions, t0=T0)
    devices = {it["device"].encode() for step in steps for _, v in step for it in serde.loads(v).get("items", [])}
    worker = Worker(topics, tmp_path, "w", "--clock", clock, "--tick-interval", "0.5").start()
    try:
        await worker.assigned()
        changelog = f"{topics.prefix}-worker-devices-state-changelog"
        async with Collector(live_stack, changelog) as states:
            for step in steps:  # a few batches well inside one flush interval, then silence
                await produce(live_stack, topics.readings, step)
                await asyncio.sleep(0.1)
            waited = await wait_processed(live_stack, topics, timeout=15)
            print(f"{clock}: committed the end offsets {waited:.1f} s after the last batch")
            assert waited < 8, "held records were not released while the input was idle"
        # Offsets commit only after the changelog is flushed, so the states are all there by now.
        assert devices <= set(states.keys)
    finally:
        worker.stop()
    assert worker.proc is not None and worker.proc.returncode == 0, "\n".join(worker.lines()[-20:])


#: Worker log lines that say what a restarted worker recovered (Faust's table recovery, the runner's loads).
RECOVERY_LOG = ("loaded", "ecover", "ighwater", "offset", "assigned", "WARN", "ERROR")


async def _kill9_mid_run(
    settings: Settings,
    topics: Topics,
    tmp_path: Path,
    steps: list[list[tuple[int, bytes]]],
    want: Counter[tuple[str, str, int]],
    kill_when: Callable[[list[dict[str, Any]]], bool],
    per_s: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Feed ``steps`` to a worker, kill -9 it once ``kill_when(alert events so far)``, restart it at once, and
    collect alert events until every expected one is there (then a little longer, for late repeats). Returns
    every alert event and those seen at the kill.

    The worker logs at info level (its table recovery and the states it loads per partition), and a run that
    does not converge fails with the tail of that log: such a failure, seen once in CI and not reproduced since,
    needs what the worker restored to be explained."""
    worker = Worker(topics, tmp_path, "w", "--clock", "replay", level="info").start()
    try:
        await worker.assigned()
        async with Collector(settings, topics.alerts) as alerts:
            feeder = asyncio.create_task(_feed(settings, topics.readings, steps, per_s=per_s))
            await alerts.until(kill_when, 90)
            worker.kill9()
            at_kill = list(alerts.values)
            worker.start()
            await worker.assigned()
            await feeder
            try:
                await alerts.until(lambda v: set(keyed(v)) == set(want), 60, want)
            except AssertionError as exc:
                # Both runs' recovery (changelog highwaters and offsets, the states loaded, what was re-read)
                # and anything the worker warned about.
                kept = [
                    line
                    for line in worker.lines()
                    if line.startswith(("|", "+")) or any(k in line for k in RECOVERY_LOG)
                ]
                killed = f"kill -9 after {len(at_kill)} alert events"
                log = "\n".join(kept[-200:])
                raise AssertionError(f"{exc}\n{killed}; the worker's recovery log:\n{log}") from None
            await alerts.settle(2.0)
        return alerts.values, at_kill
    finally:
        worker.stop()


async def test_kill9_restart_loses_and_duplicates_nothing(
    live_stack: Settings, topics: Topics, tmp_path: Path, sites: Path
) -> None:
    steps = cold_chain_scenario(devices=200, steps=40, partitions=topics.partitions, t0=T0, seed=11)
    want = expected(flat(steps), topics.partitions, sites)
    total = sum(want.values())
    values, at_kill = await _kill9_mid_run(
        live_stack, topics, tmp_path, steps, want, lambda v: len(v) >= total // 3, per_s=8
    )
    assert len(at_kill) < total * 0.8, "killed too late to test anything"
    print(f"kill -9 after {len(at_kill)} of {total} alert events; {repeats(values)} repeated")
    assert set(keyed(values)) == set(want), "lost or invented alert events"


async def test_kill9_during_retrospective_reruns_loses_and_duplicates_nothing(
    live_stack: Settings, topics: Topics, tmp_path: Path, sites: Path
) -> None:
    """Issue 25: store-and-forward uploads after outages, each hiding an excursion that only the re-run from the
    checkpoint finds. The worker is killed once retrospective alerts are coming out, i.e. with devices holding
    checkpoints, histories and pending late readings in their changelogged state: after the restart the alert
    events are those of the uninterrupted run (ids, states, times), retrospective findings included."""
    steps = outage_upload_scenario(devices=200, steps=48, partitions=topics.partitions, t0=T0, seed=3)
    result = oracle(flat(steps), topics.partitions, device_concern(load(sites)))
    retro = {
        (a.alert_id, a.state.value)
        for a in result.outputs
        if isinstance(a, Alert) and (a.evidence or {}).get("retrospective")
    }
    want = expected(flat(steps), topics.partitions, sites)
    assert len(retro) >= 40, "the scenario must make the worker re-run late data"

    def retro_seen(values: list[dict[str, Any]]) -> int:
        return sum(1 for v in values if (v["alert_id"], v["state"]) in retro)

    values, at_kill = await _kill9_mid_run(
        live_stack, topics, tmp_path, steps, want, lambda v: retro_seen(v) >= 4, per_s=6
    )
    assert retro_seen(at_kill) < len(retro) * 0.8, "killed too late: most re-runs were done"
    print(
        f"kill -9 after {retro_seen(at_kill)} of {len(retro)} retrospective alert events; "
        f"{repeats(values)} of {len(values)} events repeated"
    )
    assert set(keyed(values)) == set(want), "lost or invented alert events"


async def test_rebalance_survivor_restores_state(
    live_stack: Settings, topics: Topics, tmp_path: Path, sites: Path
) -> None:
    steps = cold_chain_scenario(devices=200, steps=40, partitions=topics.partitions, t0=T0, seed=5)
    want = expected(flat(steps), topics.partitions, sites)
    half = 22
    a = Worker(topics, tmp_path, "a", "--clock", "replay").start()
    b = Worker(topics, tmp_path, "b", "--clock", "replay")
    try:
        await a.assigned()
        b.start()

        def split(line: str) -> bool:
            return line.startswith("devices=") and line.split()[0] not in ("devices=0,1,2,3", "devices=-")

        await b.assigned(want=split)
        await a.assigned(want=split)
        async with Collector(live_stack, topics.alerts) as alerts:
            await produce(live_stack, topics.readings, flat(steps[:half]))
            first_half = expected(flat(steps[:half]), topics.partitions, sites)
            await alerts.until(lambda v: set(keyed(v)) == set(first_half), 30, first_half)
            b.kill9()
            killed = time.monotonic()
            # Breaches under way in b's partitions continue in the second half: their delays must keep their
            # original start (the alert id hashes the opening time, so a restarted delay changes the id).
            await produce(live_stack, topics.readings, flat(steps[half:]))
            await a.assigned(want=lambda line: line.split()[0] == "devices=0,1,2,3", timeout=40)
            took_over = time.monotonic() - killed
            await alerts.until(lambda v: set(keyed(v)) == set(want), 40, want)
            complete = time.monotonic() - killed
            await alerts.settle(2.0)
        got = keyed(alerts.values)
        print(
            f"failover: b's partitions on a {took_over:.1f} s after the kill, every alert event after "
            f"{complete:.1f} s; {repeats(alerts.values)} repeated alert events"
        )
        assert set(got) == set(want), "lost or invented alert events"
    finally:
        a.stop()
        b.stop()


def _rules(steps: list[list[tuple[int, bytes]]], partitions: int, sites: Path) -> set[str]:
    result = oracle(flat(steps), partitions, device_concern(load(sites)))
    return {o.rule for o in result.outputs if hasattr(o, "rule")}


async def _feed(settings: Settings, topic: str, steps: list[list[tuple[int, bytes]]], per_s: float) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for step in steps:
            await _send(producer, topic, step)
            await asyncio.sleep(1 / per_s)
    finally:
        await producer.stop()
