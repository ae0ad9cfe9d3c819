"""The stack's pure parts: which topics and databases count as scratch, waiting for a slow service, logs."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.settings import load_settings
from pipeline.stack import SCRATCH_DATABASE, SCRATCH_TOPIC, kafka, prefixed
from pipeline.stack.process import tail, wait_for_service


@pytest.mark.parametrize(
    "name",
    [
        "t7f9b0ab3e6.readings.v1",
        "t7f9b0ab3e6-worker-devices-state-changelog",
        "bench13ccc9.alerts.v1",
        "bench13ccc9-base.single-readings.v1",
        "changelog__quix-842115ed--bench13ccc9-base.single-readings.v1--default",
        "b1234abcd.readings.v1",
        "sim05a7a5a3.kitchen-events.v1",
        "live16bbad95-worker-__assignor-__leader",
        "demo0123abcd.deliveries.v1",
    ],
)
def test_scratch_topics_of_tests_benchmarks_and_simulations(name: str) -> None:
    assert SCRATCH_TOPIC.match(name)


@pytest.mark.parametrize(
    "name",
    [
        "larder.readings.v1",
        "larder-worker-devices-state-changelog",
        "__consumer_offsets",
        "bench.readings.v1",  # no hex: a user's own prefix
        "tasting.readings.v1",
        "simulation.readings.v1",
        "t7f9b0ab3e6x.readings.v1",  # longer than a test prefix
        "changelog__quix-842115ed--larder-default",
    ],
)
def test_production_and_user_topics_are_not_scratch(name: str) -> None:
    assert not SCRATCH_TOPIC.match(name)


def test_scratch_databases_are_whole_names() -> None:
    assert SCRATCH_DATABASE.match("bench13ccc9") and SCRATCH_DATABASE.match("t7f9b0ab3e6")
    assert not SCRATCH_DATABASE.match("larder") and not SCRATCH_DATABASE.match("bench13ccc9x")


def test_prefixed_takes_one_runs_topics_only() -> None:
    mine = prefixed("bench13ccc9")
    assert mine("bench13ccc9.readings.v1")
    assert mine("bench13ccc9-worker-devices-state-changelog")
    assert mine("changelog__quix-842115ed--bench13ccc9-base.single-readings.v1--default")
    assert not mine("bench13ccc90.readings.v1")  # another run whose prefix starts the same
    assert not mine("xbench13ccc9.readings.v1")


def test_wait_returns_once_healthy() -> None:
    calls = iter([False, False, True])
    assert wait_for_service(lambda: next(calls), pid=None, logs=[], stall_timeout=5, cap=5, interval=0.01) is None


def test_wait_keeps_going_while_the_log_grows(tmp_path: Path) -> None:
    """Longer than stall_timeout in all, but the service logs progress: not a failure (Kafka loading logs)."""
    log = tmp_path / "svc.log"
    log.write_text("")
    t0 = time.monotonic()
    ticks: list[float] = []

    def check() -> bool:
        with log.open("a") as fh:
            fh.write("loading\n")
        return time.monotonic() - t0 > 0.6

    why = wait_for_service(
        check, pid=None, logs=[log], stall_timeout=0.2, cap=5, interval=0.02, on_wait=ticks.append, report_every=0.1
    )
    assert why is None
    assert ticks, "progress is reported while waiting"


def test_wait_gives_up_when_the_log_stalls(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("started\n")
    why = wait_for_service(lambda: False, pid=None, logs=[log], stall_timeout=0.2, cap=5, interval=0.02)
    assert why == "no answer and no log output for 0.2 s"


def test_wait_gives_up_at_the_cap_even_with_output(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"

    def check() -> bool:
        with log.open("a") as fh:
            fh.write("x\n")
        return False

    why = wait_for_service(check, pid=None, logs=[log], stall_timeout=1, cap=0.3, interval=0.02)
    assert why == "no answer within 0.3 s"


def test_wait_stops_at_once_when_the_process_exits() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    t0 = time.monotonic()
    why = wait_for_service(lambda: False, pid=proc.pid, logs=[], stall_timeout=30, cap=30, interval=0.02)
    assert why is not None and why.startswith("it exited")
    assert time.monotonic() - t0 < 5


def test_tail_reads_the_end_of_a_large_log(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    with log.open("w") as fh:
        for i in range(200_000):
            fh.write(f"line {i}\n")
    assert tail(log, 3).splitlines() == ["line 199997", "line 199998", "line 199999"]
    assert tail(tmp_path / "missing.log") == "(no log)"


def test_kafka_progress_from_its_log(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    log = kafka.paths(settings)["log"]
    log.parent.mkdir(parents=True)
    assert kafka.progress(settings) == "starting"
    log.write_text(
        "[2026-11-30 14:33:04,861] INFO Completed load of Log(dir=/x/log/a-3, topic=a, partition=3) with 1 segments"
        " in 143ms (2370/2730 completed in /x/log) (kafka.log.LogManager)\n"
    )
    assert kafka.progress(settings) == "loading partitions 2,370/2,730"


def test_kafka_recovers_partitions_on_every_core(tmp_path: Path) -> None:
    props = kafka.render_properties(load_settings(state_dir=tmp_path))
    assert f"num.recovery.threads.per.data.dir={os.cpu_count()}" in props


def test_a_services_large_log_is_rolled_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stack import process

    monkeypatch.setattr(process, "ROLL_BYTES", 10)
    log = tmp_path / "svc.log"
    log.write_text("old output, more than ten bytes\n")
    pid = process.start_daemon(["sh", "-c", "echo new"], pid_file=tmp_path / "svc.pid", log_file=log)
    assert wait_for_service(lambda: not process.pid_alive(pid), pid=None, logs=[], stall_timeout=5, cap=5) is None
    assert (tmp_path / "svc.log.1").read_text() == "old output, more than ten bytes\n"
    assert log.read_text() == "new\n"


def test_run_of_reads_prefixed_backwards() -> None:
    from pipeline.stack import run_of

    for name in ("bench13ccc9.alerts.v1", "bench13ccc9-worker-devices-state-changelog"):
        assert run_of(name) == "bench13ccc9" and prefixed(run_of(name))(name)
    assert run_of("changelog__quix-842115ed--bench13ccc9-base.single-readings.v1--default") == "bench13ccc9"


def test_a_kafka_cluster_id_never_starts_with_a_dash() -> None:
    """StorageTool's parser took `-t -ee6z...` for a missing value: a fresh CI machine failed `stack up` on it."""
    from pipeline.stack.kafka import new_cluster_id

    ids = [new_cluster_id() for _ in range(5000)]
    assert not [c for c in ids if c.startswith("-")]
    assert all(len(c) == 22 for c in ids)
