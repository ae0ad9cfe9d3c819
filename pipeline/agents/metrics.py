"""Prometheus metrics of `larder worker`, read from the runners' counters at scrape time (nothing is done per
reading on the hot path)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pipeline.agents.core import Runner, Stats

if TYPE_CHECKING:
    from pipeline.agents.faust.app import WorkerApp


class RunnerCollector(Collector):
    def __init__(self, wapp: Callable[[], WorkerApp]) -> None:
        self._wapp = wapp

    def collect(self) -> Iterator[Any]:
        wapp = self._wapp()
        runners: dict[str, Runner[Any, Any]] = wapp.runners
        for f in fields(Stats):
            family = CounterMetricFamily(f"larder_worker_{f.name}", f.metadata["help"], labels=["concern"])
            for name, runner in runners.items():
                family.add_metric([name], getattr(runner.stats, f.name))
            yield family
        subjects = GaugeMetricFamily("larder_worker_subjects", "subjects with state on this worker", labels=["concern"])
        for name, runner in runners.items():
            subjects.add_metric([name], runner.subjects())
        yield subjects
        # What the worker guards against in Faust around rebalances (pipeline/agents/faust/continuity.py): non-zero
        # values are repairs that happened, worth a look when they climb, not errors.
        rewinds = CounterMetricFamily(
            "larder_worker_rewinds",
            "partitions re-read from the next unprocessed offset (a gap or a stalled fetch position)",
            labels=["concern"],
        )
        for name, continuity in wapp.continuities.items():
            rewinds.add_metric([name], continuity.rewinds)
        yield rewinds
        yield CounterMetricFamily(
            "larder_worker_skip_acks_refused",
            "acks of source records the agent had not processed (Faust's skipped events), refused",
            value=wapp.gate.refused if wapp.gate is not None else 0,
        )


def serve(wapp: WorkerApp, port: int, host: str = "127.0.0.1") -> None:
    from prometheus_client import start_http_server

    REGISTRY.register(RunnerCollector(lambda: wapp))
    start_http_server(port, addr=host)
