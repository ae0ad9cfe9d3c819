"""End-to-end benchmark: simulated devices -> MQTT -> bridge -> Kafka -> Faust worker -> alerts -> webhook,
and readings -> InfluxDB, every service real and on this machine.

    python -m benchmarks.e2e            # full run (~12 min): latency, saturation ramp, device scale, uploads
    python -m benchmarks.e2e --quick    # ~1 min: the pipeline keeps up with no loss; prints the figures

What it measures, each printed and written to ``benchmarks/results/e2e-<stamp>.json`` (+ a lag plot PNG):

* **latency**: MQTT publish of an out-of-range reading -> signed webhook received, with the rule delays and
  the notifier's grouping window set to zero for this measure; p50/p99 at a steady 1,000 readings/s;
* **saturation**: a ramp of offered rates; for each, readings/s acknowledged by Mosquitto (on receipt) and
  readings/s the bridge got into Kafka (its ``larder_ingest_accepted_total``, after acks=all), readings/s the
  worker's detectors processed meanwhile (its ``larder_worker_items_total``: a phase is sustained when this
  keeps pace with what went into Kafka), the bridge's backlog, whether the worker's and the sink's consumer lag
  stayed bounded, CPU and RSS per process, and which process held each phase back (for the worker, with the
  share of the phase its main thread spent in the detection stage, on states and on outputs: its
  ``larder_worker_busy_*_seconds_total``);
* **scale**: the same at 1k and 10k devices (one MQTT connection each), worker RSS per device;
* **uploads**: store-and-forward messages of 10 readings at the largest device count (compiled generator);
* **baselines**: the run's own last readings through Faust, a plain aiokafka loop and quix-streams.

No assertion on a timing: ``--quick`` fails only if the pipeline lost readings or was left behind (lag not
drained), which is a correctness property, and prints the figures for the CI log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import random
import secrets
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from aiohttp import web

from benchmarks import quiet
from benchmarks.loadgen import CompiledLoadGenerator, LoadGenerator, build_compiled
from pipeline import serde, siteconfig, stack
from pipeline.agents.core import BUSY_PARTS
from pipeline.alerts.channels.webhook import sign
from pipeline.contracts import records
from pipeline.services import Services, free_port
from pipeline.settings import Settings, load_settings
from pipeline.siteconfig import load
from pipeline.stack import influx, logins
from pipeline.stack.process import read_pid
from pipeline.topics import Topics

RESULTS = Path(__file__).parent / "results"
NORMAL_C = 4.0
EXCURSION_C = 15.0  # above the chilled high_high limit (12 °C) and high (8 °C)
#: The bench profile's allowed lateness and the worker's live clock period: a reading reaches the rules once the
#: clock passes its time + the lateness, so these two set the floor of the publish -> webhook latency.
LATENESS_MS = 100
TICK_S = 0.05
#: Readings of the run replayed through the three detection-stage consumers (Faust, plain loop, quix-streams).
BASELINE_READINGS = 300_000
#: Fewer readings than this and a consumer's start-up dominates its rate: the baselines get no ratio.
MIN_COMPARE_READINGS = 100_000
#: Fewer alerts than this give no p99 worth the name (of 20 samples, the "p99" is the maximum): below it the
#: report gives the maximum and the count instead.
MIN_P99_ALERTS = 1_000
#: The notifier settings of the latency phase, stated beside its figures: production groups a recipient's
#: notifications for 30 s and rate-limits them, which would measure the group window, not the pipeline.
LATENCY_NOTIFY = {"group_window_s": 0, "rate_limit": "unlimited (1,000,000 per hour)"}


# ---------------------------------------------------------------------------------------------------------------
# Site file and webhook receiver
# ---------------------------------------------------------------------------------------------------------------


def write_site_file(path: Path, devices: list[tuple[str, str]], webhook_url: str, per_site: int = 100) -> None:
    """Sites of ``per_site`` devices each, one asset per device, on a zero-delay profile, one webhook operator."""
    sites: dict[str, Any] = {}
    for i, (dev, secret) in enumerate(devices):
        site_id = f"B{i // per_site:05d}"
        site = sites.setdefault(
            site_id,
            {
                "name": f"bench site {site_id}",
                "assets": {},
                "devices": {},
                "recipients": {"operator": [{"name": "bench", "webhook": webhook_url, "channels": ["webhook"]}]},
                "escalation": {
                    "warning": [{"after_min": 0, "roles": ["operator"]}],
                    "critical": [{"after_min": 0, "roles": ["operator"]}],
                },
            },
        )
        site["assets"][f"a-{dev}"] = {"profile": "bench"}
        # interval_s 120: offline after 2 x 120 s without data, longer than the pauses between phases (a drain of
        # up to 60 s): otherwise every device of a phase goes "offline" in the pause and comes back in the next
        # phase, and 10,000 alerts opening and resolving load the notifier and the worker in the middle of a
        # throughput measure (seen: notifier at 32% of a core in the 20,000/s upload phase).
        site["devices"][dev] = {"asset": f"a-{dev}", "interval_s": 120, "secret": secret}
    doc = {
        "version": 1,
        "profiles": {
            "bench": {
                "base": "chilled",
                # No clear delay: the device's next reading resolves the alert, so each excursion opens alerts of
                # its own (with the default 5 min, a device stays open through the phase: one sample per device).
                "high": {"limit": 8.0, "delay_min": 0, "clear_delay_min": 0},
                "high_high": {"limit": 12.0, "delay_min": 0, "clear_delay_min": 0},
                "masks": {"startup_min": 0},
                # Readings wait for the allowed lateness before rules see them (default 1 min); for the latency
                # measure (rule delays zero) it is LATENESS_MS, above the bridge -> Kafka transit time (p99
                # ~10 ms at 1,000/s; a later reading is still processed, counted as late).
                "allowed_lateness_min": LATENESS_MS / 60_000,
            }
        },
        "sites": sites,
    }
    siteconfig.write_site_file(path, doc)


@dataclass
class Received:
    at: float
    alerts: list[dict[str, Any]]


class WebhookReceiver:
    """Plays the supervisors' webhook endpoint: records when each alert arrived."""

    def __init__(self) -> None:
        self.secret = secrets.token_urlsafe(24)
        self.bad_signatures = 0
        self.received: list[Received] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        now = time.time()
        raw = await request.read()
        expected = sign(self.secret, request.headers.get("X-Larder-Timestamp", ""), raw)
        if not hmac.compare_digest(expected, request.headers.get("X-Larder-Signature", "")):
            self.bad_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        body = serde.loads(raw)
        self.received.append(Received(now, list(_alerts_in(body))))
        return web.json_response({"ok": True})

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


def _alerts_in(body: Any) -> Iterator[dict[str, Any]]:
    """Webhook bodies carry one alert record or a group of them; find every contract-4 record inside."""
    if isinstance(body, dict):
        if "alert_id" in body and "subject" in body:
            yield body
            return
        for v in body.values():
            yield from _alerts_in(v)
    elif isinstance(body, list):
        for v in body:
            yield from _alerts_in(v)


# ---------------------------------------------------------------------------------------------------------------
# Sampling: consumer lag, CPU and RSS per process
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    offered: float
    acked: int
    #: readings the bridge has had acknowledged by Kafka (its larder_ingest_accepted_total), cumulative
    in_kafka: int
    #: readings of the current phase acked by Mosquitto and not yet in Kafka
    bridge_backlog: int
    lag: dict[str, int]
    cpu: dict[str, float]
    rss_mb: dict[str, float]


async def _counter(url: str, series: str) -> int:
    return int((await _series(url, [series]))[series])


async def _series(url: str, names: list[str]) -> dict[str, float]:
    """The values of ``names`` (full series, labels included) in one scrape of ``url``; 0 for a missing one."""
    import httpx

    async with httpx.AsyncClient() as client:
        text = (await client.get(url, timeout=5)).text
    found = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in found:
            found[name] = float(value)
    return found


#: How the report names the parts of the worker's busy counters (``larder_worker_busy_<part>_seconds_total``).
BUSY_LABELS = {
    "detect": "detection stage",
    "encode": "encoding states",
    "store": "writing states",
    "outputs": "outputs",
}


class Sampler:
    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        groups: dict[str, list[str]],
        procs: dict[str, int],
        bridge_metrics: str,
        worker_metrics: str,
    ) -> None:
        self.settings, self.topics, self.groups = settings, topics, groups
        self.bridge_metrics, self.worker_metrics = bridge_metrics, worker_metrics
        #: (load generator acks, bridge's readings in Kafka) when the current phase began
        self.phase_base = (0, 0)
        self.procs = {name: psutil.Process(pid) for name, pid in procs.items() if psutil.pid_exists(pid)}
        for p in self.procs.values():
            p.cpu_percent(None)
        self.samples: list[Sample] = []
        self._admin: Any = None
        self._consumer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka.bootstrap_servers)
        await self._admin.start()
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka.bootstrap_servers)
        await self._consumer.start()

    async def _offsets(self) -> tuple[dict[str, dict[Any, int]], dict[Any, int]]:
        from aiokafka.structs import TopicPartition

        committed: dict[str, dict[Any, int]] = {}
        tps = sorted(
            {TopicPartition(t, p) for ts in self.groups.values() for t in ts for p in range(self.topics.partitions)}
        )
        ends = await self._consumer.end_offsets(tps)
        for group in self.groups:
            got = await self._admin.list_consumer_group_offsets(group)
            committed[group] = {tp: (got[tp].offset if tp in got else 0) for tp in tps}
        return committed, ends

    async def lag(self) -> dict[str, int]:
        committed, ends = await self._offsets()
        return {
            g: sum(max(0, ends[tp] - committed[g][tp]) for tp in ends if tp.topic in self.groups[g])
            for g in self.groups
        }

    async def end_offsets(self) -> dict[Any, int]:
        return (await self._offsets())[1]

    async def caught_up(self, target: dict[Any, int]) -> bool:
        """Every group has committed past ``target`` (end offsets when publishing stopped). Lag itself never reads
        zero in live mode: the worker writes a clock tick into each partition every tick interval."""
        committed, _ = await self._offsets()
        return all(
            committed[g][tp] >= off for g in self.groups for tp, off in target.items() if tp.topic in self.groups[g]
        )

    async def in_kafka(self) -> int:
        """Readings the bridge got into Kafka (acks=all), from its Prometheus endpoint. The load generator's acks
        come from Mosquitto, which acknowledges on receipt: a bridge falling behind shows only here."""
        return await _counter(self.bridge_metrics, 'larder_ingest_accepted_total{source="mqtt"}')

    async def worker_items(self) -> int:
        """Readings the worker's detectors have processed (its ``larder_worker_items_total``), cumulative."""
        return await _counter(self.worker_metrics, 'larder_worker_items_total{concern="devices"}')

    async def worker_busy(self) -> dict[str, float]:
        """Seconds the worker's main thread has spent in each part of its work (:data:`BUSY_PARTS`), cumulative."""
        series = {part: f'larder_worker_busy_{part}_seconds_total{{concern="devices"}}' for part in BUSY_PARTS}
        values = await _series(self.worker_metrics, list(series.values()))
        return {part: values[name] for part, name in series.items()}

    async def sample(self, offered: float, acked: int) -> Sample:
        cpu, rss = {}, {}
        for name, p in self.procs.items():
            with contextlib.suppress(psutil.Error):
                tree = [p, *p.children(recursive=True)]
                cpu[name] = sum(q.cpu_percent(None) for q in tree)
                rss[name] = sum(q.memory_info().rss for q in tree) / 1e6
        in_kafka = await self.in_kafka()
        # Clamped: the compiled generator reports its acks every 50 ms, so they can trail the bridge's count.
        backlog = max(0, (acked - self.phase_base[0]) - (in_kafka - self.phase_base[1]))
        s = Sample(time.time(), offered, acked, in_kafka, backlog, await self.lag(), cpu, rss)
        self.samples.append(s)
        return s

    def track(self, name: str, pid: int) -> None:
        """Sample ``name`` from process ``pid`` from now on (the load generator changes between phases)."""
        proc = psutil.Process(pid)
        proc.cpu_percent(None)
        self.procs[name] = proc

    async def stop(self) -> None:
        if self._admin:
            await self._admin.close()
        if self._consumer:
            await self._consumer.stop()


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    devices: int
    offered_rate: float
    duration_s: float
    #: readings per MQTT message: 1, or a store-and-forward upload ({"readings": [...]})
    batch: int = 1
    published: int = 0
    #: how long the generator took to publish them (the rates below are over this time)
    publish_s: float = 0.0
    #: acknowledged by Mosquitto to the load generator (on receipt), in the end; ack_rate counts only those
    #: acknowledged while the phase published
    acked: int = 0
    ack_rate: float = 0.0
    #: taken into Kafka by the bridge while the phase published, and its largest backlog (acked - in Kafka)
    in_kafka_rate: float = 0.0
    bridge_backlog_max: int = 0
    #: readings the worker's detectors processed while the phase published, per second: the pipeline sustains
    #: the phase's rate if this keeps pace with in_kafka_rate
    worker_rate: float = 0.0
    #: share of the publishing time the worker's main thread spent in each part of its work (:data:`BUSY_PARTS`,
    #: wall time): whether a worker that falls behind is busy with the detectors or with running them
    worker_busy: dict[str, float] = field(default_factory=dict)
    lag_end: dict[str, int] = field(default_factory=dict)
    lag_max: dict[str, int] = field(default_factory=dict)
    #: per consumer group, how fast its lag (records) grew while the phase published (:func:`lag_growth`)
    lag_growth: dict[str, float] = field(default_factory=dict)
    #: which process held the phase back (:func:`limiting_stage`)
    limited_by: str = ""
    drained_s: float | None = None
    cpu_pct: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, Any] = field(default_factory=dict)


#: A stage keeps pace when it passes on at least this share of what reached it during the phase.
KEEPS_PACE = 0.97
#: A single-threaded process at this share of a core (CPU %) is saturated.
SATURATED_PCT = 90.0


def lag_growth(times: list[float], lags: list[int]) -> float:
    """Least-squares slope of a consumer's lag over the phase, records per second: ~0 when it keeps up (the lag
    moves around the commit interval's worth), positive when it falls behind."""
    n = len(times)
    if n < 2:
        return 0.0
    mt, ml = statistics.fmean(times), statistics.fmean(lags)
    var = sum((t - mt) ** 2 for t in times)
    return sum((t - mt) * (v - ml) for t, v in zip(times, lags, strict=True)) / var if var else 0.0


def limiting_stage(phase: Phase, cores: int) -> str:
    """Which process held the phase back, from what each stage passed on while it published, in pipeline
    order: the first stage that did not keep pace with its input, and whether the machine's cores were all
    busy (then every process only had a share of them, and more of that stage alone would not help here).
    Later stages that also fell behind what reached *them* follow ("then: ..."): on a full machine the first
    one is rarely the only one."""
    cpu = phase.cpu_pct
    busy = sum(cpu.values()) / 100
    cores_note = f"{busy:.1f} of {cores} cores busy" + (" (all)" if busy >= 0.9 * cores else "")

    def pct(name: str) -> str:
        return f"{name} {cpu.get(name, 0):.0f}% of a core"

    behind: list[str] = []
    worker_behind = phase.worker_rate < KEEPS_PACE * phase.in_kafka_rate
    published_rate = phase.published / (phase.publish_s or phase.duration_s)
    if published_rate < KEEPS_PACE * phase.offered_rate and phase.ack_rate >= KEEPS_PACE * published_rate:
        # Everything it wrote was taken: the generator did not offer the rate (its pacing, or its core).
        behind.append(
            f"load generator: published {published_rate:,.0f}/s of {phase.offered_rate:,.0f}/s asked, all of it "
            f"taken downstream ({pct('loadgen')}"
        )
    elif phase.ack_rate < KEEPS_PACE * phase.offered_rate:
        hot = [n for n in ("mosquitto", "loadgen") if cpu.get(n, 0) >= SATURATED_PCT]
        who = " and ".join(hot) if hot else "load generator + Mosquitto"
        behind.append(
            f"{who}: {phase.ack_rate:,.0f}/s of {phase.offered_rate:,.0f}/s offered taken "
            f"({pct('mosquitto')}, {pct('loadgen')}"
        )
    if phase.in_kafka_rate < KEEPS_PACE * phase.ack_rate:
        behind.append(
            f"bridge: {phase.in_kafka_rate:,.0f}/s into Kafka of {phase.ack_rate:,.0f}/s taken ({pct('bridge')}"
        )
    if worker_behind:
        behind.append(
            f"worker: {phase.worker_rate:,.0f}/s processed of {phase.in_kafka_rate:,.0f}/s into Kafka ({pct('worker')}"
            + worker_split(phase)
        )
    growing = {
        g: v
        for g, v in phase.lag_growth.items()
        # The worker's own lag grows when it is behind: said above already.
        if v > 0.03 * max(1.0, phase.in_kafka_rate) and not (worker_behind and g.endswith("worker"))
    }
    if growing:
        names = ", ".join(f"{g} +{v:,.0f} records/s" for g, v in growing.items())
        behind.append(f"a consumer's lag grew ({names}")
    if not behind:
        return f"none: every stage kept pace ({cores_note})"
    first, *then = behind
    return f"{first}; {cores_note})" + "".join(f"; then {b})" for b in then)


def worker_split(phase: Phase) -> str:
    """What the worker's main thread did with the phase's time (its busy counters, wall time), e.g. ``; share of
    the phase's wall time its main thread spent in: detection stage 61%, ...``; empty when not read."""
    if not phase.worker_busy:
        return ""
    parts = ", ".join(f"{BUSY_LABELS[part]} {share:.0%}" for part, share in phase.worker_busy.items())
    # Wall time (the worker's default clock): on a full machine a part also holds the waits for a core.
    return f"; share of the phase's wall time its main thread spent in: {parts}"


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bench:
    def __init__(self, settings: Settings, quick: bool, loadgen: str = "compiled") -> None:
        self.settings, self.quick, self.loadgen = settings, quick, loadgen
        self.prefix = f"bench{uuid.uuid4().hex[:6]}"
        self.topics = Topics(self.prefix, settings.readings_partitions)
        self.phases: list[Phase] = []
        self.samples: list[Sample] = []
        self.readings_in_influx = 0
        self.baselines: dict[str, float] = {}
        self.noise: list[str] = []
        self._base: tuple[str, Path, int, Path] | None = None

    async def run_phase(
        self,
        phase: Phase,
        lg: LoadGenerator | CompiledLoadGenerator,
        sampler: Sampler,
        excursion_every: int = 0,
        drain_timeout: float = 60,
    ) -> Phase:
        """Offer ``phase.offered_rate`` readings/s; every ``excursion_every``-th reading is out of range (and the
        device's next one is back in range, so the alert resolves and the next excursion opens a new one)."""
        in_excursion: set[str] = set()
        # Which reading is out of range is drawn at random: a fixed stride over devices visited round-robin
        # (every 50th of 1,000) hits the same 20 devices every pass, and gave 20-40 alerts in all.
        rng = random.Random(7)

        def value(dev: Any, _now: float) -> float:
            if dev.device_id in in_excursion:
                in_excursion.discard(dev.device_id)
                return NORMAL_C
            if excursion_every and rng.random() < 1 / excursion_every:
                in_excursion.add(dev.device_id)
                return EXCURSION_C
            return NORMAL_C

        pub0, ack0 = lg.stats.published, lg.stats.acked
        kafka0 = await sampler.in_kafka()
        items0 = await sampler.worker_items()
        busy0 = await sampler.worker_busy()
        sampler.phase_base = (ack0, kafka0)
        t0 = time.time()
        if phase.batch > 1:
            assert isinstance(lg, CompiledLoadGenerator), "uploads need the compiled generator"
            task = asyncio.create_task(lg.run_rate(phase.offered_rate, phase.duration_s, batch=phase.batch))
        else:
            task = asyncio.create_task(lg.run_rate(phase.offered_rate, phase.duration_s, value))
        while not task.done():
            await asyncio.sleep(1.0)
            s = await sampler.sample(phase.offered_rate, lg.stats.acked)
            print(
                f"  [{phase.name}] {time.time() - t0:5.1f}s acked {lg.stats.acked - ack0:>9,}  "
                f"in Kafka {s.in_kafka - kafka0:>9,}  lag {s.lag}",
                flush=True,
            )
        await task
        send_s = time.time() - t0
        # Rates over the publishing time count what happened in it: acks that arrive later (the generator's
        # writes wait in socket buffers when Mosquitto falls behind) are not the phase's throughput.
        acked_sent = lg.stats.acked - ack0
        in_kafka_sent = await sampler.in_kafka() - kafka0
        processed_sent = await sampler.worker_items() - items0
        busy1 = await sampler.worker_busy()
        await lg.wait_acked(drain_timeout)
        phase.published = lg.stats.published - pub0
        phase.publish_s = send_s
        phase.acked = lg.stats.acked - ack0
        phase.ack_rate = acked_sent / send_s
        phase.in_kafka_rate = in_kafka_sent / send_s
        phase.worker_rate = processed_sent / send_s
        phase.worker_busy = {part: round((busy1[part] - busy0[part]) / send_s, 3) for part in BUSY_PARTS}
        window = [s for s in sampler.samples if s.t >= t0]
        phase.bridge_backlog_max = max((s.bridge_backlog for s in window), default=0)
        phase.lag_max = {g: max((s.lag.get(g, 0) for s in window), default=0) for g in sampler.groups}
        phase.lag_growth = {
            g: round(lag_growth([s.t for s in window], [s.lag.get(g, 0) for s in window]), 1) for g in sampler.groups
        }
        phase.cpu_pct = {k: round(statistics.fmean(s.cpu.get(k, 0.0) for s in window), 1) for k in sampler.procs}
        phase.rss_mb = {k: round(max(s.rss_mb.get(k, 0.0) for s in window), 1) for k in sampler.procs}
        # Drained: how long after the last acknowledged publish until the bridge has every acknowledged reading
        # in Kafka and then every group committed past the end offsets as they stood at that point.
        t_end = time.time()
        target: dict[Any, int] | None = None
        while time.time() - t_end < drain_timeout:
            s = await sampler.sample(0, lg.stats.acked)
            if target is None and s.in_kafka - kafka0 >= phase.acked:
                target = await sampler.end_offsets()
            if target is not None and await sampler.caught_up(target):
                phase.drained_s = round(time.time() - t_end, 1)
                break
            await asyncio.sleep(0.5)
        phase.lag_end = sampler.samples[-1].lag
        phase.limited_by = limiting_stage(phase, psutil.cpu_count() or 1)
        self.phases.append(phase)
        return phase

    async def run(
        self,
        device_counts: list[int],
        ramp: list[float],
        latency_rate: float,
        phase_s: float,
        uploads: list[float] = (),  # type: ignore[assignment]
        upload_batch: int = 10,
        latency_s: float = 60.0,
    ) -> None:
        s = self.settings
        await asyncio.to_thread(stack.up, s, lambda m: print(f"[stack] {m}"))
        await stack.ensure_topics(s, self.topics)
        receiver = WebhookReceiver()
        hook_url = await receiver.start()
        metrics_port, worker_metrics_port = free_port(), free_port()
        max_devices = max(device_counts)
        devices = [(f"bd-{i:06d}", secrets.token_urlsafe(12)) for i in range(max_devices)]
        site_file = s.state_dir / "bench" / f"{self.prefix}-sites.yaml"
        write_site_file(site_file, devices, hook_url)
        logins.register_devices(s, dict(devices), source=f"benchmark {self.prefix}")  # adds only
        await asyncio.sleep(1.0)  # SIGHUP reload
        influx.create_database(s, self.prefix)  # the run's own database, so counts are exact
        env = {
            "LARDER_NOTIFY__GROUP_WINDOW_S": str(LATENCY_NOTIFY["group_window_s"]),
            "LARDER_NOTIFY__RATE_LIMIT": "1000000",
            "LARDER_INFLUX__DATABASE": self.prefix,
            "LARDER_NOTIFY__WEBHOOK_SECRET": receiver.secret,
            # Alerts leave the detector once the live clock passes ts + allowed lateness (LATENESS_MS, TICK_S).
            "LARDER_WORKER_TICK_INTERVAL": str(TICK_S),
            "LARDER_INGEST__BRIDGE_METRICS_PORT": str(metrics_port),
            "LARDER_WORKER_METRICS_PORT": str(worker_metrics_port),
        }
        services = Services(
            s,
            site_file,
            self.prefix,
            clock="live",
            names=("bridge", "worker", "notifier", "sink"),
            bridge_instance=self.prefix,
            extra_env=env,
            worker_store="rocksdb",  # as in production
            report=lambda m: print(f"[services] {m}"),
        )
        await asyncio.to_thread(services.start)
        try:
            procs = {p.name: p.proc.pid for p in services.processes if p.proc is not None}
            for name, pidfile in (("kafka", "kafka.pid"), ("influxdb", "influxdb.pid"), ("mosquitto", "mosquitto.pid")):
                pid = read_pid(s.state_dir / "run" / pidfile)
                if pid:
                    procs[name] = pid
            procs["loadgen"] = os.getpid()
            groups = {
                f"{self.prefix}-worker": [self.topics.readings],
                "larder-sink": [self.topics.readings],
            }
            sampler = Sampler(
                s,
                self.topics,
                groups,
                procs,
                f"http://127.0.0.1:{metrics_port}/metrics",
                f"http://127.0.0.1:{worker_metrics_port}/metrics",
            )
            await sampler.start()
            try:
                for n in sorted(device_counts):
                    if n == min(device_counts):
                        # The latency phase needs each reading's send time and chosen excursions: Python's
                        # generator, at 1,000/s its CPU is small.
                        lg = await self._connect(LoadGenerator(s.mqtt.host, s.mqtt.port, devices[:n]), n)
                        sampler.track("loadgen", os.getpid())
                        before = len(receiver.received)
                        ph = await self.run_phase(
                            Phase(f"latency@{latency_rate:g}/s", n, latency_rate, latency_s),
                            lg,
                            sampler,
                            excursion_every=max(1, int(latency_rate // 20)),
                        )
                        await asyncio.sleep(3.0)  # last webhooks
                        stamps = await self._kafka_times()
                        ph.latency_ms = self._latencies(lg, receiver.received[before:], stamps)
                        print(f"[latency] {ph.latency_ms}", flush=True)
                        await lg.close()
                        if not ramp:
                            continue
                    throughput = await self._connect(self._throughput_generator(devices[:n]), n)
                    if isinstance(throughput, CompiledLoadGenerator):
                        sampler.track("loadgen", throughput.pid)
                    if n == min(device_counts):
                        for rate in ramp:
                            await self.run_phase(Phase(f"ramp@{rate:g}/s", n, rate, phase_s), throughput, sampler)
                    else:
                        rate = ramp[-1] if ramp else latency_rate
                        await self.run_phase(Phase(f"scale{n}@{rate:g}/s", n, rate, phase_s), throughput, sampler)
                    if n == max(device_counts) and isinstance(throughput, CompiledLoadGenerator):
                        # Loggers that sample more often than they connect upload store-and-forward batches:
                        # the same readings/s in a tenth of the MQTT messages.
                        for rate in uploads:
                            name = f"upload{upload_batch}x{n}@{rate:g}/s"
                            phase = Phase(name, n, rate, phase_s, batch=upload_batch)
                            await self.run_phase(phase, throughput, sampler)
                    await throughput.close()
                self.readings_in_influx = await asyncio.to_thread(self._count_influx, sum(p.acked for p in self.phases))
            finally:
                self.samples = sampler.samples
                await sampler.stop()
        finally:
            await asyncio.to_thread(services.stop)
            await receiver.stop()
        # After the services stopped: the three consumers get the machine to themselves, one after the other.
        # --quick checks loss, never timing: a comparison of three consumers on its few readings says nothing.
        if not self.quick:
            self.baselines = await self._baselines(site_file)

    def _throughput_generator(self, devices: list[tuple[str, str]]) -> LoadGenerator | CompiledLoadGenerator:
        m = self.settings.mqtt
        if self.loadgen == "python":
            return LoadGenerator(m.host, m.port, devices, record_times=False)
        return CompiledLoadGenerator(build_compiled(self.settings.cache_dir), m.host, m.port, devices)

    async def _connect(self, lg: Any, n: int) -> Any:
        t = time.time()
        await lg.connect(progress=lambda c: print(f"  connected {c:,}", flush=True))
        print(f"[{type(lg).__name__}] {n:,} device connections in {time.time() - t:.1f} s", flush=True)
        return lg

    async def _baselines(self, site_file: Path) -> dict[str, float]:
        """The detection stage three ways over the readings this run carried (the record batches the bridge
        made of the MQTT publishes; not the live clock's ticks): Faust `larder worker` with RocksDB tables and the
        plain aiokafka loop here, quix-streams in :meth:`quix_baseline` (it needs the main thread), each on the
        same production detectors (``benchmarks.detection``)."""
        from benchmarks import detection

        records, n = await self._recorded(BASELINE_READINGS)
        if not n:
            return {}
        topics = Topics(f"{self.prefix}-base", self.topics.partitions)
        single = f"{topics.prefix}.single-readings.v1"
        tmp = self.settings.state_dir / "bench" / topics.prefix
        tmp.mkdir(parents=True, exist_ok=True)
        self._base = (single, site_file, n, tmp)
        await detection.prepare(self.settings, topics, single)
        print(f"[baselines] {n:,} readings in {len(records):,} records of this run, three consumers", flush=True)
        faust = await detection.run_faust(self.settings, topics, site_file, records, n, tmp)
        plain = await detection.run_plain(self.settings, topics.readings, load(site_file), topics.partitions, n)
        items = [it for _p, _k, v in records for it in _items(v)]
        await detection.produce(self.settings, single, [(None, it["device"].encode(), serde.dumps(it)) for it in items])
        return {"readings": n, "faust": faust["rate"], "plain": plain["rate"]}

    def quix_baseline(self, measure: bool = True) -> None:
        """The quix-streams consumer over the same readings (one per record), then the baselines' cleanup."""
        from benchmarks import detection

        if self._base is None:
            return
        single, site_file, n, tmp = self._base
        try:
            if measure and self.baselines:
                self.baselines["quix"] = detection.run_quix(self.settings, single, load(site_file), n, tmp)["rate"]
                print(f"[baselines] {self.baselines}", flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def cleanup(self) -> None:
        """Delete the run's topics (its own, the baselines', Faust's and quix-streams' internal ones) and its
        InfluxDB database: the figures are taken, and a broker holding thousands of partitions restarts slowly."""
        try:
            pruned = stack.prune(self.settings, [self.prefix])
            print(f"[cleanup] deleted {len(pruned.topics)} topics and database {self.prefix}", flush=True)
        except Exception as exc:  # the figures stand; `larder stack prune` finishes the job later
            print(f"[cleanup] failed ({exc!r}); `larder stack prune` deletes what is left", flush=True)

    async def _recorded(self, cap: int) -> tuple[list[tuple[int, bytes, bytes]], int]:
        """The last record batches of this run's readings topic holding ~``cap`` readings (the saturation
        phases, where throughput matters), an equal share per partition, in log order per partition:
        ``[(partition, key, value)]`` and the number of readings in them."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka.bootstrap_servers, enable_auto_commit=False)
        await consumer.start()
        out: list[tuple[int, bytes, bytes]] = []
        n = 0
        try:
            tps = [TopicPartition(self.topics.readings, p) for p in range(self.topics.partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            share = cap // len(tps)
            for tp in tps:
                # Read back from the end in growing steps until the partition's share is covered, then keep
                # the newest records that hold it.
                window = 64
                tail: list[tuple[bytes, bytes, int]] = []
                while True:
                    start = max(0, ends[tp] - window)
                    consumer.seek(tp, start)
                    tail = []
                    while await consumer.position(tp) < ends[tp]:
                        for rec in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                            # Readings only: the live worker's clock ticks (every 50 ms here, for the latency floor)
                            # would have Faust and the plain loop run every device's timers, quix-streams none.
                            count = len(_items(rec.value))
                            if rec.offset < ends[tp] and count:
                                tail.append((rec.key or b"", rec.value, count))
                    if start == 0 or sum(c for *_, c in tail) >= share:
                        break
                    window *= 4
                kept: list[tuple[int, bytes, bytes]] = []
                got = 0
                for key, value, count in reversed(tail):
                    if got >= share:
                        break
                    kept.append((tp.partition, key, value))
                    got += count
                out.extend(reversed(kept))
                n += got
        finally:
            await consumer.stop()
        return out, n

    def _count_influx(self, expected: int, timeout: float = 60) -> int:
        """Readings the sink wrote to this run's database (one point per device and timestamp)."""
        from influxdb_client import InfluxDBClient

        i = self.settings.influx
        flux = (
            f'from(bucket: "{self.prefix}/autogen") |> range(start: 2000-01-01T00:00:00Z) '
            '|> filter(fn: (r) => r._measurement == "reading" and r._field == "temp_c") |> group() |> count()'
        )
        deadline = time.monotonic() + timeout
        count = 0
        with InfluxDBClient(url=i.base_url, token=i.token_value(), org=i.org, timeout=60_000) as client:
            while time.monotonic() < deadline:
                tables = client.query_api().query(flux)
                count = sum(int(r.get_value()) for t in tables for r in t.records)
                if count >= expected:
                    break
                time.sleep(1.0)
        print(f"[influx] {count:,} readings in InfluxDB, {expected:,} acknowledged by the bridge", flush=True)
        return count

    async def _kafka_times(self) -> tuple[dict[tuple[str, int], int], dict[str, int]]:
        """When each reading's batch record and each open alert's record were produced (Kafka CreateTime, ms):
        the two intermediate points of the publish -> webhook path."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=100
        )
        await consumer.start()
        readings: dict[tuple[str, int], int] = {}
        alerts: dict[str, int] = {}
        try:
            n = self.topics.partitions
            tps = [TopicPartition(t, p) for t in (self.topics.readings, self.topics.alerts) for p in range(n)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)

            async def behind() -> bool:
                return any([await consumer.position(tp) < ends[tp] for tp in tps])

            while await behind():
                for tp, recs in (await consumer.getmany(timeout_ms=500)).items():
                    for rec in recs:
                        body = serde.loads(rec.value)
                        if tp.topic == self.topics.alerts:
                            if body.get("state") == "open":
                                alerts.setdefault(body["alert_id"], rec.timestamp)
                        else:
                            for it in records.batch_items(body, "readings"):
                                readings.setdefault((it["device"], it["seq"]), rec.timestamp)
        finally:
            await consumer.stop()
        return readings, alerts

    def _latencies(
        self,
        lg: LoadGenerator,
        received: list[Received],
        stamps: tuple[dict[tuple[str, int], int], dict[str, int]],
    ) -> dict[str, float]:
        """Publish -> webhook per alert, and its three stages: publish -> batch in Kafka (bridge), -> alert in
        Kafka (worker, which holds a reading for the allowed lateness), -> webhook received (notifier)."""
        from datetime import datetime

        from pipeline.schemas import to_ms

        in_kafka, alert_made = stamps
        sent_by_ts: dict[tuple[str, int], tuple[int, float]] = {}
        for (dev, seq), t in lg.stats.sent_at.items():
            sent_by_ts[(dev, int(t * 1000))] = (seq, t)
        lat: list[float] = []
        stages: dict[str, list[float]] = {"bridge": [], "worker": [], "notifier": []}
        seen: set[str] = set()
        for r in received:
            for a in r.alerts:
                if a.get("state") != "open" or a["alert_id"] in seen:
                    continue
                seen.add(a["alert_id"])
                opened = to_ms(datetime.fromisoformat(a["opened_at"].replace("Z", "+00:00")))
                found = _nearest(sent_by_ts, a["subject"], opened)
                if found is None:
                    continue
                seq, sent = found
                lat.append((r.at - sent) * 1000)
                batch_ms, alert_ms = in_kafka.get((a["subject"], seq)), alert_made.get(a["alert_id"])
                if batch_ms is not None and alert_ms is not None:
                    stages["bridge"].append(batch_ms - sent * 1000)
                    stages["worker"].append(alert_ms - batch_ms)
                    stages["notifier"].append(r.at * 1000 - alert_ms)
        out: dict[str, Any] = {
            "n": len(lat),
            "p50": round(_pct(lat, 0.5), 1),
            # Below MIN_P99_ALERTS the 99th percentile is (nearly) the maximum: not reported as a p99.
            "p99": round(_pct(lat, 0.99), 1) if len(lat) >= MIN_P99_ALERTS else None,
            "max": round(max(lat), 1) if lat else float("nan"),
            "lateness_ms": LATENESS_MS,
            "tick_ms": TICK_S * 1000,
            "notifier": LATENCY_NOTIFY,
        }
        for name, values in stages.items():
            out[f"{name}_p50"] = round(_pct(values, 0.5), 1)
            out[f"{name}_p99"] = round(_pct(values, 0.99), 1) if len(values) >= MIN_P99_ALERTS else None
        return out

    def report(self) -> dict[str, Any]:
        out = {
            "machine": {
                "cpus": psutil.cpu_count(),
                "mem_gb": round(psutil.virtual_memory().total / 1e9, 1),
                "python": sys.version.split()[0],
            },
            "quick": self.quick,
            "not_quiet": self.noise,
            # Other work on the machine shows here even when quiet.check finds no larder service of its own.
            "load_avg_at_report": [round(x, 2) for x in os.getloadavg()],
            "loadgen": self.loadgen,
            "phases": [asdict(p) for p in self.phases],
            "readings_in_influx": self.readings_in_influx,
            "baselines": self.baselines,
        }
        RESULTS.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (RESULTS / f"e2e-{stamp}.json").write_text(json.dumps(out, indent=2))
        self._plot(RESULTS / f"e2e-{stamp}-lag.png")
        print(
            "\n| phase | devices | offered/s | acked by Mosquitto /s | into Kafka by the bridge /s | "
            "processed by the worker /s | max bridge backlog (readings) | max lag worker / sink (records) | "
            "drained after | "
            "CPU % bridge / worker / sink / notifier / mosquitto / kafka / influxdb / loadgen | RSS MB worker |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for p in self.phases:
            lags = " / ".join(str(v) for v in p.lag_max.values())
            procs = ("bridge", "worker", "sink", "notifier", "mosquitto", "kafka", "influxdb", "loadgen")
            cpu = " / ".join(str(p.cpu_pct.get(k, "-")) for k in procs)
            drained = f"{p.drained_s} s" if p.drained_s is not None else "not drained"
            print(
                f"| {p.name} | {p.devices:,} | {p.offered_rate:,.0f} | {p.ack_rate:,.0f} | {p.in_kafka_rate:,.0f} | "
                f"{p.worker_rate:,.0f} | {p.bridge_backlog_max:,} | {lags} | "
                f"{drained} | {cpu} | {p.rss_mb.get('worker', '-')} |"
            )
        print(
            "\nWhat held each phase back (the first stage that did not keep pace with its input while it published; "
            "then the later ones that also fell behind):"
        )
        for p in self.phases:
            growth = ", ".join(f"{g} {v:+,.0f}/s" for g, v in p.lag_growth.items())
            print(f"- {p.name}: {p.limited_by}; lag trend {growth}")
        for p in self.phases:
            if p.latency_ms:
                print(f"\nlatency publish -> webhook at {p.offered_rate:g} readings/s: {p.latency_ms}")
        b = self.baselines
        if "quix" in b and b["readings"] < MIN_COMPARE_READINGS:
            print(
                f"\ndetection stage on this run's last {b['readings']:,.0f} readings: Faust {b['faust']:,.0f}/s, plain "
                f"loop {b['plain']:,.0f}/s, quix-streams {b['quix']:,.0f}/s (fewer than {MIN_COMPARE_READINGS:,} "
                "readings: start-up dominates, no ratio given)"
            )
        elif "quix" in b:
            print(
                f"\ndetection stage on this run's last {b['readings']:,.0f} readings (ticks left out), same detectors, "
                "one after another:\n\n| consumer | readings/s | vs plain loop |\n|---|---|---|\n"
                f"| Faust `larder worker` (RocksDB tables, changelogs) | {b['faust']:,.0f} | "
                f"{b['faust'] / b['plain']:.0%} |\n"
                f"| plain aiokafka loop (dict, no durability) | {b['plain']:,.0f} | 100% |\n"
                f"| quix-streams (one reading per record) | {b['quix']:,.0f} | {b['quix'] / b['plain']:.0%} |\n\n"
                f"Faust / quix-streams: {b['faust'] / b['quix']:.1f}x"
            )
        print(f"\nresults: {RESULTS / f'e2e-{stamp}.json'}")
        return out

    def _plot(self, path: Path) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        if not self.samples:
            return
        t0 = self.samples[0].t
        ts = [s.t - t0 for s in self.samples]
        fig, (ax, bx) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        for g in self.samples[0].lag:
            ax.plot(ts, [s.lag.get(g, 0) for s in self.samples], label=f"lag {g}")
        ax.set_ylabel("consumer lag (Kafka records)")
        ax.legend(loc="upper left")
        # Mosquitto acks on receipt; what it holds for the bridge is the ingest stage's own lag.
        bx.plot(ts, [s.bridge_backlog for s in self.samples], label="bridge backlog (readings)")
        bx.set_ylabel("readings acked by Mosquitto,\nnot yet in Kafka")
        bx.set_xlabel("seconds")
        bx2 = bx.twinx()
        bx2.plot(ts, [s.offered for s in self.samples], "k--", label="offered/s")
        bx2.set_ylabel("offered readings/s")
        bx.legend(loc="upper left")
        fig.tight_layout()
        fig.savefig(path, dpi=100)


def _items(value: bytes) -> list[dict[str, Any]]:
    return records.batch_items(value, "readings")


def _nearest(sent: dict[tuple[str, int], tuple[int, float]], device: str, ts_ms: int) -> tuple[int, float] | None:
    for delta in (0, -1, 1):
        if (device, ts_ms + delta) in sent:
            return sent[(device, ts_ms + delta)]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="< 1 min: keeps up, no loss; prints figures")
    ap.add_argument("--devices", default=None, help="comma-separated device counts (default 1000,10000)")
    ap.add_argument(
        "--ramp", default=None, help="comma-separated offered rates (default 5000,10000,20000,30000; 'none': skip)"
    )
    ap.add_argument(
        "--loadgen",
        choices=("compiled", "python"),
        default="compiled",
        help="generator of the throughput phases: benchmarks/loadgen_go (default) or benchmarks/loadgen.py",
    )
    ap.add_argument(
        "--uploads",
        default=None,
        help="comma-separated offered rates of store-and-forward phases at the largest device count "
        "(default 20000,30000; 'none': skip, the default with --quick or --loadgen python)",
    )
    ap.add_argument("--upload-batch", type=int, default=10, help="readings per store-and-forward message (10)")
    ap.add_argument("--phase-s", type=float, default=None, help="seconds per phase (default 20; quick 8)")
    ap.add_argument(
        "--latency-s",
        type=float,
        default=None,
        help=f"seconds of the steady 1,000 readings/s latency phase (default 60: >= {MIN_P99_ALERTS:,} alerts; "
        "quick 8)",
    )
    args = ap.parse_args()
    settings = load_settings()
    quick = args.quick
    devices = [int(x) for x in (args.devices or ("500" if quick else "1000,10000")).split(",")]

    def rates(text: str, option: str) -> list[float]:
        if text == "none":
            return []
        try:
            return [float(x) for x in text.split(",") if x]
        except ValueError:
            ap.error(f"{option}: comma-separated readings/s or 'none', not {text!r}")

    ramp = rates(args.ramp or ("3000" if quick else "5000,10000,20000,30000"), "--ramp")
    phase_s = args.phase_s or (8.0 if quick else 20.0)
    latency_s = args.latency_s or (8.0 if quick else 60.0)
    no_uploads = quick or args.loadgen == "python"
    uploads = rates(args.uploads or ("none" if no_uploads else "20000,30000"), "--uploads")
    bench = Bench(settings, quick, args.loadgen)
    bench.noise = quiet.check(settings)
    # The services run in their own process groups: left running they skew every later measurement.
    quiet.unwind_on_sigterm()
    interrupted = False
    try:
        asyncio.run(bench.run(devices, ramp, 1000.0, phase_s, uploads, args.upload_batch, latency_s))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        try:
            bench.quix_baseline(measure=not interrupted)
        finally:
            bench.cleanup()
    if interrupted:
        sys.exit("interrupted: services stopped, no figures")
    out = bench.report()
    lost = [p["name"] for p in out["phases"] if p["acked"] < p["published"]]
    behind = [p["name"] for p in out["phases"] if p["drained_s"] is None]
    acked = sum(p["acked"] for p in out["phases"])
    if lost or behind or out["readings_in_influx"] != acked:
        print(
            f"FAILED: readings not acknowledged in {lost}; lag not drained in {behind}; "
            f"{out['readings_in_influx']:,} of {acked:,} acknowledged readings in InfluxDB"
        )
        sys.exit(1)
    print(f"OK: all {acked:,} readings acknowledged after Kafka and in InfluxDB once; every consumer caught up")


if __name__ == "__main__":
    main()
