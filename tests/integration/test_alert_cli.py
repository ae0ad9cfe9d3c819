"""`larder notifier`, `larder api` and `larder sink` as real processes configured only through LARDER_* variables:
an alert is texted, the recipient answers "ACK <code>" through the gateway's reply webhook (Twilio's form
shape), and the acknowledged transition with its note lands in InfluxDB. SIGTERM stops all three cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from pipeline.settings import Settings
from pipeline.testing import eventually, free_port
from pipeline.topics import Topics
from tests.alerts_support import FakeHttp, flux, make_alert, produce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
PHONE = "+8613800000042"


def _spawn(verb: str, env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", verb, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def test_cli_services_text_take_an_sms_reply_and_record_it(
    live_stack: Settings, topics: Topics, influx_bucket: str, tmp_path: Path
) -> None:
    gw = await FakeHttp().start()
    port = free_port()
    reply_token = uuid.uuid4().hex
    sites = tmp_path / "sites.yaml"
    sites.write_text(
        "version: 1\nsites:\n  S1:\n    recipients:\n"
        f'      operator: [{{ name: Zhang, phone: "{PHONE}" }}]\n'
        "    escalation:\n      warning: [{ after_min: 0, roles: [operator] }]\n"
    )
    env = {
        **os.environ,
        "LARDER_TOPIC_PREFIX": topics.prefix,
        "LARDER_READINGS_PARTITIONS": str(topics.partitions),
        "LARDER_SITE_CONFIG": str(sites),
        "LARDER_INFLUX__BUCKET": influx_bucket,
        "LARDER_NOTIFY__SMS_URL": f"{gw.base}/sms",
        "LARDER_NOTIFY__GROUP_WINDOW_S": "0.5",
        "LARDER_NOTIFY__PUBLIC_URL": f"http://127.0.0.1:{port}",
        "LARDER_NOTIFY__API_PORT": str(port),
        "LARDER_NOTIFY__SMS_REPLY_TOKEN": reply_token,
    }
    procs = {verb: _spawn(verb, env, tmp_path / f"{verb}.log") for verb in ("notifier", "api", "sink")}

    def alive() -> bool:
        for verb, p in procs.items():
            assert p.poll() is None, f"{verb} exited:\n{(tmp_path / f'{verb}.log').read_text()[-2000:]}"
        return True

    text = ""
    try:
        alert = make_alert("S1", "fridge-1")
        await produce(live_stack, topics.alerts, [("S1", alert)])
        await eventually(lambda: alive() and bool(gw.texts_to(PHONE)), 40, "the SMS")
        text = gw.texts_to(PHONE)[0]
        code = text.rsplit("reply ACK ", 1)[1].strip()
        async with httpx.AsyncClient(timeout=5) as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.2)
            link = text.split("Ack: ", 1)[1].split(" ", 1)[0]
            assert (await http.get(link)).status_code == 200  # a preview fetch acknowledges nothing
            answer = await http.post(
                f"http://127.0.0.1:{port}/v1/sms/reply",
                params={"token": reply_token},
                data={"From": PHONE, "Body": f"ACK {code} compressor reset, product moved"},
            )
        assert answer.json() == {"ok": True, "acknowledged": [alert.alert_id]}

        def acked() -> list[dict[str, object]]:
            return flux(
                live_stack,
                f'from(bucket: "{influx_bucket}") |> range(start: -1h, stop: 1h)'
                ' |> filter(fn: (r) => r._measurement == "alert" and r.state == "acknowledged")'
                ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
            )

        await eventually(lambda: alive() and bool(acked()), 30, "the acknowledged transition in InfluxDB")
        (row,) = acked()
        assert row["alert_id"] == alert.alert_id and row["via"] == "sms" and row["by"] == "Zhang"
        assert row["note"] == "compressor reset, product moved"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = {}
        for verb, p in procs.items():
            try:
                codes[verb] = p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[verb] = p.wait(5)
        await gw.stop()
    assert codes == {"notifier": 0, "api": 0, "sink": 0}, codes
    logs = "".join((tmp_path / f"{verb}.log").read_text() for verb in procs)
    assert "POST /v1/sms/reply" in logs and "GET /a/<token>" in logs, "the access log is on"
    assert reply_token not in logs and "/a/" + text.split("/a/", 1)[1][:20] not in logs, "no credentials in logs"
