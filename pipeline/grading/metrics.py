"""Prometheus metrics of `larder grade worker`, read from the agent's counters at scrape time (nothing is done per
record), named and explained like the detection worker's (:mod:`pipeline.agents.metrics`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from typing import Any

from prometheus_client.core import REGISTRY, CounterMetricFamily
from prometheus_client.registry import Collector

from pipeline.grading.app import GradingApp, GradingStats


class GradingCollector(Collector):
    def __init__(self, gapp: GradingApp) -> None:
        self._gapp = gapp

    def collect(self) -> Iterator[Any]:
        gapp = self._gapp
        for f in fields(GradingStats):
            yield CounterMetricFamily(f"larder_grading_{f.name}", f.metadata["help"], value=getattr(gapp.stats, f.name))
        # The Faust guards the grading worker shares with the detection worker (pipeline/agents/faust/continuity.py):
        # non-zero values are repairs that happened, worth a look when they climb, not errors.
        yield CounterMetricFamily(
            "larder_grading_rewinds",
            "partitions re-read from the next unprocessed offset (a gap or a stalled fetch position)",
            value=gapp.continuity.rewinds if gapp.continuity is not None else 0,
        )
        yield CounterMetricFamily(
            "larder_grading_skip_acks_refused",
            "acks of source records the agent had not processed (Faust's skipped events), refused",
            value=gapp.gate.refused if gapp.gate is not None else 0,
        )


def serve(gapp: GradingApp, port: int, host: str = "127.0.0.1") -> None:
    from prometheus_client import start_http_server

    REGISTRY.register(GradingCollector(gapp))
    start_http_server(port, addr=host)
