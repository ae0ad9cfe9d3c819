"""The market-morning scenario (contract 6) end to end: signed requests to the real `larder hooks`, Kafka, the
real `larder worker --clock replay` (the rapid-tests concern), alerts on the alerts topic, then the results and
alerts into InfluxDB through the sink.

Judged against the scenario's ground truth: every true alert opened at its exact event time (a recheck deadline
is an event time, not a tick), resolved exactly when the story says, nothing else; every result in InfluxDB once
(the retransmitted result and the 20-min backlog included).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pipeline import stack
from pipeline.contracts import rules as R
from pipeline.replay.run import run_recording
from pipeline.replay.score import score
from pipeline.schemas import AlertState
from pipeline.settings import Settings
from pipeline.sinks.influx import InfluxSink
from pipeline.siteconfig import write_site_file
from pipeline.testing import eventually
from pipeline.topics import Topics
from simulators import build
from tests.alerts_support import Service, flux

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(300)]

DAY = 86_400_000


def test_market_morning_meets_its_ground_truth_and_lands_in_influxdb(
    live_stack: Settings, tmp_path: Path, influx_bucket: str
) -> None:
    duration_s = 7 * 3600
    # A start from which the whole morning lies in the past: the hooks refuse results tested in the future.
    start = (int(time.time() * 1000) - duration_s * 1000 - 60_000) // DAY * DAY
    sc = build("market-morning", start_ms=start)
    write_site_file(tmp_path / "sites.yaml", sc.config_doc)
    result = run_recording(
        live_stack, sc.iter_lines(), sc.config, tmp_path / "sites.yaml", truth=sc.truth, tick_every_s=60
    )
    try:
        st = result.stats
        lines = [x for x in sc.lines if x.kind == "rapid_test"]
        sent = {(x.source, r["result_id"]) for x in lines for r in x.body.get("results", [x.body])}
        # 40 samples + 4 rechecks/dispositions + 1 lab result; the retransmit is answered as a duplicate.
        assert len(sent) == 45 and st.rapid_tests_sent == len(sent) and st.rapid_test_refusals == 0
        s = score(sc.truth, result.alerts)
        assert not s.misses, [(t.rule, t.subject, t.opened_at_ms) for t in s.misses]
        assert not s.false_positives, [(a.rule, a.subject, a.opened_at) for a in s.false_positives]
        for m in s.matches:
            assert m.delay_s == 0, (m.truth.rule, m.truth.subject, m.delay_s)
            assert m.resolved_at_ms == m.truth.resolved_at_ms, (m.truth.rule, m.truth.subject)
        rules = {(a.rule, a.severity.value) for a in result.alerts if a.state is AlertState.OPEN}
        assert rules == {
            (R.RAPIDTEST_POSITIVE, "warning"),
            (R.RAPIDTEST_RECHECK_OVERDUE, "critical"),
            (R.RAPIDTEST_CONFIRMED, "critical"),
        }
        late = [a for a in result.alerts if a.evidence.get("retrospective")]
        assert [(a.rule, a.subject.rsplit("-", 1)[-1]) for a in late] == [(R.RAPIDTEST_POSITIVE, "M010")]

        asyncio.run(
            _influx_holds_everything(
                live_stack, result.topics, influx_bucket, sent, len({a.alert_id for a in result.alerts})
            )
        )
    finally:
        stack.prune(live_stack, [result.topics.prefix])


async def _influx_holds_everything(
    live_stack: Settings, topics: Topics, influx_bucket: str, sent: set[tuple[str, str]], n_alerts: int
) -> None:
    sink = InfluxSink(live_stack, topics, bucket=influx_bucket, group_id=f"sink-{topics.prefix}")
    svc = await Service(sink.run).started()
    q = f'from(bucket: "{influx_bucket}") |> range(start: 2020-01-01T00:00:00Z, stop: 2100-01-01T00:00:00Z)'
    ids = q + ' |> filter(fn: (r) => r._measurement == "rapid_test" and r._field == "result_id")'
    alert_ids = q + ' |> filter(fn: (r) => r._measurement == "alert" and r._field == "alert_id")'
    await eventually(lambda: len(flux(live_stack, ids)) >= len(sent), 60, "every result in InfluxDB")
    # The sink reads the alerts topic in its own time: wait for it too before judging.
    await eventually(lambda: len({p["_value"] for p in flux(live_stack, alert_ids)}) >= n_alerts, 60, "every alert")
    await svc.close()
    points = flux(live_stack, ids)
    assert sorted((p["instrument"], p["_value"]) for p in points) == sorted(sent)
    positives = flux(
        live_stack, q + ' |> filter(fn: (r) => r._measurement == "rapid_test" and r._field == "sample_id")'
    )
    linked = {p["_value"] for p in positives if p["outcome"] != "negative" or p["stage"] != "initial"}
    assert {x.rsplit("-", 1)[-1] for x in linked} == {"M004", "M010", "M020", "M027", "M033"}
    assert len({p["_value"] for p in flux(live_stack, alert_ids)}) == n_alerts
