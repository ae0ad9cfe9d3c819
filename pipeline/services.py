"""Start the pipeline's own processes (bridge, hooks, worker, notifier, sink) as subprocesses, wait until each
is ready, stop them cleanly. Used by `larder demo`, `larder simulate/replay --start-services`, the benchmarks
and the end-to-end tests, so every one of them runs the real `larder` commands, not an in-process imitation.

Each process gets its settings through ``LARDER_*`` environment variables (site file, topic prefix, free
ports), its log under ``<state dir>/logs/services/``, and its own process group so stopping it leaves nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.settings import Settings
from pipeline.stack.process import StackError, port_open, tail

log = logging.getLogger(__name__)

#: The processes a full pipeline has, in start order. Optional ones start only if their command exists.
ALL = ("bridge", "hooks", "worker", "notifier", "sink")
#: Every long-running service `larder` has (the ack API serves people, not the data path).
SERVICES = (*ALL, "api")
CORE = ("bridge", "hooks", "worker")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default


def free_port_block(size: int, tries: int = 200) -> int:
    """The first of ``size`` consecutive free ports (an isolated stack: Kafka nodes sit on port, port + 1, ...).

    Chosen below the kernel's ephemeral range: a block inside it can be free when checked and then taken by any
    process's outgoing connection before the service binds it (a test cluster's third Kafka node failed to bind
    its controller port that way while other test runs' clients were busy)."""
    low, _high = _ephemeral_range()
    top = min(low, 65_536) - size
    for _ in range(tries):
        base = random.randrange(10_000, top) if top > 10_000 else free_port()
        if base + size > 65_535:
            continue
        try:
            with contextlib.ExitStack() as held:
                for p in range(base, base + size):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no block of {size} free ports on 127.0.0.1")


def larder_argv() -> list[str]:
    """How to run the `larder` command from this interpreter (works from a fresh venv without PATH)."""
    exe = Path(sys.executable).with_name("larder")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("larder")
    return [found] if found else [sys.executable, "-m", "pipeline.cli"]


@dataclass
class Process:
    name: str
    argv: list[str]
    log: Path
    ready: Callable[[Process], bool]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    #: Which copy of ``name`` this is (1, 2, ...): a second bridge or worker of the same run.
    replica: int = 1
    #: Where this start's output begins in ``log`` (a restarted process appends to its log; readiness and
    #: :meth:`log_text` look only at what this start wrote).
    log_offset: int = 0

    @property
    def label(self) -> str:
        return self.name if self.replica == 1 else f"{self.name}-{self.replica}"

    def log_text(self) -> str:
        try:
            with self.log.open("rb") as fh:
                fh.seek(self.log_offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Services:
    """A running set of pipeline processes against one stack, one site file and one topic prefix."""

    settings: Settings
    site_config: Path
    topic_prefix: str
    clock: str = "replay"
    names: Sequence[str] = CORE
    hooks_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    #: The bridge instance is fresh for each run (a session left over from another run may hold that run's
    #: unacknowledged messages): its own MQTT login is registered at start; :meth:`stop` deletes the session
    #: and revokes the login again.
    bridge_instance: str = field(default_factory=lambda: f"sim-{uuid.uuid4().hex[:8]}")
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Demo, tests and replay keep worker state in memory (changelogs still in Kafka); benchmarks use RocksDB.
    worker_store: str = "memory"
    #: How many copies of a service to start, e.g. ``{"bridge": 2, "worker": 2}`` (default one each). Several
    #: bridges each log in as an instance of their own and share the readings through the shared subscription
    #: (``--shared``); several workers form one consumer group, each with its own data folder (so its own static
    #: group membership). The ack API and the notifier must stay single (docs/alerts.md: one notifier a prefix).
    replicas: dict[str, int] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    report: Callable[[str], None] = lambda _m: None

    @property
    def hooks_url(self) -> str:
        return f"http://127.0.0.1:{self.hooks_port}"

    @property
    def log_dir(self) -> Path:
        return self.settings.log_dir / "services"

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "LARDER_STATE_DIR": str(s.state_dir),
            "LARDER_SITE_CONFIG": str(self.site_config),
            "LARDER_TOPIC_PREFIX": self.topic_prefix,
            "LARDER_READINGS_PARTITIONS": str(s.readings_partitions),
            "LARDER_KAFKA__PORT": str(s.kafka.port),
            "LARDER_KAFKA__CONTROLLER_PORT": str(s.kafka.controller_port),
            "LARDER_INFLUX__PORT": str(s.influx.port),
            "LARDER_INFLUX__RPC_PORT": str(s.influx.rpc_port),
            "LARDER_MQTT__PORT": str(s.mqtt.port),
            "LARDER_INGEST__HOOKS_PORT": str(self.hooks_port),
            "LARDER_NOTIFY__API_PORT": str(self.api_port),
            "LARDER_INGEST__BRIDGE_METRICS_PORT": "0",
            "LARDER_INGEST__BRIDGE_INSTANCE": self.bridge_instance,
            **({"LARDER_INGEST__BRIDGE_SHARED": "true"} if self.replicas.get("bridge", 1) > 1 else {}),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def bridge_instance_of(self, replica: int) -> str:
        """The MQTT instance name of bridge copy ``replica`` (the first keeps :attr:`bridge_instance`)."""
        return self.bridge_instance if replica == 1 else f"{self.bridge_instance}-{replica}"

    def _bridge_instances(self) -> list[str]:
        return [self.bridge_instance_of(r) for r in range(1, self.replicas.get("bridge", 1) + 1)]

    def _spec(self, name: str, replica: int = 1) -> Process:
        base = larder_argv()
        label = name if replica == 1 else f"{name}-{replica}"
        log = self.log_dir / f"{self.topic_prefix}-{label}.log"
        if name == "bridge":
            argv = [*base, "bridge", "-v"]
            if replica > 1:
                argv += ["--instance", self.bridge_instance_of(replica)]
            return Process(name, argv, log, _log_says("connected to mqtt"), replica=replica)
        if name == "hooks":
            return Process(name, [*base, "hooks"], log, lambda _p: port_open("127.0.0.1", self.hooks_port))
        if name == "api":
            return Process(name, [*base, "api"], log, lambda _p: port_open("127.0.0.1", self.api_port))
        if name == "worker":
            argv = [*base, "worker", "--clock", self.clock, "--store", self.worker_store, "-l", "warn"]
            if replica > 1:
                # Static group membership is keyed by host + data folder: two workers sharing one would fence
                # each other out of the group.
                data = self.settings.data_dir / "worker" / f"{self.topic_prefix}-worker-{replica}"
                argv += ["--data-dir", str(data)]
            return Process(name, argv, log, _log_says("assigned"), replica=replica)
        # notifier / sink: ready once they have run for a moment without exiting.
        return Process(name, [*base, name], log, lambda p: time.monotonic() - p.started_at > 3.0)

    def _launch(self, p: Process, env: dict[str, str]) -> None:
        """Start ``p`` in a process group of its own, its output appended to its log."""
        p.log.parent.mkdir(parents=True, exist_ok=True)
        with open(p.log, "ab") as log:
            p.log_offset = log.tell()
            p.proc = subprocess.Popen(
                p.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        p.started_at = time.monotonic()
        self.report(f"{p.label}: started (pid {p.proc.pid}), log {p.log}")

    def _wait_ready(self, procs: Sequence[Process], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in procs:
            while not p.ready(p):
                if not p.alive:
                    self.stop()
                    raise StackError(f"larder {p.label} exited during start-up; log {p.log}:\n{tail(p.log)}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise StackError(f"larder {p.label} not ready within {timeout:.0f} s; log {p.log}:\n{tail(p.log)}")
                time.sleep(0.2)
            self.report(f"{p.label}: ready after {time.monotonic() - p.started_at:.1f} s")

    def start(self, timeout: float = 90.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = self.env()
        if "bridge" in self.names and not self.settings.mqtt.external:
            from pipeline.stack import logins

            logins.register_bridges(self.settings, self._bridge_instances())  # each its own broker login
        for name in self.names:
            for replica in range(1, self.replicas.get(name, 1) + 1):
                p = self._spec(name, replica)
                p.log.write_bytes(b"")
                self._launch(p, env)
                self.processes.append(p)
        self._wait_ready(self.processes, timeout)

    def process(self, label: str) -> Process:
        """The running process called ``label`` (``worker``, ``worker-2``, ``bridge-2``, ...)."""
        for p in self.processes:
            if p.label == label:
                return p
        raise KeyError(f"no process {label!r} in this run (have {', '.join(p.label for p in self.processes)})")

    def kill(self, label: str, sig: int = signal.SIGKILL) -> Process:
        """Send ``sig`` (default SIGKILL, a crash) to a process's group and wait until it is gone. The process
        leaves :attr:`processes`; :meth:`restart` brings the same one (same instance, same data folder) back."""
        p = self.process(label)
        assert p.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.proc.pid, sig)
        p.proc.wait(30)
        self.processes.remove(p)
        self.report(f"{p.label}: {signal.Signals(sig).name} (pid {p.proc.pid})")
        return p

    def restart(self, p: Process, timeout: float = 90.0) -> Process:
        """Start a process that :meth:`kill` took down again, as the same replica; returns once it is ready."""
        self._launch(p, self.env())
        self.processes.append(p)
        self._wait_ready([p], timeout)
        return p

    def add(self, name: str, timeout: float = 90.0) -> Process:
        """Start one more copy of ``name`` (a third worker joining the group); returns once it is ready."""
        replica = self.replicas.get(name, 1) + 1
        self.replicas[name] = replica
        if name == "bridge" and not self.settings.mqtt.external:
            from pipeline.stack import logins

            logins.register_bridges(self.settings, [self.bridge_instance_of(replica)])
        p = self._spec(name, replica)
        p.log.write_bytes(b"")
        self._launch(p, self.env())
        self.processes.append(p)
        self._wait_ready([p], timeout)
        return p

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM each process group (reverse order: the worker drains before the bridge goes), then SIGKILL."""
        for p in reversed(self.processes):
            if p.proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.proc.pid, signal.SIGTERM)
            try:
                p.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait(5)
        if "bridge" in self.names:
            self._forget_bridge_sessions()
        self.processes = []

    def _forget_bridge_sessions(self) -> None:
        """Drop the bridges' persistent sessions: finished runs leave no queue behind that would collect every
        later reading."""
        from pipeline.ingest.bridge import forget_session

        if self.settings.mqtt.bridge_password is None:
            return
        instances = self._bridge_instances()
        for instance in instances:
            try:
                forget_session(self.settings, instance)
            except RuntimeError as exc:
                log.warning("%s", exc)
        if not self.settings.mqtt.external:
            from pipeline.stack import logins

            logins.revoke_bridges(self.settings, instances)

    def check_alive(self) -> None:
        for p in self.processes:
            if not p.alive:
                raise StackError(f"larder {p.label} died; log {p.log}:\n{tail(p.log)}")

    def __enter__(self) -> Services:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _log_says(text: str) -> Callable[[Process], bool]:
    return lambda p: text in p.log_text()


@contextlib.contextmanager
def running(settings: Settings, site_config: Path, topic_prefix: str, **kw: object) -> Iterator[Services]:
    svc = Services(settings, site_config, topic_prefix, **kw)  # type: ignore[arg-type]
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()
