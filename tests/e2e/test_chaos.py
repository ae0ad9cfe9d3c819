"""Chaos on a real three-broker Kafka cluster (issue 26, "Tests"): a simulated scenario with ground truth goes
through the whole pipeline -- simulated loggers and cameras -> Mosquitto -> TWO `larder bridge` processes in one
shared subscription -> Kafka (3 KRaft nodes, replication factor 3, min.insync.replicas 2) -> TWO `larder worker`
processes in one group -> `larder notifier` (signed webhooks to a test gateway) and `larder sink` (InfluxDB) --
while, one after the other:

(a) the broker leading most readings partitions is killed with ``kill -9``, then restarted;
(b) a worker is killed with ``kill -9`` and a third one started (two rebalances);
(c) a bridge is killed with ``kill -9`` and restarted (same instance: its session holds what it had not acked);
(d) a broker is stopped (SIGTERM) for a while, then started again.

The same scenario first runs undisturbed on the same cluster and the same process layout: the reference.

What the design promises, and so what is checked (docs/ingest.md, docs/agents.md, docs/alerts.md):

* **Kafka: every (device, seq) at least once.** Devices publish QoS 1 and a bridge acknowledges to the broker
  only after Kafka has the batch, so a bridge killed with ``kill -9`` gets its unacknowledged messages again:
  duplicates in the readings topic are allowed (counted and printed), a missing reading is not. The
  producers are idempotent, so broker failures alone add none; the undisturbed run must have none at all.
* **InfluxDB: every (device, seq) exactly once.** A reading's point is keyed by device and time (+ seq as
  nanoseconds): a duplicate overwrites its first copy.
* **The alerts are the undisturbed run's**: the same ids, rules, subjects, states, opened and resolved event
  times. Compared as the design defines a timeline's outcome (docs/rules.md, "Late data"): the last record of
  each id, withdrawn ones left out. Two bridges in one shared subscription do not keep a device's readings in
  order (the broker deals consecutive messages to different bridges, each produces on its own), so a reading
  can arrive after its successor; beyond the allowed lateness the worker then corrects a resolution with a
  second, retrospective record of the same id -- in either run. The worker is at-least-once and a crash may
  repeat an output as the identical record (docs/agents.md). Both are counted and printed. One outcome is left to
  the arrival order itself, in either run: a logger back from an outage is "heard again" at the frontier its
  store-and-forward upload found (docs/rules.md), and the upload, its next live reading and the replay tool's
  tick of the same instant race through two bridges and another producer; so a liveness alert of an uploading
  logger may resolve up to ``UPLOAD_RACE_MS`` apart (printed). Escalations are the
  notifier's wall-clock decisions, so they are not compared with the other run; each (alert, step) must be
  escalated at most once.
* **Notifications: once per (alert, step, recipient)** at a gateway that honours the idempotency key: every key
  the notifier planned (its delivery ledger) reached the gateway, with a valid signature, under exactly one
  idempotency key; the gateway drops a repeated key, as docs/alerts.md requires of it.

Two sizes, one test (``size``): ``short`` (a few thousand readings, the broker stopped 15 s) and ``full``
(100,000 readings, the broker stopped 2 minutes, 10-20 minutes). ``short`` is part of ``make test`` and CI (~3.5
minutes, in the ``exclusive`` step); ``full`` is marked ``long``. The four defects this test found are fixed
(BENCHMARKS.md, "Chaos"). ``make chaos`` (``pytest -s tests/e2e/test_chaos.py``) runs both and prints their
counts.

The cluster is this test's own (its own state folder and ports, like ``tests/integration/test_kafka_cluster.py``),
so killing brokers disturbs no other test, and it works the same with or without pytest-xdist.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline import siteconfig, testing
from pipeline.contracts import records
from pipeline.contracts.models import Alert, AlertState, Delivery, to_ms
from pipeline.contracts.replay import Line
from pipeline.detectors.history import net_alerts
from pipeline.kafkaadmin import ensure_topics
from pipeline.replay.run import register_devices
from pipeline.replay.score import score
from pipeline.replay.send import SendStats, drive
from pipeline.replay.timeline import wait_processed
from pipeline.services import Services
from pipeline.settings import Settings, load_settings
from pipeline.siteconfig import write_site_file
from pipeline.stack import influx, kafka
from pipeline.stack.process import pid_alive, port_open, read_pid, stop_pid, tail, wait_until
from pipeline.testing import read_all
from pipeline.topics import Topics
from simulators import LIBRARY, Scenario, build
from tests.alerts_support import FakeHttp, flux, verify_webhook

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow, pytest.mark.exclusive]

DAY_MS = 86_400_000
SCENARIO = "demo"  # compressor failure, door left open, 30 min offline + upload, unattended stove, hygiene
WEBHOOK_SECRET = uuid.uuid4().hex


@dataclass(frozen=True)
class Size:
    name: str
    #: demo sites: three loggers (1,080 readings in the 6 simulated hours) and a kitchen each
    sites: int
    #: wall seconds the disturbed run plans to spend publishing (the disruptions happen inside this window)
    send_s: float
    broker_stop_s: float
    #: If the disruptions take longer (a broker's restart is slow on a busy machine), the last ``reserve`` of
    #: the lines trickles out over up to ``cover_s`` more seconds, so every disruption still meets traffic.
    cover_s: float
    reserve: float = 0.3
    #: how many sites keep their kitchen (camera events are POSTed one by one and answered once in Kafka: at
    #: 100,000 readings, 93 kitchens' 4,400 events would make the publishing several times longer)
    kitchens: int | None = None
    lead_s: float = 4.0
    tick_every_s: float = 600.0


SHORT = Size("short", sites=2, send_s=60.0, broker_stop_s=15.0, cover_s=300.0)
FULL = Size("full", sites=93, send_s=330.0, broker_stop_s=120.0, cover_s=300.0, kitchens=3, lead_s=10.0)


# ---------------------------------------------------------------------------------------------------------------
# The cluster: `larder stack up --brokers 3` in a state folder and on ports of this module's own
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    settings: Settings
    env: dict[str, str]

    def larder(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def metadata(self) -> list[dict[str, Any]]:
        """Every topic's partitions (leader, replicas, in-sync replicas), from any live node, with kcat."""
        last = ""
        for n in kafka.nodes(self.settings):
            if not self.node_alive(n):
                continue
            port = self.settings.kafka.node_ports(n)[0]
            out = subprocess.run(
                ["kcat", "-b", f"127.0.0.1:{port}", "-L", "-J", "-m", "10"], capture_output=True, text=True, timeout=30
            )
            if out.returncode == 0:
                return json.loads(out.stdout)["topics"]  # type: ignore[no-any-return]
            last = out.stderr
        raise AssertionError(f"no broker answered kcat -L: {last}")

    def partitions(self, topic: str) -> list[dict[str, Any]]:
        found = [t for t in self.metadata() if t["topic"] == topic]
        assert found, f"topic {topic} not in the cluster's metadata"
        return found[0]["partitions"]  # type: ignore[no-any-return]

    def pid(self, node: int) -> int | None:
        return read_pid(kafka.paths(self.settings, node)["pid"])

    def node_alive(self, node: int) -> bool:
        pid = self.pid(node)
        return pid is not None and pid_alive(pid)

    def kill9(self, node: int) -> None:
        pid = self.pid(node)
        assert pid is not None, f"kafka-{node} is not running"
        os.killpg(pid, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(pid), timeout=10), f"kafka-{node} survived kill -9"

    def start(self, node: int) -> float:
        """Start a node that is down, as `larder stack up` does (same function, same files); seconds until it
        answers. (`larder stack up` itself restarting a dead node is tests/integration/test_kafka_cluster.py's.)"""
        t0 = time.monotonic()
        kafka.start(self.settings, node)
        port = self.settings.kafka.node_ports(node)[0]
        assert wait_until(lambda: port_open("127.0.0.1", port), timeout=300), f"kafka-{node} did not come back"
        return time.monotonic() - t0

    def stop(self, node: int) -> None:
        """A clean stop (SIGTERM: the controller moves its leaderships first)."""
        pid = self.pid(node)
        assert pid is not None, f"kafka-{node} is not running"
        stop_pid(pid, timeout=60)

    def fully_replicated(self) -> bool:
        try:
            topics = self.metadata()
        except (AssertionError, subprocess.TimeoutExpired):
            return False
        want = self.settings.kafka.replication_factor
        return all(len(p["isrs"]) == want for t in topics for p in t["partitions"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three KRaft nodes, InfluxDB and Mosquitto of this module's own. The process environment is switched to
    them for the module's duration (every `larder` process the test starts, and load_settings(), see only
    them); the pytest-xdist broker of conftest.py (LARDER_MQTT__BROKER_ID) does not apply to this stack."""
    state = tmp_path_factory.mktemp("chaos-state")
    keep = {"LARDER_CACHE_DIR"}
    own = testing.cluster_env(state)
    with pytest.MonkeyPatch.context() as mp:
        for k in list(os.environ):
            if k.startswith("LARDER_") and k not in keep:
                mp.delenv(k)
        for k, v in own.items():
            mp.setenv(k, v)
        mp.setenv("COLUMNS", "200")
        c = Cluster(load_settings(), dict(os.environ))
        try:
            out = c.larder("stack", "up", "--brokers", "3")
            assert out.returncode == 0, out.stdout + out.stderr
            c.settings = load_settings()  # with the secrets `stack up` generated
            assert c.settings.kafka.brokers == 3 and c.settings.kafka.min_insync_replicas == 2
            yield c
        finally:
            c.larder("stack", "down")


# ---------------------------------------------------------------------------------------------------------------
# The test gateway: tests/alerts_support.FakeHttp on a thread of its own (the test's loop is busy publishing)
# ---------------------------------------------------------------------------------------------------------------


class Gateway:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="webhook-gateway", daemon=True)

    def __enter__(self) -> FakeHttp:
        self.thread.start()
        self.http = asyncio.run_coroutine_threadsafe(FakeHttp().start(), self.loop).result(30)
        return self.http

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.http.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def without_kitchens(sc: Scenario, keep: int | None) -> Scenario:
    """The scenario with kitchens (cameras, their events and their ground truth) on the first ``keep`` sites only."""
    if keep is None:
        return sc
    doc = copy.deepcopy(sc.config_doc)
    gone: set[str] = set()
    for sid in sorted(doc["sites"])[keep:]:
        site = doc["sites"][sid]
        gone.update(site.get("cameras", {}))
        gone.update(f"{sid}/{k}" for k in site.get("kitchens", {}))
        site["cameras"], site["kitchens"] = {}, {}
    return dataclasses.replace(
        sc,
        config=siteconfig.SiteConfig.model_validate(doc),
        config_doc=doc,
        lines=[x for x in sc.lines if not (x.kind == "hook" and x.source in gone)],
        truth=[t for t in sc.truth if t.subject not in gone],
    )


def with_recipients(doc: dict[str, Any], gateway: str) -> dict[str, Any]:
    """The scenario's site file with people to tell, each on a signed webhook at the test gateway: an operator
    and a site manager per site, one station supervisor for all sites (grouping across sites)."""

    def person(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "webhook": f"{gateway}/hook/{path}", "channels": ["webhook"]}

    for sid, site in doc["sites"].items():
        site["recipients"] = {
            "operator": [person(f"Operator {sid}", f"{sid}/operator")],
            "site_manager": [person(f"Manager {sid}", f"{sid}/manager")],
            "station": [person("Station supervisor", "station")],
        }
    return doc


# ---------------------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    label: str
    stats: SendStats
    alerts: list[Alert]
    kafka_pairs: Counter[tuple[str, int]]
    dead_letters: int
    influx_pairs: Counter[tuple[str, int]]
    ledger: list[Delivery]
    requests: list[Any]
    events: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    #: disruptions that began after the publishing had ended
    late: list[str] = field(default_factory=list)


def sent_pairs(sc: Scenario) -> set[tuple[str, int]]:
    out: set[tuple[str, int]] = set()
    for line in sc.lines:
        if line.kind == "mqtt":
            items = line.body.get("readings", [line.body])
            out.update((line.source, int(it["seq"])) for it in items)
    return out


def influx_pairs(settings: Settings, bucket: str) -> Counter[tuple[str, int]]:
    rows = flux(
        settings,
        f'from(bucket: "{bucket}") |> range(start: 2000-01-01T00:00:00Z, stop: 2100-01-01T00:00:00Z)'
        ' |> filter(fn: (r) => r._measurement == "reading" and r._field == "seq")'
        ' |> keep(columns: ["device", "_value"])',
    )
    return Counter((r["device"], int(r["_value"])) for r in rows)


def influx_count(settings: Settings, bucket: str) -> int:
    rows = flux(
        settings,
        f'from(bucket: "{bucket}") |> range(start: 2000-01-01T00:00:00Z, stop: 2100-01-01T00:00:00Z)'
        ' |> filter(fn: (r) => r._measurement == "reading" and r._field == "seq") |> group() |> count()',
    )
    return int(rows[0]["_value"]) if rows else 0


async def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 1.0) -> float:
    t0 = time.monotonic()
    while not await asyncio.to_thread(check):
        assert time.monotonic() - t0 < timeout, f"timed out after {timeout:.0f} s waiting for {what}"
        await asyncio.sleep(interval)
    return time.monotonic() - t0


class Chaos:
    """The four disruptions while the scenario is being published: (a) with (c) while the killed broker's
    partitions have no leader and (b) while it recovers -- one failure on top of another, which also keeps the
    short size short -- then (d)."""

    def __init__(self, cluster: Cluster, svc: Services, topics: Topics, size: Size) -> None:
        self.cluster, self.svc, self.topics, self.size = cluster, svc, topics, size
        self.events: list[str] = []
        self.t0 = time.monotonic()
        #: set while lines are being published; ``done`` once every disruption is over
        self.publishing = threading.Event()
        self.done = threading.Event()
        #: disruptions that began after the last line was sent (the test then fails: they met no traffic)
        self.late: list[str] = []

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self.t0:7.1f} s  {text}"
        if not self.publishing.is_set():
            line += "  [after the publishing]"
            if text.startswith("("):
                self.late.append(text)
        self.events.append(line)
        print(f"[chaos] {line}", flush=True)

    async def _restart(self, node: int) -> None:
        took = await asyncio.to_thread(self.cluster.start, node)
        self.note(f"    kafka-{node} restarted, answering after {took:.1f} s")

    async def _isr_back(self, what: str) -> None:
        took = await wait_for(self.cluster.fully_replicated, 300, f"every partition in sync again after {what}")
        self.note(
            f"    every partition of every topic has {self.cluster.settings.kafka.replication_factor} "
            f"in-sync replicas again ({took:.1f} s later)"
        )

    async def _worker_failover(self) -> None:
        """(b) kill -9 a worker: the survivor takes its partitions (rebalance 1); a third joins (rebalance 2)."""
        survivor = self.svc.process("worker-2")
        before = survivor.log_text().count("assigned")
        self.svc.kill("worker")
        self.note("(b) kill -9 worker (1 of 2)")
        took = await wait_for(lambda: survivor.log_text().count("assigned") > before, 120, "worker-2's rebalance")
        self.note(f"    rebalance 1: worker-2 took over the dead worker's partitions ({took:.1f} s)")
        third = await asyncio.to_thread(self.svc.add, "worker")
        self.note(f"    rebalance 2: {third.label} started and was assigned partitions")

    async def _bridge_crash(self) -> None:
        """(c) kill -9 a bridge and restart it: the broker kept what it had not acknowledged for its session."""
        bridge = self.svc.kill("bridge-2")
        self.note("(c) kill -9 bridge-2 (1 of 2 in the shared subscription)")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(self.svc.restart, bridge)
        self.note("    bridge-2 restarted as the same instance (its session)")

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.done.set()

    async def _run(self) -> None:
        c = self.cluster
        await asyncio.sleep(self.size.lead_s)

        # (a) kill -9 the leader of the readings partitions (the node leading most of them); (c) a moment later,
        # while the bridges' writes to its partitions wait for a new leader: the killed bridge then holds readings
        # it has not acknowledged, which its session must give it again.
        parts = await asyncio.to_thread(c.partitions, self.topics.readings)
        node, led = Counter(int(p["leader"]) for p in parts).most_common(1)[0]
        await asyncio.to_thread(c.kill9, node)
        killed = time.monotonic()
        self.note(f"(a) kill -9 kafka-{node}, leader of {led} of {len(parts)} readings partitions")
        await asyncio.sleep(3.0)
        await self._bridge_crash()

        def moved() -> bool:
            return all(int(p["leader"]) not in (node, -1) for p in c.partitions(self.topics.readings))

        await wait_for(moved, 120, f"the readings partitions' leadership to leave kafka-{node}")
        self.note(f"    leaders of the readings partitions moved off kafka-{node} ({time.monotonic() - killed:.1f} s)")
        # (b) while the node recovers (log recovery after an unclean stop: the longest step here).
        restarting = asyncio.create_task(self._restart(node))
        await self._worker_failover()
        await restarting
        await self._isr_back(f"kafka-{node}'s restart")

        # (d) stop a broker (the leader of readings partition 0 now) for a while, then start it again.
        parts = await asyncio.to_thread(c.partitions, self.topics.readings)
        node = int(parts[0]["leader"])
        await asyncio.to_thread(c.stop, node)
        stopped = time.monotonic()
        self.note(f"(d) kafka-{node} stopped (SIGTERM) for {self.size.broker_stop_s:.0f} s")
        await asyncio.sleep(max(0.0, self.size.broker_stop_s - (time.monotonic() - stopped)))
        await self._restart(node)
        await self._isr_back(f"kafka-{node}'s return")


def gated(lines: list[Line], done: threading.Event, reserve_from: int, trickle_s: float) -> Iterator[Line]:
    """The lines, the ones from ``reserve_from`` on held to one every ``trickle_s`` until ``done``: publishing
    goes on, slower, for as long as the disruptions take (up to the size's ``cover_s``)."""
    for i, line in enumerate(lines):
        if i >= reserve_from and not done.is_set():
            time.sleep(trickle_s)
        yield line


async def run_once(cluster: Cluster, sc: Scenario, folder: Path, size: Size, *, disturb: bool) -> Outcome:
    """One run on fresh topics and a fresh InfluxDB database, with a gateway of its own (message ids are
    deterministic, so two runs' messages would look like repeats of each other at one gateway)."""
    label = "disturbed" if disturb else "undisturbed"
    with Gateway() as gw:
        doc = with_recipients(copy.deepcopy(sc.config_doc), gw.base)
        site_file = write_site_file(folder / f"sites-{label}.yaml", doc)
        return await _run(cluster, sc, site_file, size, gw, label)


async def _run(cluster: Cluster, sc: Scenario, site_file: Path, size: Size, gw: FakeHttp, label: str) -> Outcome:
    settings = cluster.settings
    disturb = label == "disturbed"
    topics = Topics(f"chaos{uuid.uuid4().hex[:8]}", settings.readings_partitions)
    await ensure_topics(settings, topics)
    influx.create_database(settings, topics.prefix)
    bucket = f"{topics.prefix}/{settings.influx.retention_policy}"
    config = siteconfig.load(site_file)
    register_devices(settings, config)
    svc = Services(
        settings,
        site_file,
        topics.prefix,
        clock="replay",
        names=("bridge", "hooks", "worker", "notifier", "sink"),
        replicas={"bridge": 2, "worker": 2},
        extra_env={
            "LARDER_INFLUX__DATABASE": topics.prefix,
            "LARDER_NOTIFY__WEBHOOK_SECRET": WEBHOOK_SECRET,
            "LARDER_NOTIFY__GROUP_WINDOW_S": "1",
            "LARDER_NOTIFY__RATE_LIMIT": "100000",
            "LARDER_NOTIFY__BACKOFF_S": "0.5",
            "LARDER_NOTIFY__BACKOFF_MAX_S": "4",
        },
        report=lambda m: print(f"[{label}] {m}", flush=True),
    )
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    await asyncio.to_thread(svc.start, 180.0)
    timings["services_start_s"] = time.monotonic() - t0
    chaos = Chaos(cluster, svc, topics, size) if disturb else None
    disrupting: asyncio.Task[None] | None = None
    try:
        devices = config.device_secrets()
        cameras = {cam_id: cam.resolve_secret() for cam_id, _, cam in config.cameras()}
        sim_s = (sc.end_ms - sc.start_ms) / 1000
        lines = list(sc.iter_lines())
        if chaos is not None:
            chaos.publishing.set()
            cover = (chaos.done, int(len(lines) * (1 - size.reserve)), size.cover_s / (len(lines) * size.reserve))
        t1 = time.monotonic()

        def publish() -> SendStats:
            # A loop of its own: the line generator may hold the publishing back with a plain sleep.
            return asyncio.run(
                drive(
                    settings,
                    topics,
                    gated(lines, *cover) if chaos is not None else iter(lines),
                    device_secrets=devices,
                    camera_secrets=cameras,
                    hooks_url=svc.hooks_url,
                    speed=sim_s / size.send_s if chaos is not None else None,
                    tick_every_s=size.tick_every_s,
                )
            )

        sending = asyncio.create_task(asyncio.to_thread(publish))
        if chaos is not None:
            chaos.t0 = t1
            disrupting = asyncio.create_task(chaos.run())
            done, _ = await asyncio.wait([sending, disrupting], return_when=asyncio.FIRST_COMPLETED)
            if disrupting in done:
                disrupting.result()  # a failed disruption step is the test's failure
        stats = await sending
        timings["send_s"] = time.monotonic() - t1
        if chaos is not None:
            chaos.publishing.clear()
            chaos.note("the last line is published")
        svc.check_alive()

        t2 = time.monotonic()
        try:
            await wait_processed(settings, topics, timeout=300)
        except TimeoutError:
            # CI keeps only this test's output: what the workers said is the only trace of why.
            for p in svc.processes:
                if p.name == "worker":
                    print(f"[{label}] {p.label} ({p.log}), its last lines:\n{worker_story(p.log)}", flush=True)
            raise
        await asyncio.sleep(1.0)  # the worker's last outputs are acked before its offsets are committed
        alerts = await alert_log(settings, topics)
        timings["worker_drain_s"] = time.monotonic() - t2
        expected = len(sent_pairs(sc))
        t3 = time.monotonic()
        await wait_for(lambda: influx_count(settings, bucket) >= expected, 300, f"{expected} readings in InfluxDB", 2)
        timings["sink_drain_s"] = time.monotonic() - t3
        if disrupting is not None:
            await disrupting
        ledger = await notifications_settled(settings, topics)
        svc.check_alive()
    finally:
        if disrupting is not None and not disrupting.done():
            disrupting.cancel()
        await asyncio.to_thread(svc.stop)

    kafka_pairs: Counter[tuple[str, int]] = Counter()
    for r in await read_all(settings, topics.readings, timeout=120):
        for it in records.batch_items(r.value, "readings"):
            kafka_pairs[(it["device"], it["seq"])] += 1
    dead = len(await read_all(settings, topics.deadletter, timeout=60))
    pairs = await asyncio.to_thread(influx_pairs, settings, bucket)
    requests = list(gw.requests)
    return Outcome(
        label,
        stats,
        alerts,
        kafka_pairs,
        dead,
        pairs,
        ledger,
        requests,
        chaos.events if chaos else [],
        timings,
        chaos.late if chaos else [],
    )


#: aiokafka's lines while a broker is down, ten a second: they would hide everything else in a log's tail.
BROKER_DOWN_NOISE = ("Unable connect to node", "Failed fetch messages from", "Got error produce response")


def worker_story(log: Path, lines: int = 80) -> str:
    """The last ``lines`` lines of a worker's log, without the broker-down noise and tracebacks' bodies."""
    kept = [
        line
        for line in tail(log, 5000).splitlines()
        if line.startswith("[") and not any(noise in line for noise in BROKER_DOWN_NOISE)
    ]
    return "\n".join(kept[-lines:])


async def notifications_settled(settings: Settings, topics: Topics) -> list[Delivery]:
    """The delivery ledger once every planned message is closed and nothing new was planned for a few seconds."""
    quiet_since = time.monotonic()
    seen = -1
    deadline = time.monotonic() + 180
    while True:
        ledger = [records.read_delivery(r.value) for r in await read_all(settings, topics.deliveries)]
        planned = {d.message_id for d in ledger if d.kind == "planned"}
        closed = {d.message_id for d in ledger if d.kind in ("delivered", "failed")}
        if len(ledger) != seen:
            seen, quiet_since = len(ledger), time.monotonic()
        if planned <= closed and time.monotonic() - quiet_since > 4.0:
            return ledger
        assert time.monotonic() < deadline, f"{len(planned - closed)} planned notifications never closed"
        await asyncio.sleep(1.0)


# ---------------------------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """What the detectors said, from the alerts topic in log order."""

    #: The net alerts (docs/rules.md, "Late data": the last record of each id, withdrawn ones left out), as
    #: (opened_at, alert id, rule, subject, state, resolved_at): what two runs of one scenario must agree on.
    net: list[tuple[Any, ...]]
    records: int
    #: Records identical to an earlier one (a worker repeating an output after a crash, docs/agents.md).
    repeats: int
    #: Later records of an id that change it (a resolution moved by late or reordered data, "retrospective").
    corrections: int


#: How far a liveness alert's resolution by a store-and-forward upload may move between two runs: the allowed
#: lateness (1 min) plus the demo loggers' interval (1 min). The upload, the logger's next live reading (10 s
#: later in the scenario) and the replay tool's tick at the same instant as the upload reach Kafka in an order
#: that the two bridges of the shared subscription and the tool's own producer decide, run by run, disturbed
#: or not; the logger is "heard again" at the frontier that order set (docs/rules.md, "Late data"). Seen: the
#: undisturbed run resolving S001-cr3's offline alert at 03:30:10 in one run and 03:29:00 in another.
UPLOAD_RACE_MS = 120_000
LIVENESS_RULES = ("liveness.offline", "liveness.gap")


def uploaders(sc: Scenario) -> set[str]:
    """The devices that publish a store-and-forward upload (several readings in one message) in ``sc``."""
    return {line.source for line in sc.lines if line.kind == "mqtt" and "readings" in line.body}


def compare_timelines(
    reference: list[tuple[Any, ...]], got: list[tuple[Any, ...]], uploading: set[str]
) -> tuple[list[str], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(moved, only in ``reference``, only in ``got``): rows of two net timelines that differ, except a liveness
    alert of an uploading device resolved in both at instants at most :data:`UPLOAD_RACE_MS` apart (``moved``,
    described for the printout)."""
    ref_by_id = {row[1]: row for row in reference}
    got_by_id = {row[1]: row for row in got}
    moved: list[str] = []
    ref_only, got_only = [], []
    for alert, row in ref_by_id.items():
        other = got_by_id.get(alert)
        if other == row:
            continue
        if other is not None and _upload_race(row, other, uploading):
            moved.append(f"{row[2]} {row[3]} resolved {row[5]} / {other[5]}")
            continue
        ref_only.append(row)
        if other is not None:
            got_only.append(other)
    got_only += [row for alert, row in got_by_id.items() if alert not in ref_by_id]
    return moved, sorted(ref_only), sorted(got_only)


def _upload_race(a: tuple[Any, ...], b: tuple[Any, ...], uploading: set[str]) -> bool:
    def ms(iso: str) -> int:
        return to_ms(datetime.fromisoformat(iso))

    same_but_resolution = a[:5] == b[:5] and a[4] == "resolved"
    return (
        same_but_resolution
        and a[2] in LIVENESS_RULES
        and a[3] in uploading
        and a[5] is not None
        and b[5] is not None
        and abs(ms(a[5]) - ms(b[5])) <= UPLOAD_RACE_MS
    )


def detector_timeline(alerts: list[Alert]) -> Timeline:
    """``alerts`` in log order (per partition; an alert's records share its site's partition)."""
    seen: set[str] = set()
    last: dict[str, Alert] = {}
    records = repeats = corrections = 0
    for a in alerts:
        if a.state not in (AlertState.OPEN, AlertState.RESOLVED):
            continue  # escalations and acknowledgements are the notifier's
        records += 1
        dump = a.model_dump_json()
        if dump in seen:
            repeats += 1
            continue
        seen.add(dump)
        if a.alert_id in last and last[a.alert_id].state is a.state:
            corrections += 1
        last[a.alert_id] = a
    net = net_alerts(list(last.values()))
    rows = sorted((a.opened_at, a.alert_id, a.rule, a.subject, a.state.value, a.resolved_at) for a in net.values())
    return Timeline(rows, records, repeats, corrections)


async def alert_log(settings: Settings, topics: Topics) -> list[Alert]:
    """Every record of the alerts topic, in log order per partition (read_alerts sorts by event time, which puts
    a correction before the record it corrects)."""
    recs = sorted(await read_all(settings, topics.alerts, timeout=60), key=lambda r: (r.partition, r.offset))
    return [records.read_alert(r.value) for r in recs]


class Printed(list[str]):
    """The counts, printed as they are checked (a failing check still shows everything before it)."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


def check(o: Outcome, sc: Scenario, reference: Timeline | None) -> list[str]:
    """Every promise of the module docstring for one run; returns the printed counts."""
    want = sent_pairs(sc)
    out = Printed()
    out.append(f"{o.label} run:")
    out.append(
        f"  sent: {o.stats.readings_sent:,} readings ({len(want):,} distinct (device, seq)) in "
        f"{o.stats.mqtt_messages:,} MQTT messages, {o.stats.events_sent:,} camera events, {o.stats.ticks:,} ticks"
    )
    assert o.stats.readings_sent == len(want) and o.stats.hook_refusals == 0

    missing = want - set(o.kafka_pairs)
    extra = set(o.kafka_pairs) - want
    dups = sum(n - 1 for n in o.kafka_pairs.values())
    out.append(
        f"  Kafka: {len(o.kafka_pairs):,} of {len(want):,} (device, seq) present, {len(missing)} missing, "
        f"{sum(o.kafka_pairs.values()):,} items, {dups:,} duplicates (redeliveries), {o.dead_letters} dead letters"
    )
    assert not missing, f"{len(missing)} readings never reached Kafka, e.g. {sorted(missing)[:5]}"
    assert not extra, f"readings nobody sent: {sorted(extra)[:5]}"
    assert o.dead_letters == 0
    if o.label == "undisturbed":
        assert dups == 0, f"{dups} duplicates in Kafka without any failure"

    i_missing = want - set(o.influx_pairs)
    twice = {k: n for k, n in o.influx_pairs.items() if n > 1}
    out.append(
        f"  InfluxDB: {sum(o.influx_pairs.values()):,} reading points, {len(o.influx_pairs):,} distinct "
        f"(device, seq), {len(i_missing)} missing, {len(twice)} more than once"
    )
    assert not i_missing, f"{len(i_missing)} readings never reached InfluxDB, e.g. {sorted(i_missing)[:5]}"
    assert not twice, f"{len(twice)} readings in InfluxDB more than once, e.g. {list(twice.items())[:5]}"
    assert set(o.influx_pairs) == want

    tl = detector_timeline(o.alerts)
    opened = len(tl.net)
    resolved = sum(1 for t in tl.net if t[4] == "resolved")
    escalated = [a for a in o.alerts if a.state is AlertState.ESCALATED]
    steps = Counter((a.alert_id, a.evidence.get("step")) for a in escalated)
    out.append(
        f"  alerts: {opened} alerts ({resolved} resolved) from {tl.records} detector records: {tl.repeats} "
        f"repeated identical records, {tl.corrections} corrections by reordered data; {len(escalated)} "
        "escalations by the notifier"
    )
    assert opened > 0
    if o.label == "undisturbed":
        assert tl.repeats == 0, f"{tl.repeats} repeated alert records without any crash"
    assert max(steps.values(), default=1) == 1, f"an alert escalated twice to one step: {steps.most_common(3)}"
    sc_score = score(sc.truth, o.alerts)
    out.append(f"  ground truth: {len(sc.truth)} true alerts, {len(sc_score.misses)} missed")
    assert not sc_score.misses, [(t.rule, t.subject, t.opened_at_ms) for t in sc_score.misses]
    if reference is not None:
        moved, ref_only, got_only = compare_timelines(reference.net, tl.net, uploaders(sc))
        assert not ref_only and not got_only, (
            f"the alerts differ from the undisturbed run's: only undisturbed {ref_only[:5]}, "
            f"only disturbed {got_only[:5]}"
        )
        out.append(
            f"  timeline: the same {len(reference.net)} alerts as the undisturbed run (ids, rules, subjects, "
            f"states, opened_at, resolved_at); {len(moved)} liveness resolution(s) by a store-and-forward upload "
            f"at another instant within {UPLOAD_RACE_MS // 1000} s: {moved}"
        )

    planned: dict[str, set[str]] = {}
    closed: dict[str, Delivery] = {}
    for d in o.ledger:
        if d.kind == "planned":
            planned.setdefault(d.message_id, set()).update(d.keys)
        elif d.kind in ("delivered", "failed"):
            assert d.message_id not in closed, f"{d.message_id} closed twice: {closed[d.message_id]} and {d}"
            closed[d.message_id] = d
    key_owner = Counter(k for keys in planned.values() for k in keys)
    assert max(key_owner.values(), default=1) == 1, f"a key in two messages: {key_owner.most_common(3)}"
    assert set(closed) == set(planned), f"planned, never closed: {sorted(set(planned) - set(closed))[:5]}"
    # A message closes as failed only when its alerts were resolved before it got out (docs/alerts.md): the test
    # gateway accepts everything and every recipient stays in the site file.
    dropped = {m: d for m, d in closed.items() if d.kind == "failed"}
    assert all(d.error == "acknowledged or resolved before delivery" for d in dropped.values()), dropped
    should = {k for m, keys in planned.items() if m not in dropped for k in keys}
    by_message: dict[str, set[str]] = {}
    bad_signatures = 0
    for r in o.requests:
        if not 200 <= r.status < 300:
            continue
        if not verify_webhook(WEBHOOK_SECRET, r):
            bad_signatures += 1
        body = r.json()
        assert r.headers["Idempotency-Key"] == body["message_id"]
        by_message.setdefault(body["message_id"], set()).update(a["key"] for a in body["alerts"])
    delivered_keys = Counter(k for keys in by_message.values() for k in keys)
    resent = sum(1 for r in o.requests if 200 <= r.status < 300) - len(by_message)
    out.append(
        f"  notifications: {len(key_owner):,} (alert, step, recipient) keys planned in {len(planned):,} messages, "
        f"{len(dropped)} of them dropped because their alerts resolved first; {len(delivered_keys):,} keys "
        f"delivered under {len(by_message):,} idempotency keys, each key under one; {resent} repeated requests "
        f"(dropped by the gateway by key), {bad_signatures} bad signatures"
    )
    assert planned, "the notifier planned nothing"
    assert bad_signatures == 0
    assert set(by_message) == set(planned) - set(dropped), (
        f"delivered in the ledger, never at the gateway: {sorted(set(planned) - set(dropped) - set(by_message))[:5]};"
        f" at the gateway, not delivered in the ledger: {sorted(set(by_message) - (set(planned) - set(dropped)))[:5]}"
    )
    assert set(delivered_keys) == should, (
        f"planned but not delivered: {sorted(should - set(delivered_keys))[:5]}; "
        f"delivered but never planned: {sorted(set(delivered_keys) - should)[:5]}"
    )
    assert max(delivered_keys.values()) == 1, f"a key delivered in two messages: {delivered_keys.most_common(3)}"
    out.append("  timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in o.timings.items()))
    assert not o.late, f"disruptions that met no traffic (raise the size's cover_s): {o.late}"
    return out


# ---------------------------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        # In make test / CI (~3-4 min, alone after the parallel part: the module is `exclusive`); the full size
        # is `long`, run with `make chaos`.
        pytest.param(SHORT, id="short", marks=[pytest.mark.timeout(1800)]),
        pytest.param(FULL, id="full", marks=[pytest.mark.long, pytest.mark.timeout(5400)]),
    ],
)
async def test_chaos_loses_nothing_and_changes_no_alert(cluster: Cluster, size: Size, tmp_path: Path) -> None:
    spec = LIBRARY[SCENARIO]
    start = (int(time.time() * 1000) - int(spec.default_duration_s * 1000) - 60_000) // DAY_MS * DAY_MS
    sc = without_kitchens(build(SCENARIO, sites=size.sites, start_ms=start), size.kitchens)
    t0 = time.monotonic()
    reference = await run_once(cluster, sc, tmp_path, size, disturb=False)
    lines = check(reference, sc, None)
    ref_timeline = detector_timeline(reference.alerts)
    disturbed = await run_once(cluster, sc, tmp_path, size, disturb=True)
    lines += ["", "disruptions (seconds from the start of publishing):", *disturbed.events, ""]
    lines += check(disturbed, sc, ref_timeline)
    lines.insert(
        0,
        f"chaos[{size.name}]: scenario {SCENARIO!r}, {size.sites} sites, {len(sent_pairs(sc)):,} readings, "
        f"3 Kafka nodes (RF 3, min ISR 2), 2 bridges, 2 workers (+1), notifier, sink; broker stop "
        f"{size.broker_stop_s:.0f} s; {time.monotonic() - t0:.0f} s in all",
    )
    print("\n" + "\n".join(lines), flush=True)
