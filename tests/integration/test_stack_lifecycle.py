"""`larder stack up/status/down` on a second, isolated stack (other ports, other state folder): up is
idempotent, an unclean stop of the broker is recovered by the next up, status reports three healthy services,
down leaves no process behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from pipeline import testing
from pipeline.services import free_port_block
from pipeline.settings import Settings
from pipeline.stack.process import pid_alive, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_isolated_stack_up_status_down(live_stack: Settings, tmp_path: Path) -> None:
    base = free_port_block(5)
    env = testing.own_stack_env(tmp_path / "state", live_stack.cache_dir, base, base + 2, base + 4)
    try:
        first = testing.larder(env, "stack", "up")
        assert first.returncode == 0, first.stderr
        again = testing.larder(env, "stack", "up")
        assert again.returncode == 0, again.stderr
        assert "started" not in again.stderr, "a second `up` must not restart healthy services"
        status = testing.larder(env, "stack", "status")
        assert status.returncode == 0, status.stdout + status.stderr
        for addr in (f"127.0.0.1:{base}", f"127.0.0.1:{base + 2}", f"127.0.0.1:{base + 4}"):
            assert addr in status.stdout
        assert status.stdout.count("healthy") == 3
        pids = [int(p.read_text()) for p in (tmp_path / "state" / "run").glob("*.pid")]
        assert len(pids) == 3
        # The broker logs through log4j into a rolling kafka.log; the JVM's own output goes to kafka.out.
        logs = tmp_path / "state" / "logs"
        assert "Kafka Server started" in (logs / "kafka.log").read_text()
        assert (logs / "kafka.out").exists()

        # An unclean stop (what a reboot or a killed session does): `up` restarts the broker, which recovers.
        kafka_pid = int((tmp_path / "state" / "run" / "kafka.pid").read_text())
        os.killpg(kafka_pid, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(kafka_pid), timeout=10)
        after_kill = testing.larder(env, "stack", "up")
        assert after_kill.returncode == 0, after_kill.stderr
        assert "kafka: started" in after_kill.stderr and "kafka: healthy" in after_kill.stderr
        pids = [int(p.read_text()) for p in (tmp_path / "state" / "run").glob("*.pid")]
        assert kafka_pid not in pids and len(pids) == 3
    finally:
        down = testing.larder(env, "stack", "down")
    assert down.returncode == 0, down.stderr
    for pid in pids:
        # A zombie waiting for init to reap it is not a running process.
        assert not pid_alive(pid), f"pid {pid} survived `stack down`"
    after = testing.larder(env, "stack", "status")
    assert after.returncode == 1 and "down" in after.stdout
