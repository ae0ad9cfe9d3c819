"""Shared fixtures: the real local stack, started once per session, with isolated resources per test.

The session fixture reuses a healthy running stack (``larder stack up`` beforehand makes test runs faster) or
starts one, and stops at the end only what it started itself (set ``LARDER_KEEP_STACK=1`` to keep it).
Each test gets its own topic prefix and its own InfluxDB database, and each pytest-xdist worker its own
Mosquitto, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import pytest

from pipeline import stack, testing
from pipeline.services import free_port
from pipeline.settings import Settings, load_settings
from pipeline.stack import influx, mosquitto
from pipeline.stack.process import read_pid, stop_pid
from pipeline.topics import Topics

_MAIN_BROKER: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker process gets a Mosquitto of its own (Kafka and InfluxDB stay shared).

    Every bridge subscribes to every device's readings and dead-letters the devices its site file lacks: on one
    shared broker, a test's bridge dead-lettered another test's readings (a fleet run counted 2 dead letters
    while a parallel test published). Topic prefixes keep Kafka apart; brokers must be apart too. Set in the
    environment, so the services a test starts as processes reach the same broker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker or os.environ.get("LARDER_MQTT__BROKER_ID"):
        return
    base = load_settings()
    if base.mqtt.external:
        return
    _MAIN_BROKER.update(port=str(base.mqtt.port))
    os.environ["LARDER_MQTT__BROKER_ID"] = f"test-{worker}"
    os.environ["LARDER_MQTT__PORT"] = str(free_port())


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def live_stack(settings: Settings) -> Iterator[Settings]:
    """The real Kafka, InfluxDB and Mosquitto on loopback; brought up once for the whole session.

    Test sessions running at the same time share the stack through a lock file: one at a time checks and
    starts it (two ``stack up`` at once would start two influxd, one of them losing the port), and the
    session that started it stops it only if no other session still holds the lock. A pytest-xdist worker
    then starts its own broker (see :func:`pytest_configure`) and stops it at the end."""
    shared = settings
    if _MAIN_BROKER:
        mqtt = settings.mqtt.model_copy(update={"broker_id": "", "port": int(_MAIN_BROKER["port"])})
        shared = settings.model_copy(update={"mqtt": mqtt})
    lock = settings.state_dir / "run" / "test-sessions.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as fh:
        # Shared at once when the stack is up (`make test` starts it; parallel test processes then share it
        # without waiting for each other); exclusive only to start it, checking again under the lock.
        fcntl.flock(fh, fcntl.LOCK_SH)
        was_up = all(s.healthy for s in stack.status(shared))
        if not was_up:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fcntl.flock(fh, fcntl.LOCK_EX)
            was_up = all(s.healthy for s in stack.status(shared))
            if not was_up:
                stack.up(shared, report=lambda m: print(f"[stack] {m}"))
            fcntl.flock(fh, fcntl.LOCK_SH)
        if _MAIN_BROKER:
            stack.up(settings, report=lambda m: None, create_topics=False)  # only this worker's broker is missing
        try:
            yield settings
        finally:
            if _MAIN_BROKER:
                pid_file = mosquitto.paths(settings)["pid"]
                pid = read_pid(pid_file)
                if pid is not None:
                    stop_pid(pid, timeout=30)
                pid_file.unlink(missing_ok=True)
        if was_up or os.environ.get("LARDER_KEEP_STACK"):
            return
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("[stack] left running: another test session is using it")
            return
        stack.down(shared, report=lambda m: print(f"[stack] {m}"))


@pytest.fixture
async def topics(live_stack: Settings) -> AsyncIterator[Topics]:
    """Larder's topics under a prefix of this test's own, created before and deleted after."""
    t = Topics(prefix=f"t{uuid.uuid4().hex[:10]}", partitions=live_stack.readings_partitions)
    await stack.ensure_topics(live_stack, t)
    yield t
    await stack.delete_topics(live_stack, stack.prefixed(t.prefix))


@pytest.fixture
def influx_bucket(live_stack: Settings) -> Iterator[str]:
    """A fresh InfluxDB database for this test; yields its v2 bucket name ``<db>/autogen``."""
    name = f"t{uuid.uuid4().hex[:10]}"
    influx.create_database(live_stack, name)
    yield f"{name}/autogen"
    influx.drop_database(live_stack, name)


@dataclass(frozen=True)
class MqttCredentials:
    username: str
    password: str


@pytest.fixture
def mqtt_devices(live_stack: Settings) -> Callable[[int], list[MqttCredentials]]:
    """Register ``n`` throwaway devices with the broker (adds only; SIGHUP reload) and return them."""

    def make(n: int) -> list[MqttCredentials]:
        new = [MqttCredentials(f"dev-{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(12)) for _ in range(n)]
        testing.register_in_broker(live_stack, {c.username: c.password for c in new})
        return new

    return make


@pytest.fixture
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    return asyncio.DefaultEventLoopPolicy()
