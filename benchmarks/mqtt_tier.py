"""MQTT tier scale-out (issue 26, part 2): one Mosquitto, two independent Mosquittos, a 3-node RabbitMQ cluster.

    python -m benchmarks.mqtt_tier [--n 30000] [--devices 60] [--window 20] [--tiers single,split,rabbitmq]

Needs the running stack (`larder stack up`, honouring LARDER_*). Installs and starts the RabbitMQ cluster itself
(``pipeline.stack.rabbitmq``, apt on first use, ~80 s to form) and a second Mosquitto on a free port with its own
state folder (``<state_dir>/mqtt-tier-b``), and stops both at the end (``--keep-rabbitmq`` leaves the cluster).

The same flood for every tier: ``--devices`` devices, each on its own authenticated MQTT 3.1.1 connection
(``benchmarks.loadgen``'s packets), publishing QoS 1 readings as fast as the broker acknowledges them with at
most ``--window`` unacknowledged each, ``--n`` readings in all. Every PUBACK is recorded per (device, seq).

- **single**: the stack's Mosquitto + one ``larder bridge`` (plain subscription: survives a broker restart).
- **split**: the stack's Mosquitto and a second one, half of the devices each (as a site file or DNS would
  spread them), each with its own ``larder bridge``.
- **rabbitmq**: the 3 nodes, devices round-robin over their MQTT listeners, two ``pipeline.ingest.amqp_bridge``
  processes consuming the quorum queue from the two nodes that do not lead it.

For each tier three runs on fresh topics: **live** (throughput: readings in Kafka over the span of their Kafka
timestamps, and PUBACKs per second at the devices; CPU seconds and peak RSS of broker, bridge and this process);
**kill** (``kill -9`` of a broker once its devices have half their readings PUBACKed: the stack's Mosquitto for
single, the second Mosquitto for split, the quorum queue's leader for rabbitmq; a killed Mosquitto is restarted
from its persistence file and its bridge reconnects, a killed RabbitMQ node is restarted and rejoins; devices of
the killed broker stop); **kill with the bridges away** (the same, the bridges stopped with their sessions kept
for the whole flood and started after the recovery: the broker holds every reading when it dies). Then
everything is read back from Kafka until the acknowledged readings are all there or nothing new arrived for
``--settle`` seconds, and **lost** = PUBACKed (device, seq) pairs that are not in Kafka. Writes
``benchmarks/results/mqtt-tier-<time>.json`` and prints a Markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks import quiet, resultfile
from benchmarks.ingest import machine
from benchmarks.loadgen import LoadGenerator, _Connection, connect_packet
from pipeline import stack
from pipeline.services import free_port
from pipeline.settings import Settings, load_settings
from pipeline.siteconfig import write_site_file
from pipeline.stack import logins, mosquitto, rabbitmq
from pipeline.stack.process import port_open, read_pid, stop_pid, wait_until
from pipeline.testing import IngestEnv, Proc, Readings, clear_session, consume, ingest_site_doc
from pipeline.topics import Topics

#: Where the benchmark's device logins say they came from (logins.json), so a leftover is recognisable.
SOURCE = "benchmarks.mqtt_tier"
ROOT = Path(__file__).resolve().parents[1]


def say(msg: str) -> None:
    print(f"> {msg}", file=sys.stderr, flush=True)


# -- the flood ------------------------------------------------------------------------------------------------


@dataclass
class FloodResult:
    published: int
    acked: set[tuple[str, int]]
    seconds: float
    killed_at: float | None = None  # seconds into the flood
    dead_devices: int = 0


async def flood(
    devices: list[tuple[str, str, int]],
    per_device: int,
    window: int,
    *,
    kill_after: int | None = None,
    kill: Callable[[], None] | None = None,
    victims: set[str] | None = None,
    timeout: float = 300.0,
) -> FloodResult:
    """Each device (id, secret, MQTT port) publishes ``per_device`` QoS 1 readings, at most ``window``
    unacknowledged; once the ``victims`` (the devices of the broker to be killed; default all) have ``kill_after``
    PUBACKs, ``kill()`` runs: mid-flood for those devices whatever the others do. A device whose connection dies
    stops: what it had not got a PUBACK for is its to resend, not the tier's to keep."""
    lg = LoadGenerator("127.0.0.1", 0, [(d, s) for d, s, _p in devices], record_times=False)
    loop = asyncio.get_running_loop()
    ports = {d: p for d, _s, p in devices}

    async def connect(dev: Any) -> None:
        for attempt in range(50):  # a broker reloading its password file (SIGHUP) refuses for a moment
            port = ports[dev.device_id]
            _, conn = await loop.create_connection(lambda: _Connection(dev, lg.stats), "127.0.0.1", port)
            assert conn.transport is not None
            conn.transport.write(connect_packet(f"lg-{dev.device_id}", dev.device_id, dev.secret))
            with contextlib.suppress(ConnectionError):
                if await asyncio.wait_for(conn.connack, 10) == 0:
                    dev.conn = conn
                    return
            conn.transport.close()
            await asyncio.sleep(0.2 * (attempt + 1))
        raise ConnectionRefusedError(f"{dev.device_id} could not log in to port {ports[dev.device_id]}")

    await asyncio.gather(*(connect(d) for d in lg.devices))
    t0 = time.monotonic()
    killed_at: float | None = None
    active = list(lg.devices)
    watched = [d for d in lg.devices if victims is None or d.device_id in victims]
    dead = 0
    while active:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"flood not done in {timeout:g} s: {lg.stats.acked:,} of {lg.stats.published:,} acked")
        now = time.time()
        still = []
        for dev in active:
            conn = dev.conn
            if conn is None or conn.transport is None or conn.transport.is_closing():
                dead += 1
                continue
            while len(dev.unacked) < window and dev.seq < per_device:
                lg.publish(dev, now, 4.0)
            if dev.seq < per_device or dev.unacked:
                still.append(dev)
        active = still
        if (
            kill is not None
            and killed_at is None
            and kill_after is not None
            and sum(d.seq - len(d.unacked) for d in watched) >= kill_after
        ):
            kill()
            killed_at = time.monotonic() - t0
        await asyncio.sleep(0.002)
    seconds = time.monotonic() - t0
    acked = {(d.device_id, s) for d in lg.devices for s in range(1, d.seq + 1)}
    for d in lg.devices:
        acked -= {(d.device_id, s) for s in d.unacked.values()}
    await lg.close()
    return FloodResult(lg.stats.published, acked, seconds, killed_at, dead)


# -- resource sampling ----------------------------------------------------------------------------------------


class Sampler:
    """CPU seconds and peak RSS of the broker and bridge processes while a flood runs (sampled every 0.25 s)."""

    def __init__(self, roles: dict[str, list[int]]) -> None:
        self.procs = {r: [psutil.Process(p) for p in pids] for r, pids in roles.items()}
        self.cpu0 = {r: sum(self._cpu(p) for p in ps) for r, ps in self.procs.items()}
        self.peak = dict.fromkeys(self.procs, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    @staticmethod
    def _rss(p: psutil.Process) -> int:
        try:
            return int(p.memory_info().rss)
        except psutil.Error:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for r, ps in self.procs.items():
                self.peak[r] = max(self.peak[r], sum(self._rss(p) for p in ps))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu = {r: round(sum(self._cpu(p) for p in ps) - self.cpu0[r], 2) for r, ps in self.procs.items()}


class StampedReadings(Readings):
    """The (device, seq) pairs in Kafka, and each record's Kafka timestamp (when the bridge produced it)."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[int] = []

    def __call__(self, record: Any) -> None:
        super().__call__(record)
        self.stamps.append(record.timestamp)


# -- a tier ---------------------------------------------------------------------------------------------------


@dataclass
class Tier:
    """What a tier must provide to the harness."""

    name: str
    device_ports: Callable[[list[str]], dict[str, int]]  # device -> the MQTT port it connects to
    start_bridges: Callable[[IngestEnv], list[Proc]]
    broker_pids: Callable[[], list[int]]
    kill: Callable[[], str]  # kill -9 one broker node; returns what was killed
    victims: Callable[[dict[str, int]], set[str]]  # from device -> port: the devices of the node ``kill`` kills
    recover: Callable[[], str]  # after a kill run: bring the killed node back; returns what happened
    processes: str  # the operator's view, for the report
    extra: dict[str, Any] = field(default_factory=dict)
    # bridge instance -> the settings of the Mosquitto it logs in to (its port and state folder: where its
    # login is registered and its session lives); the stack's own broker when absent
    bridge_brokers: dict[str, Settings] = field(default_factory=dict)


@dataclass
class Harness:
    settings: Settings
    workdir: Path
    n: int
    n_devices: int
    window: int
    settle: float
    devices: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.devices = {
            f"d-{tag}-{i}": ("a1" if i % 2 == 0 else "b1", f"secret-{uuid.uuid4().hex[:12]}")
            for i in range(self.n_devices)
        }
        self.site_file = self.workdir / "sites.yaml"
        write_site_file(self.site_file, ingest_site_doc(self.devices, {}), header="benchmarks.mqtt_tier devices")
        self.per_device = self.n // self.n_devices

    def secrets(self, ids: list[str] | None = None) -> dict[str, str]:
        return {d: s for d, (_a, s) in self.devices.items() if ids is None or d in ids}

    def run(self, tier: Tier, *, kill: bool, away: bool = False) -> dict[str, Any]:
        """One flood on fresh topics; ``kill``: kill -9 a broker mid-flood; ``away``: the bridges are stopped
        (sessions kept) for the whole flood and started again after the broker's recovery, so the broker holds
        every reading when it dies, as it does while a bridge is down or far behind."""
        topics = Topics(prefix=f"b{uuid.uuid4().hex[:8]}", partitions=self.settings.readings_partitions)
        asyncio.run(stack.ensure_topics(self.settings, topics))
        env = IngestEnv(self.settings, topics, self.site_file, self.workdir, self.devices, {})
        procs: list[Proc] = []
        try:
            procs = tier.start_bridges(env)
            ports = tier.device_ports(list(self.devices))
            devs = [(d, s, ports[d]) for d, (_a, s) in self.devices.items()]
            what = ""

            def do_kill() -> None:
                nonlocal what
                what = tier.kill()
                say(f"{tier.name}: kill -9 {what}")

            if away:
                for p in procs:
                    p.stop()
            roles = {
                "broker": tier.broker_pids(),
                "bridge": [] if away else [p.popen.pid for p in procs if p.popen is not None],
                # This process: mostly the devices' side (the flood) and the sampler. Near a full core means
                # the flood, not the tier, set the pace.
                "load_generator": [os.getpid()],
            }
            victims = tier.victims(ports)
            with Sampler(roles) as sampler:
                fl = asyncio.run(
                    flood(
                        devs,
                        self.per_device,
                        self.window,
                        kill_after=self.per_device * len(victims) // 2 if kill else None,
                        kill=do_kill,
                        victims=victims,
                    )
                )
            recovered = tier.recover() if kill else ""
            if recovered:
                say(f"{tier.name}: {recovered}")
            if away:
                for p in procs:
                    p.start(timeout=120)
            got = asyncio.run(self.read_back(topics, fl.acked))
            missing = fl.acked - set(got.pairs)
            stamps = got.stamps
            span = (max(stamps) - min(stamps)) / 1000 if len(stamps) > 1 else float("nan")
            out: dict[str, Any] = {
                "run": ("kill_bridges_away" if away else "kill") if kill else "live",
                "published": fl.published,
                "pubacked": len(fl.acked),
                "in_kafka": len(got.pairs),
                "duplicates_in_kafka": sum(c - 1 for c in got.pairs.values()),
                "lost": len(missing),
                "flood_s": round(fl.seconds, 2),
                "puback_per_s": round(len(fl.acked) / fl.seconds),
                "kafka_per_s": round(len(got.pairs) / span) if span == span and span > 0 else None,
                "cpu_s": sampler.cpu,
                "peak_rss_mb": {r: round(v / 2**20) for r, v in sampler.peak.items()},
            }
            if kill:
                out |= {"killed": what, "killed_at_s": round(fl.killed_at or 0, 2), "devices_cut_off": fl.dead_devices}
                out["pubacked_by_killed_broker"] = len({(d, q) for d, q in fl.acked if d in victims})
                out["recovery"] = recovered
                out["lost_examples"] = sorted(missing)[:5]
            return out
        finally:
            for p in procs:
                p.stop()
            for p in procs:
                if p.instance:  # the MQTT bridges: their sessions and logins go with the run
                    broker = tier.bridge_brokers.get(p.instance, self.settings)
                    clear_session(broker, p.instance)
                    logins.revoke_bridges(broker, [p.instance])
            asyncio.run(stack.delete_topics(self.settings, stack.prefixed(topics.prefix)))

    async def read_back(self, topics: Topics, acked: set[tuple[str, int]]) -> StampedReadings:
        """Read the readings topic until every acknowledged pair is there or nothing new came for ``settle`` s."""
        got = StampedReadings()
        last = [time.monotonic(), 0]

        def done() -> bool:
            now = time.monotonic()
            if len(got.pairs) != last[1]:
                last[:] = [now, len(got.pairs)]
            return acked <= got.pairs.keys() or now - last[0] > self.settle

        await consume(self.settings, topics.readings, got, done, timeout=600)
        return got


# -- the tiers ------------------------------------------------------------------------------------------------


def bridge_proc(env: IngestEnv, instance: str, **extra: str) -> Proc:
    """A `larder bridge` logging in to ``env.settings``' broker as its own user (registered there by
    ``env.bridge``). One bridge per broker, plain subscription (the default; ``--shared`` is for several bridges
    on one broker): Mosquitto 2.0.11 keeps a plain subscription's messages across a broker restart, not a
    shared one's (docs/ingest.md); the split tier scales by brokers, not by sharing."""
    return env.bridge(instance=instance, **extra)


def register_devices(settings: Settings, secrets: dict[str, str]) -> None:
    """Give these devices a login on ``settings``' broker (added to its registrations, nobody else's removed;
    a running broker reloads on SIGHUP, and the flood retries logins meanwhile)."""
    logins.register_devices(settings, secrets, source=SOURCE)


def mosquitto_pid(settings: Settings) -> int:
    pid = read_pid(mosquitto.paths(settings)["pid"])
    if pid is None:
        raise RuntimeError(f"no Mosquitto pid for port {settings.mqtt.port}")
    return pid


def restart_mosquitto(settings: Settings) -> str:
    t0 = time.monotonic()
    logins.ensure_rendered(settings)  # unchanged since the kill; start() wants them on disk
    mosquitto.start(settings)
    if not wait_until(lambda: port_open(settings.mqtt.host, settings.mqtt.port), timeout=30):
        raise RuntimeError(f"Mosquitto on {settings.mqtt.port} did not come back")
    return f"Mosquitto :{settings.mqtt.port} restarted from its persistence file in {time.monotonic() - t0:.1f} s"


def kill_pid(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # ours only if we started it (the split tier's second broker)


def single_tier(h: Harness) -> Tier:
    s = h.settings
    register_devices(s, h.secrets())

    def kill() -> str:
        pid = mosquitto_pid(s)
        kill_pid(pid)
        return f"the only Mosquitto (pid {pid}, :{s.mqtt.port})"

    return Tier(
        name="single",
        device_ports=lambda ds: dict.fromkeys(ds, s.mqtt.port),
        start_bridges=lambda env: [bridge_proc(env, f"tier1-{uuid.uuid4().hex[:6]}")],
        broker_pids=lambda: [mosquitto_pid(s)],
        kill=kill,
        victims=lambda ports: set(ports),
        recover=lambda: restart_mosquitto(s),
        processes="1 mosquitto + 1 `larder bridge`",
    )


def split_tier(h: Harness) -> tuple[Tier, Callable[[], None]]:
    sa = h.settings
    sb = sa.model_copy(
        update={
            "state_dir": sa.state_dir / "mqtt-tier-b",
            "mqtt": sa.mqtt.model_copy(update={"port": free_port()}),
        }
    )
    ids = list(h.devices)
    half_a, half_b = ids[: len(ids) // 2], ids[len(ids) // 2 :]
    register_devices(sa, h.secrets(half_a))
    for d in (sb.data_dir, sb.log_dir, sb.conf_dir):
        d.mkdir(parents=True, exist_ok=True)
    # Broker B has its own state folder, so its own registrations: its devices and its bridge log in there.
    register_devices(sb, h.secrets(half_b))
    mosquitto.start(sb)
    if not wait_until(lambda: port_open(sb.mqtt.host, sb.mqtt.port), timeout=30):
        raise RuntimeError("the second Mosquitto did not start")

    def ports(ds: list[str]) -> dict[str, int]:
        return {d: sa.mqtt.port if d in half_a else sb.mqtt.port for d in ds}

    def bridges(env: IngestEnv) -> list[Proc]:
        tag = uuid.uuid4().hex[:6]
        a = bridge_proc(env, f"tier2a-{tag}")
        tier.bridge_brokers[f"tier2b-{tag}"] = sb
        # env.bridge registers the instance with env.settings' broker: for B, an env on B's settings (same
        # site file, topics and group); the process itself reaches B through LARDER_MQTT__PORT.
        env_b = dataclasses.replace(env, settings=sb, procs=[])
        b = bridge_proc(env_b, f"tier2b-{tag}", LARDER_MQTT__PORT=str(sb.mqtt.port))
        return [a, b]

    def kill() -> str:
        pid = mosquitto_pid(sb)
        kill_pid(pid)
        return f"Mosquitto B (pid {pid}, :{sb.mqtt.port}, {len(half_b)} of {len(ids)} devices)"

    def cleanup() -> None:
        pid = read_pid(mosquitto.paths(sb)["pid"])
        if pid:
            stop_pid(pid)
        shutil.rmtree(mosquitto.paths(sb)["data"].parent, ignore_errors=True)
        shutil.rmtree(sb.state_dir, ignore_errors=True)

    tier = Tier(
        name="split",
        device_ports=ports,
        start_bridges=bridges,
        broker_pids=lambda: [mosquitto_pid(sa), mosquitto_pid(sb)],
        kill=kill,
        victims=lambda ports: {d for d, p in ports.items() if p == sb.mqtt.port},
        recover=lambda: restart_mosquitto(sb),
        processes="2 mosquitto + 2 `larder bridge` (one per broker); devices assigned to a broker",
        extra={"devices_per_broker": [len(half_a), len(half_b)]},
    )
    return tier, cleanup


def rabbitmq_tier(h: Harness, keep: bool) -> tuple[Tier, Callable[[], None]]:
    s = h.settings
    c = rabbitmq.RabbitCluster.from_settings(s)
    t0 = time.monotonic()
    if rabbitmq.install(s):
        say("rabbitmq: installed rabbitmq-server from apt")
    rabbitmq.up(c, report=say)
    formed_s = time.monotonic() - t0
    assert s.mqtt.bridge_password is not None
    rabbitmq.configure(c, h.secrets(), s.mqtt.bridge_user, s.mqtt.bridge_password.get_secret_value())
    rabbitmq.ctl(c, 1, "purge_queue", "-p", rabbitmq.VHOST, rabbitmq.QUEUE)
    ids = list(h.devices)
    state: dict[str, int] = {}

    def leader() -> int:
        name = rabbitmq.queue_leader(c)
        return next(n for n in range(1, c.nodes + 1) if c.node_name(n) == name)

    def bridges(env: IngestEnv) -> list[Proc]:
        lead = leader()
        state["leader"] = lead
        others = [n for n in range(1, c.nodes + 1) if n != lead]
        procs = []
        for k, n in enumerate(others):
            order = [n, *[m for m in others if m != n], lead]  # failover list, the leader last
            servers = [x for m in order for x in ("--server", f"{c.host}:{c.amqp_port(m)}")]
            p = Proc(
                [sys.executable, "-m", "pipeline.ingest.amqp_bridge", *servers, "--instance", f"amqp{k}"],
                env.env(),
                env.workdir / f"amqp-bridge-{k}",
                ready="connected to amqp",
            )
            procs.append(p.start())
        return procs

    def kill() -> str:
        lead = state["leader"]
        pid = rabbitmq.kill9(c, lead)
        state["killed"] = lead
        return f"RabbitMQ node {lead} (pid {pid}), the quorum queue's leader, with 1/{c.nodes} of the devices"

    def recover() -> str:
        n = state.pop("killed")
        t = time.monotonic()
        rabbitmq.start_node(c, n)
        rabbitmq.wait_node(c, n)
        want = {c.node_name(m) for m in range(1, c.nodes + 1)}
        ok = wait_until(lambda: set(rabbitmq.running_nodes(c, 1 if n != 1 else 2)) >= want, timeout=120, interval=1)
        where = "back in" if ok else "NOT back in"
        return f"node {n} restarted and {where} the cluster in {time.monotonic() - t:.0f} s"

    def cleanup() -> None:
        if not keep:
            rabbitmq.down(c, report=say)

    tier = Tier(
        name="rabbitmq",
        device_ports=lambda ds: {d: c.mqtt_port(1 + ids.index(d) % c.nodes) for d in ds},
        start_bridges=bridges,
        broker_pids=lambda: [p for n in range(1, c.nodes + 1) if (p := rabbitmq.beam_pid(c, n))],
        kill=kill,
        victims=lambda ports: {d for d, p in ports.items() if p == c.mqtt_port(state["leader"])},
        recover=recover,
        processes="3 RabbitMQ nodes (Erlang VMs) + epmd + 2 AMQP bridges; a cluster to form, a cookie to share",
        extra={"cluster_up_s": round(formed_s, 1)},
    )
    return tier, cleanup


# -- main -----------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30_000, help="readings per flood (each tier floods three times)")
    ap.add_argument("--devices", type=int, default=60, help="devices, one MQTT connection each")
    ap.add_argument("--window", type=int, default=20, help="unacknowledged QoS 1 publishes per device")
    ap.add_argument("--settle", type=float, default=15.0, help="read Kafka until nothing new for this long")
    ap.add_argument("--tiers", default="single,split,rabbitmq", help="comma-separated: single, split, rabbitmq")
    ap.add_argument("--keep-rabbitmq", action="store_true", help="leave the RabbitMQ cluster running")
    args = ap.parse_args()
    quiet.unwind_on_sigterm()
    # Writes to the connections of a killed broker are dropped on purpose (those devices stop); asyncio would
    # log each one.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    settings = load_settings()
    quiet.require_stack(settings)
    noise = quiet.check(settings)
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    unknown = set(tiers) - {"single", "split", "rabbitmq"}
    if unknown:
        ap.error(f"unknown tier(s): {', '.join(sorted(unknown))}")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="larder-mqtt-tier-") as tmp:
        h = Harness(settings, Path(tmp), args.n, args.devices, args.window, args.settle)
        try:
            for name in tiers:
                cleanup: Callable[[], None] = lambda: None  # noqa: E731
                if name == "single":
                    tier = single_tier(h)
                elif name == "split":
                    tier, cleanup = split_tier(h)
                else:
                    tier, cleanup = rabbitmq_tier(h, args.keep_rabbitmq)
                try:
                    runs = []
                    for kill, away in ((False, False), (True, False), (True, True)):
                        what = ("kill -9 mid-flood" + (", bridges away" if away else "")) if kill else "live flood"
                        say(f"{name}: {what} of {h.per_device * h.n_devices:,}")
                        r = h.run(tier, kill=kill, away=away)
                        say(f"{name}: {json.dumps({k: v for k, v in r.items() if k != 'lost_examples'})}")
                        runs.append(r)
                    results[name] = {"processes": tier.processes, **tier.extra, "runs": runs}
                finally:
                    cleanup()
        finally:
            # The benchmark's devices leave the stack's broker; every other registration was never touched.
            logins.revoke_devices(settings, list(h.devices))

    report(args, settings, results, noise)


def report(args: argparse.Namespace, settings: Settings, results: dict[str, Any], noise: list[str]) -> None:
    n = (args.n // args.devices) * args.devices
    out = {
        "command": "python -m benchmarks.mqtt_tier " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "load_average": os.getloadavg(),
        "readings_per_flood": n,
        "devices": args.devices,
        "window": args.window,
        "mosquitto_autosave_interval_s": 30,
        "not_quiet": noise,
        "tiers": results,
    }
    path = resultfile.save("mqtt-tier", out)
    base = results.get("single", {}).get("runs", [{}])[0].get("kafka_per_s")
    print(f"`python -m benchmarks.mqtt_tier {' '.join(sys.argv[1:])}` — {machine()}; {n:,} readings per flood from")
    print(f"{args.devices} devices (window {args.window}){'; NOT A QUIET RUN' if noise else ''}.\n")
    print(
        "| tier | into Kafka /s, live | vs single | PUBACKs /s | CPU µs a reading: broker / bridge / load generator "
        "| peak RSS MB: broker / bridge | kill -9, bridges live: PUBACKed by the killed broker / lost | kill -9, "
        "bridges away: PUBACKed / lost | backlog drain into Kafka /s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        live, k, away = r["runs"]
        ratio = f"{live['kafka_per_s'] / base:.2f}x" if base and live["kafka_per_s"] else "-"
        us = " / ".join(f"{live['cpu_s'][role] * 1e6 / max(live['in_kafka'], 1):.0f}" for role in live["cpu_s"])
        print(
            f"| {name} | {live['kafka_per_s'] or 0:,} | {ratio} | {live['puback_per_s']:,} | {us} | "
            f"{live['peak_rss_mb']['broker']} / {live['peak_rss_mb']['bridge']} | "
            f"{k['pubacked_by_killed_broker']:,} / **{k['lost']:,}** | "
            f"{away['pubacked_by_killed_broker']:,} / **{away['lost']:,}** | {away['kafka_per_s'] or 0:,} |"
        )
    print(f"\nresults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
