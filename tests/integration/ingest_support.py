"""Helpers for the ingestion tests: a site file of fresh devices, `larder bridge`/`larder hooks` as real
processes, a QoS 1 flood publisher, and Kafka readers. Shared by the tests and benchmarks/ingest.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import serde
from pipeline.ingest.bridge import forget_session
from pipeline.services import free_port as free_port  # re-exported: the tests take it from here
from pipeline.settings import Settings
from pipeline.stack import logins
from pipeline.topics import Topics

LARDER = str(Path(sys.executable).with_name("larder"))


def write_site_file(path: Path, devices: dict[str, tuple[str, str]], cameras: dict[str, tuple[str, str]]) -> None:
    """devices: id -> (asset, secret) with assets a1 (chilled, site S1) / b1 (frozen, site S2);
    cameras: id -> (kitchen, secret) in site S1 with kitchens k1, k2."""
    s1 = {d: v for d, v in devices.items() if v[0] == "a1"}
    s2 = {d: v for d, v in devices.items() if v[0] == "b1"}
    lines = ["# ingestion test site", "version: 1", "sites:", "  S1:", "    assets:", "      a1: { profile: chilled }"]
    lines += ["    devices:" if s1 else "    devices: {}"]
    lines += [f'      {d}: {{ asset: a1, secret: "{sec}" }}' for d, (_, sec) in s1.items()]
    lines += ["    kitchens:", "      k1: {}", "      k2: {}", "    cameras:" if cameras else "    cameras: {}"]
    lines += [f'      {c}: {{ kitchen: {k}, secret: "{sec}" }}' for c, (k, sec) in cameras.items()]
    lines += ["  S2:", "    assets:", "      b1: { profile: frozen }", "    devices:" if s2 else "    devices: {}"]
    lines += [f'      {d}: {{ asset: b1, secret: "{sec}" }}' for d, (_, sec) in s2.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def register_in_broker(settings: Settings, secrets: dict[str, str]) -> None:
    """Add credentials to the broker's logins (adds only: other tests' devices keep theirs)."""
    from tests import conftest

    logins.register_devices(settings, secrets, source="tests")
    if secrets:
        dev, pw = next(reversed(secrets.items()))
        conftest._wait_login(settings, conftest.MqttCredentials(dev, pw))


@dataclass
class IngestEnv:
    settings: Settings
    topics: Topics
    site_file: Path
    workdir: Path
    devices: dict[str, tuple[str, str]]
    cameras: dict[str, tuple[str, str]]
    group: str = field(default_factory=lambda: f"g{uuid.uuid4().hex[:8]}")
    procs: list[Proc] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "LARDER_SITE_CONFIG": str(self.site_file),
            "LARDER_TOPIC_PREFIX": self.topics.prefix,
            "LARDER_INGEST__BRIDGE_GROUP": self.group,
            "LARDER_INGEST__BRIDGE_METRICS_PORT": "0",
            **extra,
        }

    def bridge(self, instance: str | None = None, **extra_env: str) -> Proc:
        instance = instance or uuid.uuid4().hex[:8]
        logins.register_bridges(self.settings, [instance])  # each instance logs in as its own user
        p = Proc(
            [LARDER, "bridge", "--instance", instance],
            self.env(**extra_env),
            self.workdir / f"bridge-{instance}",
            ready="connected to mqtt",
            instance=instance,
        )
        self.procs.append(p)
        return p.start()

    def hooks(self, port: int) -> Proc:
        p = Proc(
            [LARDER, "hooks", "--port", str(port)],
            self.env(),
            self.workdir / f"hooks-{port}",
            ready="Running on",
        )
        self.procs.append(p)
        return p.start()

    def close(self) -> None:
        for p in self.procs:
            p.stop()
        for p in self.procs:
            if p.instance:
                clear_session(self.settings, p.instance)
        if instances := [p.instance for p in self.procs if p.instance]:
            logins.revoke_bridges(self.settings, instances)


class Proc:
    """A real `larder ...` process; restartable, killable with SIGKILL."""

    def __init__(self, argv: list[str], env: dict[str, str], log_base: Path, *, ready: str, instance: str = "") -> None:
        self.argv, self.env, self.log_base, self.ready, self.instance = argv, env, log_base, ready, instance
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.log_base.with_name(f"{self.log_base.name}-{self.starts}.log")

    def start(self, timeout: float = 30.0) -> Proc:
        self.starts += 1
        out = self.log.open("wb")
        self.popen = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready in self.log.read_text(errors="replace"):
                return self
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.argv} exited {self.popen.returncode}:\n{self.log.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"{self.argv} not ready in {timeout} s:\n{self.log.read_text()}")

    def kill9(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def clear_session(settings: Settings, instance: str) -> None:
    """Drop a bridge instance's persistent session so its subscription does not outlive the test."""
    with contextlib.suppress(RuntimeError):
        forget_session(settings, instance)


def reading(seq: int, ts: float | None = None, **extra: Any) -> bytes:
    return serde.dumps({"ts": ts if ts is not None else round(time.time(), 3), "seq": seq, "temp_c": 3.5, **extra})


class Flood:
    """QoS 1 publishers, one paho client (thread) per device, persistent sessions so they survive a broker
    restart. ``sent`` counts PUBACKs from the broker."""

    def __init__(
        self, settings: Settings, devices: Iterable[tuple[str, str]], per_device: int, start_seq: int = 0
    ) -> None:
        self.settings = settings
        self.devices = list(devices)
        self.per_device = per_device
        self.start_seq = start_seq
        self.sent = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []

    @property
    def total(self) -> int:
        return len(self.devices) * self.per_device

    def start(self) -> Flood:
        for dev, secret in self.devices:
            t = threading.Thread(target=self._run, args=(dev, secret), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self, dev: str, secret: str) -> None:
        done = threading.Event()
        acked = 0

        def on_publish(client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
            nonlocal acked
            acked += 1
            with self._lock:
                self.sent += 1
            if acked == self.per_device:
                done.set()

        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{dev}-{uuid.uuid4().hex[:4]}", clean_session=False
        )
        c.username_pw_set(dev, secret)
        c.max_inflight_messages_set(500)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, 1)  # paho takes whole seconds
        c.on_publish = on_publish
        c.connect(self.settings.mqtt.host, self.settings.mqtt.port, keepalive=30)
        c.loop_start()
        topic = f"larder/v1/devices/{dev}/readings"
        ts = round(time.time(), 3)
        for seq in range(self.start_seq, self.start_seq + self.per_device):
            c.publish(topic, reading(seq, ts), qos=1)
        if not done.wait(180):
            self.errors.append(f"{dev}: only {acked} of {self.per_device} acknowledged by the broker")
        c.disconnect()
        c.loop_stop()

    def wait(self, timeout: float = 180) -> None:
        for t in self._threads:
            t.join(timeout)
        assert not self.errors, self.errors


@contextlib.asynccontextmanager
async def _from_the_beginning(
    settings: Settings, topic: str, timeout: float
) -> AsyncIterator[tuple[AIOKafkaConsumer, list[TopicPartition]]]:
    """A consumer assigned every partition of ``topic`` (waiting up to ``timeout`` for it), at the start."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        parts = consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        assert parts, f"topic {topic} does not exist"
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        yield consumer, tps
    finally:
        await consumer.stop()


async def consume(
    settings: Settings, topic: str, on_record: Callable[[Any], None], done: Callable[[], bool], timeout: float = 60.0
) -> None:
    """Feed every record of ``topic``, from the beginning, to ``on_record`` until ``done()`` or the timeout."""
    deadline = time.monotonic() + timeout
    async with _from_the_beginning(settings, topic, timeout) as (consumer, _):
        while time.monotonic() < deadline and not done():
            for batch in (await consumer.getmany(timeout_ms=200, max_records=10_000)).values():
                for r in batch:
                    on_record(r)


class Readings:
    """Collects (partition, item) from the readings topic; ``pairs`` counts each (device, seq)."""

    def __init__(self) -> None:
        self.items: list[tuple[int, dict[str, Any]]] = []
        self.pairs: dict[tuple[str, int], int] = {}
        self.records = 0

    def __call__(self, record: Any) -> None:
        batch = serde.loads(record.value)
        assert batch["v"] == 1 and batch["kind"] == "readings", batch
        self.records += 1
        for item in batch["items"]:
            self.items.append((record.partition, item))
            key = (item["device"], item["seq"])
            self.pairs[key] = self.pairs.get(key, 0) + 1

    async def until(self, settings: Settings, topics: Topics, n_pairs: int, timeout: float = 60.0) -> Readings:
        await consume(settings, topics.readings, self, lambda: len(self.pairs) >= n_pairs, timeout)
        return self


async def dead_letters(settings: Settings, topics: Topics, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    await consume(
        settings, topics.deadletter, lambda r: got.append(serde.loads(r.value)), lambda: len(got) >= n, timeout
    )
    return got


async def everything_in(settings: Settings, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic`` up to its end offsets now: for asserting that nothing is there, which a read
    that simply times out cannot tell from a slow fetch."""
    deadline = time.monotonic() + timeout
    async with _from_the_beginning(settings, topic, timeout) as (consumer, tps):
        ends = await consumer.end_offsets(tps)
        got: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"{topic}: not read to its end offsets in {timeout} s"
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                got += batch
        return got


def make_env(settings: Settings, topics: Topics, workdir: Path, n_devices: int = 4, n_cameras: int = 1) -> IngestEnv:
    tag = uuid.uuid4().hex[:6]
    devices = {
        f"d-{tag}-{i}": ("a1" if i % 2 == 0 else "b1", f"secret-{uuid.uuid4().hex[:12]}") for i in range(n_devices)
    }
    cameras = {
        f"cam-{tag}-{i}": ("k1" if i % 2 == 0 else "k2", f"cam-{uuid.uuid4().hex[:12]}") for i in range(n_cameras)
    }
    site_file = workdir / "sites.yaml"
    write_site_file(site_file, devices, cameras)
    register_in_broker(settings, {d: sec for d, (_, sec) in devices.items()})
    return IngestEnv(settings, topics, site_file, workdir, devices, cameras)
