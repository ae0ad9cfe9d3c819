"""`larder grade worker` through real Kafka: a simulated month of alert events in, per-site states in the table's
changelog out, equal to the pure fold of the same events (and of a month of rapid-test results on the rapid-tests
topic, whose pass rate the rollup shows); while Kafka refuses the table's changelog writes no
source offset is committed (issue 22: Faust committed them anyway, and a worker killed then lost those states);
killed with -9 and restarted with its local table files gone, it resumes (restores its table from the
changelog, reads on from its committed offsets) and ends equal to the fold of the whole month; a bad record is
dead-lettered; the CLI shows the grades, the override and its audit record.
"""

from __future__ import annotations

import asyncio
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from pipeline import serde
from pipeline.alerts.kafkaio import read_to_end
from pipeline.cli import app
from pipeline.contracts.records import rapid_tests_value, tick_value
from pipeline.grading import evidence, score, simulate, store
from pipeline.grading.evidence import DAY_MS, Override
from pipeline.grading.topics import GradingTopics
from pipeline.services import free_port
from pipeline.settings import Settings
from pipeline.siteconfig import SiteConfig
from pipeline.topics import Topics
from tests.agents_support import WorkerProcess, scrape_metrics

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
START = 1_790_035_200_000 - 1_790_035_200_000 % DAY_MS
DAYS = 30


def rapid_batches(items: list[dict[str, Any]], size: int = 7) -> list[tuple[bytes | None, bytes]]:
    """The rapid-tests topic's records of ``items``: record batches of one site's consecutive items, keyed by
    site, as the hooks and the MQTT bridge write them."""
    out: list[tuple[bytes | None, bytes]] = []
    run: list[dict[str, Any]] = []
    for d in [*items, None]:
        if run and (d is None or d["site"] != run[0]["site"] or len(run) == size):
            out.append((run[0]["site"].encode(), rapid_tests_value(run)))
            run = []
        if d is not None:
            run.append(d)
    return out


class GradingWorker(WorkerProcess):
    def __init__(self, tmp: Path, topics: Topics, sites: Path, *args: str) -> None:
        super().__init__(["grade", "worker"], topics, sites, tmp / "grading-data", tmp / "grading.log", *args)

    def start(self) -> None:
        self._spawn()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


async def produce(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        # Kafka's default partitioner (murmur2 of the key), as the worker's and notifier's producers use.
        futs = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def changelog_refuses_writes(settings: Settings, gt: GradingTopics, refuse: bool) -> None:
    """Create the grading table's changelog (as Faust would: compacted, the sources' partition count) with a
    record-batch limit no site state fits in, or lift the limit: Kafka then refuses, or accepts, every write."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    configs = {"cleanup.policy": "compact", "max.message.bytes": "100" if refuse else "1048588"}
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        if refuse:
            await admin.create_topics([NewTopic(gt.changelog(), gt.base.partitions, 1, topic_configs=configs)])
        else:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, gt.changelog(), configs=configs)])
    finally:
        await admin.close()


async def count_records(settings: Settings, topic: str) -> int:
    n = 0

    def one(_: Any) -> None:
        nonlocal n
        n += 1

    await read_to_end(settings, [topic], one)
    return n


async def committed_alerts(settings: Settings, group: str, topic: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


async def until_states(
    settings: Settings,
    gt: GradingTopics,
    want: dict[str, evidence.SiteEvidence],
    worker: GradingWorker,
    timeout: float = 90.0,
) -> dict[str, evidence.SiteEvidence]:
    deadline = time.monotonic() + timeout
    got: dict[str, evidence.SiteEvidence] = {}
    while time.monotonic() < deadline:
        assert worker.proc is not None
        if worker.proc.poll() is not None:
            raise AssertionError(f"grading worker exited {worker.proc.returncode}:\n{worker.tail()}")
        try:
            got = await store.read_states(settings, gt)
        except RuntimeError:  # the changelog topic is created by the worker at start
            got = {}
        if {k: (v.alerts, v.override, v.tests) for k, v in got.items()} == {
            k: (v.alerts, v.override, v.tests) for k, v in want.items()
        }:
            return got
        await asyncio.sleep(0.5)
    diffs = []
    for k in sorted(want):
        w, g = want[k], got.get(k, evidence.empty(k))
        differ = sorted(a for a in w.alerts.keys() | g.alerts.keys() if w.alerts.get(a) != g.alerts.get(a))
        diffs += [f"{k} {a}: want {w.alerts.get(a)} got {g.alerts.get(a)}" for a in differ[:3]]
        diffs += [f"{k}: {len(differ)} alerts differ"] if differ else []
        diffs += [f"{k} override: want {w.override} got {g.override}"] if w.override != g.override else []
        diffs += [f"{k}: {len(w.tests)} rapid tests wanted, {len(g.tests)} got"] if w.tests != g.tests else []
    raise AssertionError("states never matched the fold:\n" + "\n".join(diffs) + f"\n{worker.tail()}")


async def test_grading_worker_resumes_after_kill_and_matches_the_fold(
    live_stack: Settings, topics: Topics, tmp_path: Path
) -> None:
    settings = live_stack
    gt = GradingTopics(topics)
    await store.ensure_topics(settings, gt)
    doc = simulate.site_doc(4, seed=2)
    sites = tmp_path / "sites.json"
    sites.write_bytes(serde.dumps(doc))
    cfg = SiteConfig.model_validate(doc)
    truth = simulate.simulate(cfg, START, DAYS, seed=4)
    events = simulate.events(truth)
    half = len(events) // 2
    # Rapid-test results (some delivered twice), in halves like the alerts; one batch with an unusable item beside
    # a good one, and a tick (replay's clock), which grading skips.
    items = simulate.rapid_results(cfg, truth, START, DAYS, seed=5)
    rhalf = len(items) // 2
    bad_item = {**items[0], "result": "maybe", "result_id": "rt-broken"}
    good_item = {**items[0], "result_id": "rt-extra-1", "result": "negative"}
    rapid1 = [*rapid_batches(items[:rhalf]), (items[0]["site"].encode(), rapid_tests_value([bad_item, good_item]))]
    rapid1.append((None, tick_value(START + DAYS * DAY_MS)))
    items1 = [*items[:rhalf], good_item]
    worst = "S00004" if "S00004" in cfg.sites else sorted(cfg.sites)[-1]
    ov = Override(site=worst, grade="B", reason="re-inspected after repairs", by="Wang", at_ms=START + 20 * DAY_MS)
    first = [(e["site"].encode(), serde.dumps(e)) for e in events[:half]]
    await produce(settings, topics.alerts, [*first, (b"S00000", b"not json at all")])

    # Kafka refuses the table's changelog writes (a record-batch limit below any state) until further notice.
    await changelog_refuses_writes(settings, gt, refuse=True)

    metrics_port = free_port()
    worker = GradingWorker(tmp_path, topics, sites, "--metrics-port", str(metrics_port))
    worker.start()
    try:
        t0 = time.monotonic()
        # The worker is folding: its daily grade records (sent before a state is kept; a site's first record
        # makes one) are coming out.
        deadline = time.monotonic() + 60
        while await count_records(settings, gt.grades) < 1:
            assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
            assert time.monotonic() < deadline, f"no daily grade records:\n{worker.tail()}"
            await asyncio.sleep(0.5)
        # The rapid tests only now: they make no daily record, and a partition that folded nothing else first
        # would flush into the refused changelog and hold the worker (retrying, by design) before any alert
        # made the record waited for above (seen in CI: rapid tests read first, no grade record in 60 s).
        await produce(settings, topics.rapid_tests, rapid1)
        await asyncio.sleep(4.0)  # > flush interval (2.8 s) + commit interval (0.5 s): a commit would have happened
        # Not one source offset is committed while the states they changed are not in the changelog: a worker
        # killed now re-reads them all. (Faust's own table writes let the commit through: issue 22.)
        assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
        assert await store.read_states(settings, gt) == {}
        assert await committed_alerts(settings, f"{topics.prefix}-grading", topics.alerts) == 0
        await changelog_refuses_writes(settings, gt, refuse=False)
        # (The override only now: folded first, it would have made no daily record to wait for above.)
        await produce(settings, gt.overrides, [(worst.encode(), ov.model_dump_json().encode())])

        want1 = evidence.fold_all([*events[:half], ov.model_dump()], items1)
        await until_states(settings, gt, want1, worker)
        first_pass_s = time.monotonic() - t0
        # The changelog has every state; the commit follows within its interval (0.5 s).
        deadline = time.monotonic() + 30
        while await committed_alerts(settings, f"{topics.prefix}-grading", topics.alerts) < half:
            assert time.monotonic() < deadline, f"first half never committed:\n{worker.tail()}"
            await asyncio.sleep(0.25)
        worker.kill9()
        shutil.rmtree(worker.data)  # a fresh machine: the table must come back from its changelog
        # The group committed past the first half: the restarted worker does not re-read it, so its states can
        # only come back through the changelog.
        committed = await committed_alerts(settings, f"{topics.prefix}-grading", topics.alerts)
        assert committed >= half, (committed, half)

        second = [(e["site"].encode(), serde.dumps(e)) for e in events[half:]]
        await produce(settings, topics.alerts, second)
        await produce(settings, topics.rapid_tests, rapid_batches(items[rhalf:]))
        worker.start()
        want = evidence.fold_all([*events, ov.model_dump()], [*items1, *items[rhalf:]])
        got = await until_states(settings, gt, want, worker)
        # The restarted worker's counters (from 0 at its start): at least the second half went through it.
        metrics = scrape_metrics(metrics_port)
        assert metrics["larder_grading_records_total"] >= len(second) + len(rapid_batches(items[rhalf:]))
        assert metrics["larder_grading_rapid_tests_total"] >= len(items[rhalf:])
        assert metrics["larder_grading_folded_total"] > 0 and metrics["larder_grading_grades_total"] > 0
        assert "larder_grading_rewinds_total" in metrics and "larder_grading_skip_acks_refused_total" in metrics
        assert sum(len(s.alerts) for s in got.values()) == sum(len(s.alerts) for s in want.values()) > 100
        assert sum(len(s.tests) for s in got.values()) > 200

        dead: list[dict[str, Any]] = []
        await read_to_end(settings, [gt.deadletter], lambda r: dead.append(serde.loads(r.value)))
        # At least once: a record not yet committed at the kill is read again and its dead letter repeated (seen in
        # CI for the rapid-test batch); a repeat must be the identical dead letter of the same source record.
        distinct: dict[tuple[Any, ...], dict[str, Any]] = {}
        for d in dead:
            kept = distinct.setdefault((d["source_topic"], d["partition"], d["offset"], d.get("item")), d)
            assert d == kept, f"a repeated dead letter differs: {d} != {kept}"
        by_topic = {d["source_topic"]: d for d in distinct.values()}
        assert len(distinct) == 2 and set(by_topic) == {topics.alerts, topics.rapid_tests}, dead
        assert "JSONDecodeError" in by_topic[topics.alerts]["reason"]
        assert by_topic[topics.rapid_tests]["item"] == 0 and "'maybe'" in by_topic[topics.rapid_tests]["reason"]

        # The daily grade records (history) are those of the pure fold + daily step over each site's records in
        # log order, whatever the restart re-read (a repeat of a day is the same record; readers keep one a day).
        expected: dict[tuple[str, int], tuple[float, str]] = {}
        pure: dict[str, evidence.SiteEvidence] = {}
        for e in events:
            sid = e["site"]
            st, records = score.daily(evidence.fold(pure.get(sid) or evidence.empty(sid), e), cfg.sites[sid])
            pure[sid] = st
            expected |= {(g.site, g.as_of_ms): (g.points, g.computed) for g in records}
        daily: dict[tuple[str, int], tuple[float, str]] = {}
        repeats = 0

        def keep(rec: Any) -> None:
            nonlocal repeats
            g = serde.loads(rec.value)
            key = (g["site"], g["as_of_ms"])
            if key in daily:
                repeats += 1
                assert daily[key] == (g["points"], g["computed"]), key
            daily[key] = (g["points"], g["computed"])

        await read_to_end(settings, [gt.grades], keep)
        assert daily == expected and len(daily) > 50
        # The CLI reads the same states and grades them like the pure code does; the override is shown and audited.
        as_of = START + DAYS * DAY_MS
        env = worker.env
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "grade",
                "show",
                "--sites",
                str(sites),
                "--format",
                "json",
                "--as-of",
                _iso(as_of),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            check=True,
            timeout=60,
        )
        shown = {g["site"]: g for g in serde.loads(out.stdout)}
        for sid, site in cfg.sites.items():
            expect = score.compute(want.get(sid) or evidence.empty(sid), site, as_of)
            assert shown[sid]["points"] == expect.points and shown[sid]["grade"] == expect.grade, sid
            assert [c["alert_ids"] for c in shown[sid]["top"]] == [c.alert_ids for c in expect.top]
        assert shown[worst]["grade"] == "B" and shown[worst]["override"]["reason"] == ov.reason
        # The other verbs in process (same code path; saves two interpreter start-ups of CI time).
        runner = CliRunner(env={"LARDER_TOPIC_PREFIX": topics.prefix})
        # (in a thread: the commands run their own event loop, and this test's is running)
        audit = await asyncio.to_thread(
            runner.invoke, app, ["grade", "audit", worst, "--sites", str(sites)], catch_exceptions=False
        )
        assert audit.exit_code == 0, audit.output
        assert [a["reason"] for a in serde.loads(audit.stdout)] == [ov.reason]
        roll = await asyncio.to_thread(
            runner.invoke,
            app,
            [
                "grade",
                "rollup",
                "--sites",
                str(sites),
                "--level",
                "district",
                "--period",
                "month",
                "-f",
                "csv",
                "--as-of",
                _iso(as_of),
            ],
            catch_exceptions=False,
        )
        assert roll.exit_code == 0, roll.output
        lines = roll.stdout.splitlines()
        assert lines[0].startswith("level,unit,period") and len(lines) == 2
        # The pass rate, counted here from the results produced: each (instrument, result id) once, initial
        # results of the month ending at as_of, passed = negative.
        tested = {
            (d["instrument"], d["result_id"]): d["result"] == "negative"
            for d in [*items, good_item]
            if d["stage"] == "initial" and as_of - 30 * DAY_MS < d["ts_ms"] <= as_of
        }
        [row] = list(csv.DictReader(lines))
        assert (int(row["rapid_tests"]), int(row["rapid_tests_passed"])) == (len(tested), sum(tested.values()))
        assert float(row["rapid_test_pass_rate"]) == sum(tested.values()) / len(tested) < 1
        print(f"first pass {first_pass_s:.1f} s for {half} events; {len(daily)} daily records, {repeats} repeated")
    finally:
        worker.stop()


def _iso(ms: int) -> str:
    from pipeline.schemas import ms_to_iso

    return ms_to_iso(ms)
