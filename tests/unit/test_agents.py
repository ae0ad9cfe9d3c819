"""The agents' plumbing without Kafka: the Runner (state cache, table writes only on change, ticks, dead
letters, restart from the store) and the Faust agent itself through ``agent.test_context()`` (memory store)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pipeline import serde
from pipeline.agents.core import CLOCK_PREFIX, ListOutputs, Runner, clock_key, encode_output
from pipeline.agents.devices import device_concern
from pipeline.agents.faust.app import WorkerOptions, make_app
from pipeline.contracts import records
from pipeline.partitioner import partition_for
from pipeline.schemas import Alert
from pipeline.settings import Settings
from pipeline.siteconfig import load
from pipeline.testing import write_site_file
from pipeline.topics import Topics
from tests.agents_support import (
    SITE,
    STEP_MS,
    batches,
    cold_chain_scenario,
    device_names,
    device_reading,
    oracle,
    reading,
    threshold_concern,
    tick,
    write_sites,
)

P = 4
T0 = 1_700_000_000_000


def alerts_of(outputs: list[Any]) -> list[tuple[str, str, int]]:
    return [(o.alert_id, o.state.value, o.at_ms) for o in outputs if isinstance(o, Alert)]


class CountingStore(dict[bytes, bytes]):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.writes += not key.startswith(CLOCK_PREFIX)  # subjects' states only
        super().__setitem__(key, value)


def test_event_and_tick_paths_open_at_the_deadline_and_write_only_changes() -> None:
    store = CountingStore()
    runner: Runner[Any, Any] = Runner(threshold_concern(delay_ms=60_000), store, P, arrived_ms=lambda: 0)
    dev = "d1"
    p = partition_for(dev, P)
    [(_, rec)] = batches([reading(dev, 0, T0, 9.0), reading(dev, 1, T0 + 10_000, 9.5)], P)
    assert runner.on_record(rec, p).outputs == []
    assert runner.flush() == 1, "two readings of one device in one record: one table write"
    # Nothing due yet: the tick leaves the state object alone, so nothing is written.
    assert runner.tick(p, T0 + 30_000).outputs == [] and runner.flush() == 0
    # The tick that passes the deadline opens the alert at the deadline, not at the tick's time.
    [alert] = runner.tick(p, T0 + 600_000).outputs
    assert isinstance(alert, Alert) and alert.at_ms == T0 + 60_000 and alert.subject == dev
    assert runner.flush() == 1 and store.writes == 2
    assert runner.stats.alerts == 1 and runner.stats.table_writes == 2


def test_duplicates_are_counted_and_change_nothing(tmp_path: Path) -> None:
    site = write_sites(tmp_path / "sites.yaml", ["dev-0001"])
    runner: Runner[Any, Any] = Runner(device_concern(load(site)), {}, P, arrived_ms=lambda: 0)

    items = [device_reading("dev-0001", i, T0 + i * 60_000, 4.0) for i in range(5)]
    [(p, rec)] = batches(items, P)
    runner.on_record(rec, p)
    runner.flush()
    again = runner.on_record(rec, p)
    assert again.outputs == [] and runner.flush() == 0
    assert runner.stats.duplicates == 5 and runner.stats.items == 10


def test_bad_records_and_items_are_dead_lettered_not_raised() -> None:
    runner: Runner[Any, Any] = Runner(threshold_concern(), {}, P, arrived_ms=lambda: 42)
    good = reading("d1", 0, T0, 4.0)
    wrong_partition = next(d for d in (f"x{i}" for i in range(50)) if partition_for(d, P) != partition_for("d1", P))
    p = partition_for("d1", P)
    cases = {
        b"{not json": "worker.bad_record",
        serde.dumps({"v": 2, "kind": "readings", "items": []}): "worker.bad_record",
        records.kitchen_events_value([]): "worker.bad_record",
        serde.dumps({"v": 1, "kind": "tick"}): "worker.bad_tick",
        records.readings_value([{"device": "d1", "seq": 1}]): "worker.bad_item",
        records.readings_value([{**good, "device": wrong_partition}]): "worker.bad_item",
    }
    for value, code in cases.items():
        [dead] = runner.on_record(value, p).dead_letters
        assert dead.reason_code == code and dead.source == "mqtt" and dead.arrived_ms == 42
    # The good item next to a bad one is still processed.
    mixed = records.readings_value([{"device": "d1"}, good])
    result = runner.on_record(mixed, p)
    assert len(result.dead_letters) == 1 and runner.flush() == 1
    assert runner.stats.dead_letters == len(cases) + 1


def test_restart_from_the_store_gives_the_uninterrupted_outputs(tmp_path: Path) -> None:
    """Cut the stream anywhere, rebuild a runner from the stored bytes: the same alerts as one run."""
    sites = write_sites(tmp_path / "sites.yaml", device_names(30))
    concern = device_concern(load(sites))
    records = [r for step in cold_chain_scenario(30, 30, P, T0) for r in step]
    want = alerts_of(oracle(records, P, concern).outputs)
    assert len(want) > 10
    for cut in (len(records) // 3, len(records) // 2 + 1):
        store: dict[bytes, bytes] = {}
        first: Runner[Any, Any] = Runner(concern, store, P, arrived_ms=lambda: 0)
        got: list[Any] = []
        for p, value in records[:cut]:
            got += first.on_record(value, p).outputs
            first.flush()
        second: Runner[Any, Any] = Runner(concern, store, P, arrived_ms=lambda: 0)
        assert second.load(store.items(), range(P)) == len([k for k in store if not k.startswith(CLOCK_PREFIX)])
        for p, value in records[cut:]:
            got += second.on_record(value, p).outputs
            second.flush()
        assert sorted(alerts_of(got)) == sorted(want)


def test_a_restarted_runner_resumes_the_partition_clock(tmp_path: Path) -> None:
    """Items are processed at max(partition clock, item time), and an upload arriving after the clock moved on
    is the rest of a store-and-forward batch: the logger is heard again at the frontier the clock set. A runner
    restored from the store after the last tick (a takeover, before the next tick is read) must resolve the
    offline alert where the uninterrupted run did, so the clock is stored with the states."""
    sites = write_sites(tmp_path / "sites.yaml", ["dev-0001"])
    concern = device_concern(load(sites))
    p, m = partition_for("dev-0001", P), 60_000
    last = T0 + 11 * STEP_MS
    live = [device_reading("dev-0001", i, T0 + i * STEP_MS, 4.0) for i in range(12)]
    before = [*batches(live, P), *((p, tick(last + k * m)) for k in range(5, 61, 5))]  # silent for an hour
    upload = [device_reading("dev-0001", 12 + i, last + (i + 1) * STEP_MS, 4.0) for i in range(11)]
    after = [*batches(upload, P), (p, tick(last + 65 * m)), (p, tick(last + 90 * m))]

    def run(restart: bool) -> list[tuple[str, str, int]]:
        store: dict[bytes, bytes] = {}
        runner: Runner[Any, Any] = Runner(concern, store, P, arrived_ms=lambda: 0)
        got: list[Any] = []
        for part, value in before:
            got += runner.on_record(value, part).outputs
        runner.flush()
        if restart:
            assert int(store[clock_key(p)]) == last + 60 * m
            runner = Runner(concern, store, P, arrived_ms=lambda: 0)
            runner.load(store.items(), range(P))
        for part, value in after:
            got += runner.on_record(value, part).outputs
        return [(a.rule, a.state.value, (a.at_ms - last) // m) for a in got if isinstance(a, Alert)]

    one_run = run(False)
    assert ("liveness.offline", "resolved", 59) in one_run, "heard again at the clock's frontier (60 - 1 min)"
    assert run(True) == one_run


def test_a_whole_partition_take_carries_the_clock_once_it_moved() -> None:
    runner: Runner[Any, Any] = Runner(threshold_concern(delay_ms=5_000), {}, P, arrived_ms=lambda: 0)
    dev = "d1"
    p = partition_for(dev, P)
    [(_, rec)] = batches([reading(dev, 0, T0, 9.0)], P)
    runner.on_record(rec, p)
    assert [k for k, _ in runner.take(p, [dev.encode()])] == [dev.encode()], "a subset take: no clock"
    runner.tick(p, T0 + 1_000)
    assert [k for k, _ in runner.take(p)] == [clock_key(p)]
    assert runner.take(p) == [], "unchanged since: nothing"
    runner.tick(p, T0 + 500)
    assert runner.take(p) == [], "a tick behind the clock does not move it"


def test_ticks_visit_subjects_in_order_and_forget_drops_partitions() -> None:
    runner: Runner[Any, Any] = Runner(threshold_concern(delay_ms=5_000), {}, 1, arrived_ms=lambda: 0)
    [(_, rec)] = batches([reading(d, 0, T0, 20.0) for d in ("zeta", "alpha", "mid")], 1)
    runner.on_record(rec, 0)
    assert [o.subject for o in runner.tick(0, T0 + 5_000).outputs] == ["alpha", "mid", "zeta"]
    runner.forget([0])
    assert runner.subjects() == 0 and not runner.loaded(0)


def test_output_records_are_keyed_by_site() -> None:
    runner: Runner[Any, Any] = Runner(threshold_concern(delay_ms=0), {}, P, arrived_ms=lambda: 0)
    [(p, rec)] = batches([reading("d1", 0, T0, 20.0, site="S07")], P)
    [alert] = runner.on_record(rec, p).outputs
    which, key, value = encode_output(alert)
    assert (which, key) == ("alerts", b"S07")
    assert serde.loads(value)["alert_id"] == alert.alert_id  # type: ignore[union-attr]


@pytest.mark.timeout(30)
async def test_faust_agent_with_test_context(tmp_path: Path) -> None:
    """The real agent body (table, cache, outputs) on Faust's test channel with the memory store."""
    outputs = ListOutputs()
    topics = Topics(prefix="unit", partitions=P)
    changelog: list[tuple[str, int, bytes, bytes]] = []

    async def send_changelog(topic: str, partition: int, records: list[tuple[bytes, bytes]]) -> Any:
        # The changelog producer is Kafka's; here we only record what the worker would send, in one batch.
        changelog.extend((topic, partition, k, v) for k, v in records)
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        done.set_result(len(changelog) - 1)
        return done

    worker = make_app(
        Settings(state_dir=tmp_path),
        topics,
        [threshold_concern(delay_ms=60_000)],
        WorkerOptions(store="memory", clock="replay"),
        outputs=outputs,
        changelog=send_changelog,
    )
    worker.app.finalize()
    table = worker.tables["devices"]
    records = batches([reading("d1", i, T0 + i * 30_000, 10.0) for i in range(4)], P, per_record=2)
    p = records[0][0]
    async with worker.agents["devices"].test_context() as agent:
        for partition, value in records:
            await agent.put(value, partition=partition)
        await agent.put(tick(T0 + 600_000), partition=p)
        await agent.put(records[0][1], partition=p)  # a redelivered record: duplicates only
    alerts = [o for r in outputs.results for o in r.outputs if isinstance(o, Alert)]
    assert [(a.state.value, a.at_ms) for a in alerts] == [("open", T0 + 60_000)]
    # Writes are coalesced per flush interval; the subject that produced an output is written at once.
    assert [(t, p_, k) for t, p_, k, _ in changelog] == [(table.changelog_topic.get_topic_name(), p, b"d1")]
    # The local store takes a batch once Kafka has it, when the partition's records are next acked.
    assert b"d1" not in table
    await worker.pendings["devices"].writer.settle(p)
    assert table[b"d1"] == changelog[-1][3]
    stats = worker.runners["devices"].stats
    assert (stats.records, stats.items, stats.ticks, stats.duplicates) == (4, 6, 1, 2)
    # Each part the worker times was timed: the records, the state written with the alert, the alert itself.
    assert min(stats.busy_detect_seconds, stats.busy_encode_seconds, stats.busy_store_seconds) > 0
    assert stats.busy_outputs_seconds > 0


def test_busy_counters_time_each_record_and_each_take_by_the_runners_clock() -> None:
    """``busy_detect_seconds`` grows by one clock interval a record (ticks, bad records and duplicates too),
    ``busy_encode_seconds`` by one a take that encodes states, and neither by anything else."""
    ticks = iter(range(0, 1_000_000, 1))

    def clock() -> float:
        return float(next(ticks)) ** 2  # each interval longer than the last: a double count would show

    runner: Runner[Any, Any] = Runner(threshold_concern(), {}, P, arrived_ms=lambda: 0, busy_clock=clock)
    p = partition_for("d1", P)
    [(_, rec)] = batches([reading("d1", 0, T0, 9.0)], P)
    runner.on_record(rec, p)  # clock reads 0, 1: 1
    runner.on_record(b"not json", p)  # 2, 3: 5
    runner.on_record(tick(T0 + 1_000), p)  # 4, 5: 9
    assert runner.stats.busy_detect_seconds == 1 + 5 + 9
    assert runner.stats.busy_encode_seconds == 0
    assert [k for k, _ in runner.take(p)] == [b"d1", clock_key(p)]  # 6, 7: 13
    assert runner.take(p) == []  # nothing changed since: nothing encoded, no clock read
    assert runner.stats.busy_encode_seconds == 13 and runner.stats.busy_detect_seconds == 15


def test_shared_rule_classes_behave_like_one_detector_per_device(tmp_path: Path) -> None:
    """devices.py shares one resolved rule set per (site, asset, interval); outputs must not change."""
    from pipeline.detectors.device import DeviceDetector
    from pipeline.detectors.run import run_device_stream
    from pipeline.siteconfig import resolve_device_rules

    names = device_names(12)
    cfg = load(write_sites(tmp_path / "sites.yaml", names))
    records = [r for step in cold_chain_scenario(12, 30, 1, T0) for r in step]
    got = oracle(records, 1, device_concern(cfg)).outputs
    want: list[Any] = []
    items = [it for _, v in records for it in serde.loads(v).get("items", [])]
    ticks = [serde.loads(v)["now_ms"] for _, v in records if serde.loads(v)["kind"] == "tick"]
    for name in names:
        mine = [it for it in items if it["device"] == name]
        det = DeviceDetector(resolve_device_rules(cfg, "S01", name))
        want += run_device_stream(det, mine, ticks)
    assert sorted(alerts_of(got)) == sorted(alerts_of(want)) and len(alerts_of(got)) > 5
    assert {o.subject for o in got} == set(names)


def test_an_asset_per_device_resolves_once_per_profile_and_keeps_customised_assets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usual layout, a logger per cold room: plain assets of one profile share one resolved rule set;
    an asset with overrides or a defrost schedule, or another interval, gets its own. Outputs equal one
    detector per device built from its own resolution."""
    from pipeline.agents import devices as devices_mod
    from pipeline.detectors.device import DeviceDetector
    from pipeline.detectors.run import run_device_stream
    from pipeline.siteconfig import resolve_device_rules

    names = device_names(12)
    special: dict[str, dict[str, Any]] = {
        names[0]: {"kind": "cold_room", "profile": "chilled", "overrides": {"high": {"limit": 12.0}}},
        names[1]: {"kind": "cold_room", "profile": "chilled", "defrost_schedule": ["02:00-02:30"]},
        names[2]: {"kind": "freezer", "profile": "frozen"},
    }
    devices = {d: {"asset": f"a-{d}", "interval_s": STEP_MS // 1000, "secret": f"s3cret-{d}"} for d in names[:-1]}
    devices[names[-1]] = {"asset": f"a-{names[-1]}", "interval_s": 60, "secret": "s3cret-last"}
    assets = {f"a-{d}": special.get(d, {"kind": "cold_room", "profile": "chilled"}) for d in names}
    doc = {"version": 1, "sites": {SITE: {"assets": assets, "devices": devices}}}
    cfg = load(write_site_file(tmp_path / "sites.yaml", doc))

    resolutions: list[str] = []

    def counting(cfg_: Any, site: str, device: str) -> Any:
        resolutions.append(device)
        return resolve_device_rules(cfg_, site, device)

    monkeypatch.setattr(devices_mod, "resolve_device_rules", counting)
    records = [r for step in cold_chain_scenario(12, 30, 1, T0) for r in step]
    got = oracle(records, 1, device_concern(cfg)).outputs
    # chilled plain (names[3..10]) once, the override, the schedule, the freezer, the other interval.
    assert sorted(resolutions) == sorted([names[0], names[1], names[2], names[3], names[-1]])
    want: list[Any] = []
    items = [it for _, v in records for it in serde.loads(v).get("items", [])]
    ticks = [serde.loads(v)["now_ms"] for _, v in records if serde.loads(v)["kind"] == "tick"]
    for name in names:
        det = DeviceDetector(resolve_device_rules(cfg, SITE, name))
        want += run_device_stream(det, [it for it in items if it["device"] == name], ticks)
    assert sorted(alerts_of(got)) == sorted(alerts_of(want)) and len(alerts_of(got)) > 5
    high = {o.subject for o in got if isinstance(o, Alert) and o.rule == "coldchain.high"}
    assert names[0] not in high and high & set(names[3:-1]), "10 °C breaches a chilled asset, not one limited at 12 °C"
