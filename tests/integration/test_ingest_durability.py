"""Nothing is lost: the bridge killed with SIGKILL mid-flood, Mosquitto restarted mid-flood, the bridge away
while readings are published. Every (device, seq) must be in Kafka; duplicates are allowed (QoS 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from pipeline.stack import mosquitto
from pipeline.stack.process import pid_alive, read_pid
from pipeline.testing import LARDER, IngestEnv
from tests.integration.ingest_support import Flood, Readings

# exclusive: these tests restart (and kill -9) the shared Mosquitto, which every other module's test would see.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.exclusive, pytest.mark.timeout(180)]


def _wait_sent(flood: Flood, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while flood.sent < n:
        assert time.monotonic() < deadline, f"publishers stuck at {flood.sent}"
        time.sleep(0.02)


def _expected(env: IngestEnv, per_device: int) -> set[tuple[str, int]]:
    return {(d, s) for d in env.devices for s in range(per_device)}


async def _assert_all_arrive(env: IngestEnv, per_device: int, timeout: float = 60, extra: int = 0) -> Readings:
    want = _expected(env, per_device)
    got = await Readings().until(env.settings, env.topics, len(want) + extra, timeout=timeout)
    missing = want - set(got.pairs)
    assert not missing, f"{len(missing)} of {len(want)} readings missing, e.g. {sorted(missing)[:5]}"
    assert len(set(got.pairs) - want) == extra
    return got


async def test_bridge_killed_twice_mid_flood_loses_nothing(env: IngestEnv) -> None:
    bridge = env.bridge(instance=f"crash-{env.group}")
    per_device = 12_500  # 4 devices: 50,000 readings
    flood = Flood(env.settings, [(d, s) for d, (_, s) in env.devices.items()], per_device).start()
    for at in (12_000, 30_000):
        _wait_sent(flood, at)
        bridge.kill9()  # SIGKILL: no flush, no goodbye; unacknowledged messages stay with the broker
        bridge.start()
    flood.wait()
    got = await _assert_all_arrive(env, per_device)
    dupes = sum(n - 1 for n in got.pairs.values())
    print(f"50,000 readings, 2 x SIGKILL: none missing, {dupes} QoS 1 duplicates in Kafka")


async def test_mosquitto_restarted_mid_flood_loses_nothing(env: IngestEnv) -> None:
    # The default bridge mode, a plain subscription: Mosquitto 2.0.11 drops messages routed to a *shared* member
    # restored from disk before it reconnects (reproduced; docs/ingest.md), so shared is opt-in.
    env.bridge(instance=f"mq-{env.group}")
    per_device = 12_500
    flood = Flood(env.settings, [(d, s) for d, (_, s) in env.devices.items()], per_device).start()
    _wait_sent(flood, 20_000)
    pid_file = mosquitto.paths(env.settings)["pid"]
    pid = read_pid(pid_file)
    assert pid, "this stack's mosquitto is not running"
    os.kill(pid, signal.SIGTERM)  # persistence on: queued and in-flight messages are saved on the way down
    deadline = time.monotonic() + 15
    while read_pid(pid_file) == pid and _alive(pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    mosquitto.start(env.settings)
    flood.wait()
    got = await _assert_all_arrive(env, per_device)
    print(f"50,000 readings, mosquitto restarted: none missing, {sum(n - 1 for n in got.pairs.values())} duplicates")


async def test_mosquitto_killed_9_mid_flood_loses_at_most_the_autosave_bound(env: IngestEnv) -> None:
    """Issue 27, finding 4 (kill -9): no goodbye; the broker comes back from its last autosave. It can lose what
    it acknowledged to devices after that save and had not handed to the bridge yet (the bridge forwards what it
    holds; what was saved it gets again): at most the readings PUBACKed in the ``mqtt.autosave_interval_s``
    before the kill. Prints the figure."""
    env.bridge(instance=f"k9-{env.group}")
    per_device = 5_000
    flood = Flood(env.settings, [(d, s) for d, (_, s) in env.devices.items()], per_device).start()
    acked: list[tuple[float, int]] = []
    deadline = time.monotonic() + 60
    while flood.sent < 8_000:
        assert time.monotonic() < deadline, f"publishers stuck at {flood.sent}"
        acked.append((time.monotonic(), flood.sent))
        time.sleep(0.02)
    pid_file = mosquitto.paths(env.settings)["pid"]
    pid = read_pid(pid_file)
    assert pid, "this stack's mosquitto is not running"
    os.kill(pid, signal.SIGKILL)
    killed_at, at_kill = time.monotonic(), flood.sent
    window = env.settings.mqtt.autosave_interval_s
    bound = at_kill - max([n for t, n in acked if t <= killed_at - window], default=0)
    deadline = time.monotonic() + 15
    while _alive(pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    mosquitto.start(env.settings)
    flood.wait()
    want = _expected(env, per_device)
    got = await Readings().until(env.settings, env.topics, len(want), timeout=30)
    missing = want - set(got.pairs)
    print(
        f"mosquitto kill -9 after {at_kill:,} of {len(want):,} PUBACKs: {len(missing)} readings lost (bound: the "
        f"{bound:,} PUBACKed in the last {window} s), {sum(n - 1 for n in got.pairs.values())} duplicates"
    )
    assert len(missing) <= bound, f"{len(missing)} lost, more than the autosave bound {bound}"


def _alive(pid: int) -> bool:
    return pid_alive(pid)  # a broker this test process restarted is its child: a zombie once killed


async def test_bridge_away_while_20000_readings_are_published(env: IngestEnv) -> None:
    instance = f"away-{env.group}"
    bridge = env.bridge(instance=instance)
    bridge.stop()  # its persistent session (and shared-subscription membership) stays with the broker
    flood = Flood(env.settings, [(d, s) for d, (_, s) in env.devices.items()], 5_000).start()
    flood.wait()
    bridge.start()
    await _assert_all_arrive(env, 5_000)
    # Everything was acknowledged to the broker (PUBACKs batched per tick): a restart redelivers nothing.
    bridge.stop()
    bridge.start()
    Flood(env.settings, [next((d, s) for d, (_, s) in env.devices.items())], 1, start_seq=5_000).start().wait()
    got = await _assert_all_arrive(env, 5_000, extra=1)
    assert max(got.pairs.values()) == 1, f"{sum(n - 1 for n in got.pairs.values())} redelivered after a clean stop"


async def test_retired_instance_forwards_its_queue_and_leaves_no_session(env: IngestEnv) -> None:
    shared = "true"  # scaled out: two instances split the readings in one shared group
    env.bridge(instance=f"stays-{env.group}", LARDER_INGEST__BRIDGE_SHARED=shared)
    leaving = f"leaves-{env.group}"
    # Away for good: the broker keeps routing its share to its session.
    env.bridge(instance=leaving, LARDER_INGEST__BRIDGE_SHARED=shared).stop()
    # 50,000 readings, ~25,000 of them queued for the away instance: more than the broker's in-flight window
    # (20,000), so the queue does not all precede the UNSUBACK on the wire and the rest trickle in as acks go
    # back. Stopping at the UNSUBACK, or at the first lull, loses thousands (checked).
    Flood(env.settings, [(d, s) for d, (_, s) in env.devices.items()], 12_500).start().wait()
    before = await Readings().until(env.settings, env.topics, 50_000, timeout=8)
    assert 0 < len(before.pairs) < 50_000, f"{len(before.pairs)}: the away instance should hold part of the flood"

    retire = [LARDER, "bridge", "--instance", leaving, "--retire", "--idle", "1"]
    # A small bound of the bridge's own: the queue arrives in many rounds of one socket read each.
    small = env.env(LARDER_INGEST__MAX_INFLIGHT="100", LARDER_INGEST__BRIDGE_SHARED=shared)
    done = subprocess.run(retire, env=small, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"bridge {leaving} retired" in " ".join((done.stdout + done.stderr).split()), done.stderr
    await _assert_all_arrive(env, 12_500)

    # Its session is gone: a later flood goes wholly to the instance that stays, none of it queued elsewhere.
    Flood(env.settings, [(d, s) for d, (_, s) in env.devices.items()], 500, start_seq=12_500).start().wait()
    await _assert_all_arrive(env, 13_000, timeout=30)
    again = subprocess.run(retire, env=small, capture_output=True, text=True, timeout=90)
    assert again.returncode == 0 and "had no session" in " ".join((again.stdout + again.stderr).split()), again.stderr
