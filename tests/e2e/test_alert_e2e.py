"""End to end through real services: a temperature excursion in the readings topic -> `larder worker` opens
``coldchain.high`` -> the notifier texts the operator at the local fake SMS gateway -> the operator acknowledges
through the link with curl -> that alert's escalation stops (a second site's identical alert, left alone,
escalates to its manager as the control) -> every reading, transition and delivery is in InfluxDB (Flux)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from pipeline.alerts.api import AckApi
from pipeline.alerts.notifier import Notifier, routing_config
from pipeline.contracts import records
from pipeline.partitioner import partition_for
from pipeline.settings import Settings
from pipeline.sinks.influx import InfluxSink
from pipeline.siteconfig import load as load_sites
from pipeline.testing import curl_form, eventually, free_port, reading_item
from pipeline.topics import Topics
from tests.alerts_support import PHONES, FakeHttp, Service, flux, link_in, notify_settings

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
MANAGER_AFTER_S = 20
READINGS_PER_DEVICE = 39


def _site_file(path: Path) -> Path:
    lines = ["version: 1", "sites:"]
    for site, dev in (("S1", "e2e-dev-1"), ("S2", "e2e-dev-2")):
        lines += [
            f"  {site}:",
            "    timezone: Asia/Shanghai",
            "    assets:",
            # No start-up mask (the test's history is short) and no rate-of-rise rule (its step from 4 to 10 °C
            # would open a second alert): only the 'high' level speaks.
            "      cr-1:",
            "        kind: cold_room",
            "        profile: chilled",
            "        overrides: { masks: { startup_min: 0 }, rate_of_rise: { limit_c_per_min: null } }",
            "    devices:",
            f"      {dev}: {{ asset: cr-1, interval_s: 60, secret: s3cret-{dev} }}",
            "    recipients:",
            f'      operator: [{{ name: op-{site}, phone: "{PHONES[(site, "operator")]}" }}]',
            f'      site_manager: [{{ name: mgr-{site}, phone: "{PHONES[(site, "site_manager")]}" }}]',
            "    escalation:",
            "      warning:",
            "        - { after_min: 0, roles: [operator] }",
            f"        - {{ after_min: {MANAGER_AFTER_S / 60}, roles: [site_manager] }}",
            "      reminder_min: 600",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _readings(site: str, device: str, now_ms: int) -> list[dict[str, Any]]:
    """Twenty minutes at 4 °C, then 10 °C from (now - 15 min) to (now + 2 min): the chilled profile's 'high'
    (above 8 °C for 15 min) opens at event time ``now``, so the escalation deadlines fall inside the test."""
    start = now_ms - 36 * 60_000
    out = []
    for i in range(READINGS_PER_DEVICE):
        ts = start + i * 60_000
        temp = 10.0 if ts >= now_ms - 15 * 60_000 else 4.0
        out.append(reading_item(device, i, ts, temp, site=site))
    return out


async def test_excursion_to_sms_to_ack_stops_escalation_and_everything_is_in_influx(
    live_stack: Settings, topics: Topics, influx_bucket: str, tmp_path: Path
) -> None:
    gw = await FakeHttp().start()
    port = free_port()
    sites_path = _site_file(tmp_path / "sites.yaml")
    settings = notify_settings(live_stack, sms_url=f"{gw.base}/sms", public_url=f"http://127.0.0.1:{port}")
    config = load_sites(sites_path)
    env = {**os.environ, "LARDER_TOPIC_PREFIX": topics.prefix, "LARDER_READINGS_PARTITIONS": str(topics.partitions)}
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "worker",
            "--sites",
            str(sites_path),
            "--store",
            "memory",
            "--data-dir",
            str(tmp_path / "worker"),
            "-l",
            "warn",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    from aiohttp import web

    api = AckApi(settings, topics, routing_config(settings, config))
    runner = web.AppRunner(api.app())
    services: list[Service] = []
    try:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        services.append(await Service(Notifier(settings, topics, config, tick_s=0.2).run).started())
        sink = InfluxSink(settings, topics, bucket=influx_bucket, group_id=f"sink-{topics.prefix}")
        services.append(await Service(sink.run).started())

        now = time.time_ns() // 1_000_000
        items = {"S1": _readings("S1", "e2e-dev-1", now), "S2": _readings("S2", "e2e-dev-2", now)}
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            for site, dev in (("S1", "e2e-dev-1"), ("S2", "e2e-dev-2")):
                value = records.readings_value(items[site])
                await producer.send_and_wait(
                    topics.readings, value, key=dev.encode(), partition=partition_for(dev, topics.partitions)
                )
            # The worker runs on the replay clock: this tick moves its time to the last reading, as
            # `larder replay` does, so the result does not depend on how fast the worker started.
            tick = records.tick_value(items["S1"][-1]["ts_ms"])
            for p in range(topics.partitions):
                await producer.send_and_wait(topics.readings, tick, partition=p)
        finally:
            await producer.stop()

        def texted(site: str, role: str) -> list[str]:
            return gw.texts_to(PHONES[(site, role)])

        def worker_alive() -> bool:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            return True

        await eventually(lambda: worker_alive() and bool(texted("S1", "operator")), 90, "the operator's SMS")
        text = texted("S1", "operator")[0]
        assert "coldchain.high" in text and "S1/e2e-dev-1" in text
        url, _ = link_in(text)
        out = await curl_form(url, {"name": "op-S1", "note": "door was open; closed, stock moved"})
        assert out == b"200"

        await eventually(lambda: bool(texted("S2", "site_manager")), MANAGER_AFTER_S + 30, "the control escalation")
        await asyncio.sleep(3)
        assert texted("S1", "site_manager") == [], "acknowledged: no escalation to the manager"
        assert "ESCALATED" in texted("S2", "site_manager")[0]

        q = f'from(bucket: "{influx_bucket}") |> range(start: -2h, stop: 2h)'

        def transitions() -> dict[str, list[tuple[str, Any]]]:
            rows = flux(
                settings,
                q + ' |> filter(fn: (r) => r._measurement == "alert")'
                ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
                ' |> group() |> sort(columns: ["_time"])',
            )
            out: dict[str, list[tuple[str, Any]]] = {}
            for r in rows:
                if r["rule"] == "coldchain.high":
                    out.setdefault(r["site"], []).append((r["state"], r.get("note")))
            return out

        want = {
            "S1": [("open", None), ("acknowledged", "door was open; closed, stock moved")],
            "S2": [("open", None), ("escalated", None)],
        }
        await eventually(lambda: transitions() == want, 20, "alert transitions in InfluxDB")
        await eventually(
            lambda: (
                len(
                    flux(
                        settings,
                        q + ' |> filter(fn: (r) => r._measurement == "delivery" and r.kind == '
                        '"delivered" and r._field == "message_id")',
                    )
                )
                == 3
            ),
            20,
            "three delivered messages in InfluxDB",
        )
        readings = flux(
            settings,
            'from(bucket: "' + influx_bucket + '") |> range(start: -2h, stop: 2h)'
            ' |> filter(fn: (r) => r._measurement == "reading" and r._field == "temp_c") |> group() |> count()',
        )
        assert readings[0]["_value"] == 2 * READINGS_PER_DEVICE
    finally:
        for svc in reversed(services):
            await svc.close()
        await runner.cleanup()
        await gw.stop()
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
        log.close()
