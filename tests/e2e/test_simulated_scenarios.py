"""Every library scenario, end to end through the real services, meets its ground truth.

The real path: simulated loggers publish over MQTT with their own credentials to Mosquitto, cameras POST
signed hooks, `larder bridge` and `larder hooks` write record batches to Kafka, `larder worker --clock replay`
runs the detectors, alerts land on the alerts topic. The replay tool ticks the worker's clock along simulated
time, so hours of simulated time take seconds.

All scenarios but the quiet week run as one fleet ending together (one pipeline start, a clock tick every 30
simulated seconds); each scenario is then judged on its own sites: every true alert detected within its
rule's delay + 2 s of the condition's onset, and no false alert. The quiet week (one site) runs on its own with
a tick every 5 simulated minutes: alert times are deadlines in event time, so the tick period changes when a
timer runs, not what it reports.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import stack
from pipeline.replay.run import RunResult, run_recording
from pipeline.replay.score import score
from pipeline.settings import Settings
from pipeline.siteconfig import write_site_file
from simulators import LIBRARY, Scenario, build
from simulators.scenarios import combine

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(400)]

FLEET = [n for n in LIBRARY if n != "quiet-week"]
DAY = 86_400_000


def past_start(duration_s: float) -> int:
    """A 00:00 UTC start from which the whole scenario lies in the past (the bridge refuses future readings)."""
    return (int(time.time() * 1000) - int(duration_s * 1000) - 60_000) // DAY * DAY


def _run(settings: Settings, sc: Scenario, folder: Path, tick_every_s: float) -> RunResult:
    write_site_file(folder / "sites.yaml", sc.config_doc)
    return run_recording(
        settings, sc.iter_lines(), sc.config, folder / "sites.yaml", truth=sc.truth, tick_every_s=tick_every_s
    )


@pytest.fixture(scope="module")
def fleet(
    live_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunResult, Scenario, dict[str, str]]]:
    longest = max(LIBRARY[n].default_duration_s for n in FLEET)
    sc, parts = combine(FLEET, end_ms=past_start(longest) + int(longest * 1000))
    result = _run(live_stack, sc, tmp_path_factory.mktemp("fleet"), 30.0)
    yield result, sc, parts
    stack.prune(live_stack, [result.topics.prefix])


@pytest.mark.parametrize("name", FLEET)
def test_scenario_meets_its_ground_truth(fleet: tuple[RunResult, Scenario, dict[str, str]], name: str) -> None:
    result, sc, parts = fleet
    prefix = next(p for p, n in parts.items() if n == name)
    truth = [t for t in sc.truth if t.site.startswith(prefix)]
    alerts = [a for a in result.alerts if a.site.startswith(prefix)]
    assert truth, f"{name} injects something to detect"
    s = score(truth, alerts)
    assert not s.misses, [(t.rule, t.subject, t.opened_at_ms) for t in s.misses]
    assert not s.false_positives, [(a.rule, a.subject, a.opened_at) for a in s.false_positives]
    for m in s.matches:
        assert m.delay_s is not None and -2 <= m.delay_s <= m.truth.max_delay_s + 2


def test_fleet_run_lost_nothing(fleet: tuple[RunResult, Scenario, dict[str, str]]) -> None:
    result, sc, _ = fleet
    st = result.stats
    expected = sum(len(x.body["readings"]) if "readings" in x.body else 1 for x in sc.lines if x.kind == "mqtt")
    assert st.readings_sent == expected and st.readings_in_kafka >= expected and st.dead_letters == 0
    assert st.hook_refusals == 0 and st.events_sent > 0
    assert st.connections == sum(1 for _ in sc.config.devices())  # one MQTT login per device


def test_quiet_week_raises_no_alert(live_stack: Settings, tmp_path: Path) -> None:
    sc = build("quiet-week", sites=1, start_ms=past_start(LIBRARY["quiet-week"].default_duration_s))
    result = _run(live_stack, sc, tmp_path, 300.0)
    try:
        assert sc.truth == []
        opened = [a for a in result.alerts if a.state.value == "open"]
        assert opened == [], [(a.rule, a.subject, a.opened_at) for a in opened]
        assert result.stats.readings_in_kafka >= result.stats.readings_sent > 20_000
    finally:
        stack.prune(live_stack, [result.topics.prefix])
