"""A small kit for testing against Larder, in the spirit of bytewax's ``testing`` module: the tests and the
benchmarks build their inputs and read their outputs with it instead of each keeping a copy.

* site files: :func:`site_doc` (one site, chilled cold rooms, kitchens with a camera each) and
  :func:`write_site_file` (the one writer of generated site files, also used by the simulators);
* inputs: :func:`reading_item` / :func:`kitchen_event_item` / :func:`rapid_test_item` (the enriched items of
  the internal batches), :func:`rapid_test_body` (a contract-6 result as an instrument sends it),
  :func:`open_alert` (an alert record as detectors emit it),
  :func:`batch_records` (items grouped by partition into record batches, the way the bridge produces them),
  :func:`device_payload` (a contract-1 MQTT payload);
* Kafka: :func:`from_the_beginning` (a consumer on every partition of a topic, at offset 0),
  :func:`consume` (every record to a callback until a condition holds), :func:`read_all` (everything up to the
  end offsets now: the way to assert that nothing is there), :class:`Readings` (the (device, seq) pairs of the
  readings topic, counted);
* :func:`eventually`: wait for a condition, failing with what was awaited;
* real `larder bridge` / `larder hooks` processes on a site file of fresh devices: :func:`make_env`,
  :class:`IngestEnv`, :class:`Proc`; :func:`kill9` / :func:`terminate` for any process a test started.

It talks to the real services of the local stack (``larder stack up``); nothing here fakes a service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import serde
from pipeline.contracts import records
from pipeline.contracts.models import (
    Alert,
    KitchenEvent,
    KitchenEventType,
    Reading,
    Severity,
)
from pipeline.detectors.engine import AlertFactory
from pipeline.partitioner import partition_for
from pipeline.services import free_port, free_port_block
from pipeline.settings import Settings
from pipeline.siteconfig import write_site_file
from pipeline.topics import Topics

__all__ = [
    "LARDER",
    "IngestEnv",
    "Proc",
    "Readings",
    "batch_records",
    "clear_session",
    "consume",
    "curl_form",
    "device_payload",
    "eventually",
    "free_port",
    "from_the_beginning",
    "ingest_site_doc",
    "kitchen_event_item",
    "make_env",
    "rapid_test_body",
    "rapid_test_item",
    "read_all",
    "reading_item",
    "register_in_broker",
    "site_doc",
    "wait_login",
    "write_site_file",
]

#: The `larder` command of this interpreter's environment.
LARDER = str(Path(sys.executable).with_name("larder"))

# ---------------------------------------------------------------------------------------------------------------
# Site files
# ---------------------------------------------------------------------------------------------------------------


def site_doc(
    devices: Iterable[str],
    kitchens: Iterable[str] = (),
    *,
    site: str = "S01",
    interval_s: float = 300,
    timezone: str | None = None,
    secret: Callable[[str], str] = lambda ident: f"s3cret-{ident}",
) -> dict[str, Any]:
    """One site: the devices on one chilled cold room ``cr-1``, each kitchen with one camera ``cam-<kitchen>``
    (zone ``cook``). Secrets are ``secret(id)``; extend the returned document for anything else."""
    body: dict[str, Any] = {}
    if timezone is not None:
        body["timezone"] = timezone
    body["assets"] = {"cr-1": {"kind": "cold_room", "profile": "chilled"}}
    body["devices"] = {d: {"asset": "cr-1", "interval_s": interval_s, "secret": secret(d)} for d in devices}
    kitchens = list(kitchens)
    if kitchens:
        body["kitchens"] = {k: {"name": f"kitchen {k}"} for k in kitchens}
        body["cameras"] = {f"cam-{k}": {"kitchen": k, "zone": "cook", "secret": secret(f"cam-{k}")} for k in kitchens}
    return {"version": 1, "sites": {site: body}}


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------


def reading_item(
    device: str,
    seq: int,
    ts_ms: int,
    temp_c: float,
    *,
    site: str = "S01",
    asset: str = "cr-1",
    profile: str = "chilled",
    received_ms: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An enriched reading as the bridge puts it in a batch (validated by :class:`Reading`)."""
    return Reading(
        device=device,
        site=site,
        asset=asset,
        profile=profile,
        seq=seq,
        ts_ms=ts_ms,
        temp_c=temp_c,
        received_ms=ts_ms if received_ms is None else received_ms,
        **extra,
    ).model_dump(mode="json", exclude_none=True)


def kitchen_event_item(
    kitchen: str, event_id: str, ts_ms: int, type_: str, *, site: str = "S01", **extra: Any
) -> dict[str, Any]:
    """An enriched camera event from camera ``cam-<kitchen>`` (validated by :class:`KitchenEvent`)."""
    return KitchenEvent(
        camera=f"cam-{kitchen}",
        site=site,
        kitchen=kitchen,
        event_id=event_id,
        ts_ms=ts_ms,
        type=KitchenEventType(type_),
        received_ms=ts_ms,
        **extra,
    ).model_dump(mode="json", exclude_none=True)


def rapid_test_body(
    result_id: str,
    result: str = "positive",
    *,
    sample_id: str = "20261122-007",
    stage: str = "initial",
    tested_at: str = "2026-11-22T06:10:00+08:00",
    **extra: Any,
) -> dict[str, Any]:
    """A contract-6 result as an instrument sends it: an enzyme-inhibition test of spinach, 63.5 % inhibition
    against a limit of 50 % (12 % when ``result`` is negative). ``extra`` adds or replaces fields, ``None``
    included (a body the hook must refuse is built the same way)."""
    return {
        "result_id": result_id,
        "sample_id": sample_id,
        "sample_name": "菠菜",
        "food_category": "vegetable",
        "test_item": "organophosphate/carbamate",
        "method": "GB/T 5009.199",
        "result_type": "quantitative",
        "value": 63.5 if result != "negative" else 12.0,
        "unit": "%",
        "limit": 50,
        "limit_basis": "GB/T 5009.199",
        "result": result,
        "stage": stage,
        "operator": "检测员 Li",
        "tested_at": tested_at,
    } | extra


def rapid_test_item(
    ts_ms: int, result_id: str, sample_id: str, result: str, stage: str = "initial", *, site: str = "S01", **extra: Any
) -> dict[str, Any]:
    """A rapid-test result as the rapid-tests topic carries it: :func:`rapid_test_body` (here 62 % inhibition of
    organophosphate, by 王) enriched with instrument ``rt-1`` and its site, tested at ``ts_ms``. Not validated,
    so that a test can feed a detector the items the hook would have refused; ``extra`` adds or replaces fields."""
    body = rapid_test_body(
        result_id,
        result,
        sample_id=sample_id,
        stage=stage,
        test_item="organophosphate",
        value=62.0 if result != "negative" else 12.0,
        limit=50.0,
        operator="王",
    )
    del body["tested_at"]
    return {"ts_ms": ts_ms, "instrument": "rt-1", "instrument_type": "enzyme_inhibition", "site": site} | body | extra


def open_alert(
    site: str,
    subject: str,
    opened_ms: int,
    *,
    rule: str = "coldchain.high",
    severity: str = "warning",
    notify: bool = True,
    evidence: dict[str, Any] | None = None,
) -> Alert:
    """An ``open`` alert record as a detector emits it (id from rule, subject and opening time)."""
    factory = AlertFactory(site, subject)
    return factory.open_alert(rule, Severity(severity), at=opened_ms, notify=notify, evidence=evidence or {})


def batch_records(
    items: Iterable[dict[str, Any]],
    partitions: int,
    *,
    kind: records.BatchKind = "readings",
    per_record: int = 500,
) -> list[tuple[int, bytes, bytes]]:
    """``(partition, key, value)`` record batches of the items, as the bridge and hooks produce them: grouped
    by ``murmur2(subject) mod partitions`` in order, at most ``per_record`` a record, keyed by the first item."""
    key_field = "device" if kind == "readings" else "kitchen"
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for item in items:
        by_partition.setdefault(partition_for(item[key_field], partitions), []).append(item)
    out: list[tuple[int, bytes, bytes]] = []
    for p, its in sorted(by_partition.items()):
        for i in range(0, len(its), per_record):
            chunk = its[i : i + per_record]
            out.append((p, chunk[0][key_field].encode(), records.batch_value(kind, chunk)))
    return out


def device_payload(seq: int, ts: float | None = None, temp_c: float = 3.5, **extra: Any) -> bytes:
    """A contract-1 payload as a device publishes it; ``ts`` defaults to now (Unix seconds)."""
    return serde.dumps({"ts": ts if ts is not None else round(time.time(), 3), "seq": seq, "temp_c": temp_c, **extra})


# ---------------------------------------------------------------------------------------------------------------
# Kafka readers and waiting
# ---------------------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def from_the_beginning(
    settings: Settings, topic: str, timeout: float = 30.0
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
    async with from_the_beginning(settings, topic, timeout) as (consumer, _):
        while time.monotonic() < deadline and not done():
            for batch in (await consumer.getmany(timeout_ms=200, max_records=10_000)).values():
                for r in batch:
                    on_record(r)


async def read_all(settings: Settings, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic`` up to its end offsets now: for asserting that nothing is there, which a read
    that simply times out cannot tell from a slow fetch."""
    deadline = time.monotonic() + timeout
    async with from_the_beginning(settings, topic, timeout) as (consumer, tps):
        ends = await consumer.end_offsets(tps)
        got: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"{topic}: not read to its end offsets in {timeout} s"
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                got += batch
        return got


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


async def eventually(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Wait until ``check()`` holds; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(interval)
    assert check(), f"timed out after {timeout} s waiting for {what}"


async def curl_form(url: str, fields: dict[str, str]) -> bytes:
    """POST ``fields`` as a URL-encoded form with the real curl, as a phone browser submits an ack link's form;
    returns the HTTP status code as curl prints it (``b"200"``)."""
    args = [arg for name, value in fields.items() for arg in ("--data-urlencode", f"{name}={value}")]
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", *args, url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Real ingestion processes on a site file of fresh devices
# ---------------------------------------------------------------------------------------------------------------


#: How long :func:`wait_login` waits for a reload before signalling the broker again.
RELOAD_AGAIN_S = 2.0


def register_in_broker(settings: Settings, secrets: dict[str, str]) -> None:
    """Add credentials to the local broker's logins (adds only: other tests' devices keep theirs; SIGHUP reload)
    and wait until it accepts them."""
    from pipeline.stack import logins

    logins.register_devices(settings, secrets, source="tests")
    if secrets:
        wait_login(settings, *next(reversed(secrets.items())))


def wait_login(settings: Settings, username: str, password: str, timeout: float = 15.0) -> None:
    """SIGHUP reload is asynchronous; wait until the newest credentials are accepted.

    A CI run under load once waited 5 s without the broker accepting them (2026-12-07). The cause is not known:
    a reload that took longer, or a SIGHUP that arrived during an earlier reload and was folded into it. So the
    wait is longer, and the broker is signalled again every :data:`RELOAD_AGAIN_S` until it accepts them (a
    reload with unchanged files changes nothing)."""
    import paho.mqtt.client as mqtt

    from pipeline.stack import mosquitto

    deadline = time.monotonic() + timeout
    signal_again = time.monotonic() + RELOAD_AGAIN_S
    while time.monotonic() < deadline:
        if time.monotonic() >= signal_again:
            mosquitto.reload(settings)
            signal_again = time.monotonic() + RELOAD_AGAIN_S
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:6]}")
        c.username_pw_set(username, password)
        try:
            rc = c.connect(settings.mqtt.host, settings.mqtt.port)
            c.loop(timeout=0.5)
            ok = rc == 0 and c.is_connected()
        except OSError:
            ok = False
        finally:
            c.disconnect()
        if ok:
            return
        time.sleep(0.1)
    raise AssertionError(f"mosquitto did not accept {username} within {timeout} s after SIGHUP")


def clear_session(settings: Settings, instance: str) -> None:
    """Drop a bridge instance's persistent session so its subscription does not outlive the test."""
    from pipeline.ingest.bridge import forget_session

    with contextlib.suppress(RuntimeError):
        forget_session(settings, instance)


def _stack_vars(state_dir: Path, kafka: int, influx: int, mqtt: int) -> dict[str, str]:
    """A stack's state folder and ports; Kafka's controller listens one above ``kafka``, InfluxDB's RPC one above
    ``influx``."""
    return {
        "LARDER_STATE_DIR": str(state_dir),
        "LARDER_KAFKA__PORT": str(kafka),
        "LARDER_KAFKA__CONTROLLER_PORT": str(kafka + 1),
        "LARDER_INFLUX__PORT": str(influx),
        "LARDER_INFLUX__RPC_PORT": str(influx + 1),
        "LARDER_MQTT__PORT": str(mqtt),
    }


def own_stack_env(state_dir: Path, cache_dir: Path, kafka: int, influx: int, mqtt: int) -> dict[str, str]:
    """The environment of a `larder stack` of a test's own (its state folder, free ports: another stack on this
    machine may hold any fixed choice), sharing the build cache for a warm start; messages do not wrap."""
    env = {
        **os.environ,
        **_stack_vars(state_dir, kafka, influx, mqtt),
        "LARDER_CACHE_DIR": str(cache_dir),
        "COLUMNS": "200",
    }
    env.pop("LARDER_KAFKA__BROKERS", None)  # the stack's own broker, not a cluster named outside
    return env


def cluster_env(state_dir: Path, brokers: int = 3) -> dict[str, str]:
    """The ``LARDER_*`` settings of a ``larder stack up --brokers N`` of a test's or benchmark's own: its state
    folder and a block of free ports (node n on ``port + 2(n-1)``, its controller one above; then InfluxDB and
    its RPC, then Mosquitto). Callers drop every other ``LARDER_*`` variable but the cache's, so no setting of
    the shared stack leaks into the cluster's processes."""
    port = free_port_block(2 * brokers + 3)
    influx = port + 2 * brokers
    return {**_stack_vars(state_dir, port, influx, influx + 2), "LARDER_KAFKA__BROKERS": str(brokers)}


def larder(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``larder ARGS`` in a subprocess with ``env``, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def kill9(popen: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL a test's process (a crash: nothing of it runs after) and reap it."""
    assert popen is not None
    popen.send_signal(signal.SIGKILL)
    popen.wait(10)


def terminate(popen: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM a test's process if it still runs (a clean stop), SIGKILL it if it has not exited in ``timeout``."""
    if popen is None or popen.poll() is not None:
        return
    popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(5)


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
        kill9(self.popen)

    def stop(self, timeout: float = 30.0) -> None:
        terminate(self.popen, timeout)


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
        from pipeline.stack import logins

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
        from pipeline.stack import logins

        for p in self.procs:
            if p.instance:
                clear_session(self.settings, p.instance)
        if instances := [p.instance for p in self.procs if p.instance]:
            logins.revoke_bridges(self.settings, instances)


def ingest_site_doc(devices: dict[str, tuple[str, str]], cameras: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """devices: id -> (asset, secret) with assets a1 (chilled, site S1) / b1 (frozen, site S2);
    cameras: id -> (kitchen, secret) in site S1 with kitchens k1, k2."""
    s1 = {d: {"asset": "a1", "secret": sec} for d, (asset, sec) in devices.items() if asset == "a1"}
    s2 = {d: {"asset": "b1", "secret": sec} for d, (asset, sec) in devices.items() if asset == "b1"}
    return {
        "version": 1,
        "sites": {
            "S1": {
                "assets": {"a1": {"profile": "chilled"}},
                "devices": s1,
                "kitchens": {"k1": {}, "k2": {}},
                "cameras": {c: {"kitchen": k, "secret": sec} for c, (k, sec) in cameras.items()},
            },
            "S2": {"assets": {"b1": {"profile": "frozen"}}, "devices": s2},
        },
    }


def make_env(settings: Settings, topics: Topics, workdir: Path, n_devices: int = 4, n_cameras: int = 1) -> IngestEnv:
    """A site file of ``n_devices`` fresh devices (half on S1/a1, half on S2/b1) and ``n_cameras`` cameras,
    the devices registered in the broker."""
    tag = uuid.uuid4().hex[:6]
    devices = {
        f"d-{tag}-{i}": ("a1" if i % 2 == 0 else "b1", f"secret-{uuid.uuid4().hex[:12]}") for i in range(n_devices)
    }
    cameras = {
        f"cam-{tag}-{i}": ("k1" if i % 2 == 0 else "k2", f"cam-{uuid.uuid4().hex[:12]}") for i in range(n_cameras)
    }
    site_file = write_site_file(workdir / "sites.yaml", ingest_site_doc(devices, cameras), header="ingestion test site")
    register_in_broker(settings, {d: sec for d, (_, sec) in devices.items()})
    return IngestEnv(settings, topics, site_file, workdir, devices, cameras)
