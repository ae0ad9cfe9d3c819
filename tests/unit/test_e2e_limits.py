"""The end-to-end benchmark names the process that held each phase back (issue 24): the first stage, in
pipeline order, that did not keep pace with its input while the phase published."""

from __future__ import annotations

import pytest

from benchmarks.e2e import BUSY_LABELS, Phase, lag_growth, limiting_stage
from pipeline.agents.core import BUSY_PARTS

CPU = {"bridge": 25.0, "worker": 40.0, "sink": 20.0, "mosquitto": 35.0, "kafka": 9.0, "influxdb": 18.0, "loadgen": 45.0}


def phase(**rates: float) -> Phase:
    p = Phase("ramp@10000/s", 1_000, 10_000, 30)
    p.ack_rate = p.in_kafka_rate = p.worker_rate = 10_000
    p.published = 300_000
    for name, value in rates.items():
        setattr(p, name, value)
    p.cpu_pct = dict(CPU)
    p.lag_growth = {"worker": 0.0, "sink": 0.0}
    return p


def test_the_first_stage_that_falls_behind_is_named() -> None:
    assert limiting_stage(phase(worker_rate=3_982), 2).startswith("worker: 3,982/s processed of 10,000/s")
    # Upstream first: a worker behind a bridge that is itself behind is not what held the phase back.
    assert limiting_stage(phase(in_kafka_rate=8_000, worker_rate=3_000), 2).startswith("bridge:")
    assert limiting_stage(phase(ack_rate=6_000, in_kafka_rate=6_000, worker_rate=6_000), 2).startswith(
        "load generator + Mosquitto:"
    )


def test_later_stages_that_also_fell_behind_follow_the_first() -> None:
    """On a full machine Mosquitto can refuse part of the offer *and* the worker fall behind what did get in:
    both are said, first things first, and the worker's growing lag is not said twice."""
    p = phase(ack_rate=22_000, in_kafka_rate=22_000, worker_rate=13_000)
    p.offered_rate = 30_000
    p.published = 900_000
    p.lag_growth = {"bench-worker": 14.0, "larder-sink": 0.0}
    text = limiting_stage(p, 2)
    assert text.startswith("load generator + Mosquitto: 22,000/s of 30,000/s offered taken")
    assert text.endswith("; then worker: 13,000/s processed of 22,000/s into Kafka (worker 40% of a core)")
    assert "lag grew" not in text
    assert limiting_stage(phase(worker_rate=3_982), 2).count("; then") == 0


def test_a_generator_that_did_not_offer_the_rate_is_not_blamed_on_mosquitto() -> None:
    p = phase(ack_rate=9_150, in_kafka_rate=9_150, worker_rate=9_150)
    p.published = 274_500  # 9,150/s over the 30 s asked, every one of them acked while publishing
    assert limiting_stage(p, 2).startswith("load generator: published 9,150/s of 10,000/s asked")


def test_a_saturated_single_threaded_front_end_is_named_and_busy_cores_are_said() -> None:
    p = phase(ack_rate=6_000, in_kafka_rate=6_000, worker_rate=6_000)
    p.cpu_pct["mosquitto"] = 97.0
    text = limiting_stage(p, 2)
    assert text.startswith("mosquitto:") and "2.5 of 2 cores busy (all)" in text


def test_a_phase_every_stage_kept_up_with_says_so_unless_a_lag_grew() -> None:
    assert limiting_stage(phase(worker_rate=9_900), 2).startswith("none: every stage kept pace")
    p = phase()
    p.lag_growth = {"larder-sink": 1_200.0}
    assert limiting_stage(p, 2).startswith("a consumer's lag grew (larder-sink +1,200 records/s")


def test_lag_growth_is_the_slope_of_the_lag() -> None:
    assert lag_growth([0, 1, 2, 3], [100, 1_100, 2_100, 3_100]) == pytest.approx(1_000)
    assert lag_growth([0, 1, 2, 3], [900, 1_100, 900, 1_100]) == pytest.approx(40)  # flat, around a level
    assert lag_growth([5.0], [10]) == 0.0


def test_a_worker_that_falls_behind_says_what_its_time_went_to() -> None:
    """The worker's busy counters over the phase: whether it is busy with the detectors or with running them."""
    p = phase(worker_rate=8_000)
    p.worker_busy = {"detect": 0.612, "encode": 0.041, "store": 0.038, "outputs": 0.004}
    text = limiting_stage(p, 2)
    assert text.startswith("worker: 8,000/s processed of 10,000/s into Kafka (worker 40% of a core; share of the")
    assert "its main thread spent in: detection stage 61%, encoding states 4%, writing states 4%, outputs 0%" in text
    assert list(BUSY_LABELS) == list(BUSY_PARTS), "every counter the worker has gets a name in the report"
    # Counters not read (an older worker): the line as before.
    assert "(worker 40% of a core; 1.9 of 2 cores busy" in limiting_stage(phase(worker_rate=8_000), 2)
    assert "share of" not in limiting_stage(phase(worker_rate=8_000), 2)
