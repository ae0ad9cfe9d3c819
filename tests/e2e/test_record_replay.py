"""A live run recorded with `larder record` replays to the same timeline, at 1x and at max speed.

Live: bridge + hooks + `larder worker --clock live` (wall clock), a minute of traffic sent at 1x with event times =
now, `larder record` (the real CLI, a subprocess) capturing it. Then the recording is replayed through fresh services
with `--clock replay` at speed 1 and at max speed. The three timelines (alert ids, rules, transitions, event times)
must be identical up to the recording's end minus the allowed lateness (later timers are not decided yet).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline import stack
from pipeline.replay.run import fresh_prefix, register_devices, run_lines, run_recording
from pipeline.replay.timeline import identity, read_alerts, wait_processed
from pipeline.services import Services, larder_argv
from pipeline.settings import Settings
from pipeline.siteconfig import SiteConfig, write_site_file
from pipeline.topics import Topics
from simulators import read_lines
from simulators.core import Line, secret_for

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(420)]

LATENESS_S = 6.0
S = 1000


def site_doc() -> dict[str, Any]:
    fast = {
        "allowed_lateness_min": LATENESS_S / 60,
        "door": {"warn_min": 0.25, "critical_min": 5.0},
        "liveness": {"offline_k": 1.5},
    }
    return {
        "version": 1,
        "sites": {
            "L1": {
                "timezone": "UTC",
                "assets": {
                    "a1": {"profile": "chilled", "overrides": fast},
                    "a2": {"profile": "chilled", "overrides": fast},
                },
                "devices": {
                    "L1-cr1": {"asset": "a1", "interval_s": 5, "secret": secret_for(9, "L1-cr1")},
                    "L1-cr2": {"asset": "a2", "interval_s": 5, "secret": secret_for(9, "L1-cr2")},
                },
                "kitchens": {
                    "k1": {
                        "overrides": {
                            "allowed_lateness_min": LATENESS_S / 60,
                            "unattended": {"warn_min": 0.25, "critical_min": 5.0},
                            "hygiene": {"dedup_min": 0.25},
                        }
                    }
                },
                "cameras": {"L1-cam1": {"kitchen": "k1", "secret": secret_for(9, "L1-cam1")}},
            }
        },
    }


def live_lines(t0: int) -> list[Line]:
    """40 s: a door open 5-30 s (warn at 15 s), a logger silent 15-27 s (offline after 7.5 s), a cook away 8-30 s
    with the stove on (unattended after 15 s), a hygiene violation at 12 s (resolves 15 s later)."""
    from pipeline.schemas import ms_to_iso

    out: list[Line] = []
    for i, dev in enumerate(("L1-cr1", "L1-cr2")):
        for k in range(9):
            t = t0 + k * 5 * S + i * 1000
            if dev == "L1-cr2" and 15 * S < t - t0 < 27 * S:
                continue
            door = dev == "L1-cr1" and 5 * S <= t - t0 < 30 * S
            out.append(
                Line(t, "mqtt", dev, {"ts": ms_to_iso(t), "seq": k + 1, "temp_c": 3.0 + 0.1 * k, "door_open": door})
            )
    events = [
        (1, "stove_on"),
        (1, "person_present"),
        (8, "person_absent"),
        (12, "no_hat"),
        (30, "person_present"),
        (36, "stove_off"),
    ]
    for n, (sec, typ) in enumerate(events):
        t = t0 + sec * S + 500
        body = {"event_id": f"e{n}", "ts": ms_to_iso(t), "type": typ, "zone": "cook", "confidence": 0.9}
        out.append(Line(t, "hook", "L1-cam1", body))
    return sorted(out, key=lambda x: x.at_ms)


def test_live_recording_replays_to_the_same_timeline(live_stack: Settings, tmp_path: Path) -> None:
    doc = site_doc()
    config = SiteConfig.model_validate(doc)
    sites = tmp_path / "sites.yaml"
    write_site_file(sites, doc)
    register_devices(live_stack, config)
    topics = Topics(fresh_prefix("live"), live_stack.readings_partitions)
    asyncio.run(stack.ensure_topics(live_stack, topics))
    svc = Services(live_stack, sites, topics.prefix, clock="live")
    svc.start()
    rec_path = tmp_path / "recording.jsonl"
    rec_log = tmp_path / "record.log"
    rec: subprocess.Popen[bytes] | None = None
    try:
        with rec_log.open("wb") as log:
            rec = subprocess.Popen(
                [*larder_argv(), "record", "--out", str(rec_path), "--topic-prefix", topics.prefix],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=svc.env(),
            )
        deadline = time.monotonic() + 30
        while "recording to" not in rec_log.read_text() and time.monotonic() < deadline:
            assert rec.poll() is None, rec_log.read_text()
            time.sleep(0.1)
        t0 = (int(time.time() * 1000) // 1000 + 1) * 1000
        lines = live_lines(t0)
        asyncio.run(run_lines(live_stack, topics, lines, config, hooks_url=svc.hooks_url, speed=1.0, ticks=False))
        # Let the silence after the last message run past the offline deadline, then stop recording.
        while time.time() * 1000 < t0 + 55 * S:
            time.sleep(0.2)
        rec.send_signal(signal.SIGINT)
        assert rec.wait(30) == 0, rec_log.read_text()
        while time.time() * 1000 < t0 + 55 * S + (LATENESS_S + 4) * S:
            time.sleep(0.2)
        asyncio.run(wait_processed(live_stack, topics))
        live = asyncio.run(read_alerts(live_stack, topics))
    finally:
        if rec is not None and rec.poll() is None:  # a recorder left running would hold the login for the next run
            rec.kill()
            rec.wait(10)
        svc.stop()

    recorded = list(read_lines(rec_path))
    assert recorded[-1].kind == "end"
    assert sum(x.kind == "mqtt" for x in recorded) == sum(x.kind == "mqtt" for x in lines)
    assert sum(x.kind == "hook" for x in recorded) == sum(x.kind == "hook" for x in lines)
    cut = recorded[-1].at_ms - int((LATENESS_S + 2) * S)

    def upto(alerts: list[Any]) -> list[Any]:
        return identity([a for a in alerts if a.at_ms <= cut])

    one_x = run_recording(live_stack, recorded, config, sites, speed=1.0, tick_every_s=1.0)
    fastest = run_recording(live_stack, recorded, config, sites, speed=None, tick_every_s=10.0)
    for prefix in (topics.prefix, one_x.topics.prefix, fastest.topics.prefix):
        stack.prune(live_stack, [prefix])  # topics and the worker's table files
    rules = {a.rule for a in live}
    assert {"coldchain.door_open", "liveness.offline", "kitchen.unattended", "kitchen.hygiene.no_hat"} <= rules
    assert upto(one_x.alerts) == upto(live), "the 1x replay differs from the live run"
    assert upto(fastest.alerts) == upto(live), "the max-speed replay differs from the live run"
    assert len(upto(live)) >= 8
