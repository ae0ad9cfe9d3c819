"""Alert delivery against the real Kafka, with local HTTP servers as SMS gateway, webhook receiver and robots."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import httpx
import pytest

from pipeline.alerts import acklinks
from pipeline.alerts.api import AckApi
from pipeline.alerts.kafkaio import read_to_end
from pipeline.alerts.notifier import Notifier, routing_config
from pipeline.clock import ManualClock
from pipeline.schemas import Alert, AlertState, Delivery
from pipeline.settings import Settings
from pipeline.siteconfig import SiteConfig
from pipeline.testing import curl_form, eventually, free_port
from pipeline.topics import Topics
from tests.alerts_support import (
    FakeHttp,
    Service,
    link_in,
    make_alert,
    notify_settings,
    produce,
    sites,
    verify_webhook,
)

#: The issue asks for a 2-minute gateway outage; the default run uses a shorter one (CI time) through the very
#: same mechanism. LARDER_TEST_GATEWAY_OUTAGE_S=120 runs the full-length version.
GATEWAY_OUTAGE_S = float(os.environ.get("LARDER_TEST_GATEWAY_OUTAGE_S", "12"))

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180 + 2 * GATEWAY_OUTAGE_S)]

ONLY_OPERATOR = {"warning": [{"after_min": 0, "roles": ["operator"]}], "reminder_min": 600}


def _phone(i: int) -> str:
    return f"+86138{i:08d}"


async def _ledger(settings: Settings, topics: Topics) -> list[Delivery]:
    out: list[Delivery] = []
    await read_to_end(settings, [topics.deliveries], lambda r: out.append(Delivery.model_validate_json(r.value)))
    return out


def _attempt_number(d: Delivery) -> int:
    assert d.attempt is not None, f"an attempt without its number: {d}"
    return d.attempt


async def _alerts(settings: Settings, topics: Topics) -> list[Alert]:
    out: list[Alert] = []
    await read_to_end(settings, [topics.alerts], lambda r: out.append(Alert.model_validate_json(r.value)))
    return out


def _notifier(settings: Settings, topics: Topics, config: SiteConfig) -> Service:
    return Service(Notifier(settings, topics, config, tick_s=0.2).run)


@pytest.mark.parametrize("outage_s", [GATEWAY_OUTAGE_S])
async def test_gateway_500_outage_and_restart_deliver_every_notification_once(
    live_stack: Settings, topics: Topics, outage_s: float
) -> None:
    """The gateway answers 500 for ``outage_s``; the notifier is restarted in the middle of it. Afterwards every
    (alert, step, recipient) was accepted by the gateway exactly once, under one stable idempotency key."""
    gw = await FakeHttp().start()
    try:
        settings = notify_settings(live_stack, sms_url=f"{gw.base}/sms", backoff_max_s=3.0)
        n_sites = 5
        config = sites(
            {
                f"S{i}": {
                    "recipients": {"operator": [{"name": f"op{i}", "phone": _phone(i)}]},
                    "escalation": ONLY_OPERATOR,
                }
                for i in range(n_sites)
            }
        )
        alerts = [make_alert(f"S{i}", f"dev{i}") for i in range(n_sites)]
        gw.fail_until = time.monotonic() + outage_s
        await produce(settings, topics.alerts, [(a.site, a) for a in alerts])

        first = await _notifier(settings, topics, config).started()
        await eventually(lambda: len([r for r in gw.requests if r.status == 500]) >= n_sites, 15, "failed attempts")
        await first.close()  # a restart in the middle of the outage
        refused_before_restart = len(gw.requests)
        second = await _notifier(settings, topics, config).started()
        await eventually(lambda: len(gw.accepted) >= n_sites, outage_s + 30, "every message accepted")
        await asyncio.sleep(2.0)  # anything sent twice would arrive in this time
        await second.close()
    finally:
        await gw.stop()

    assert len(gw.requests) > refused_before_restart, "the restarted notifier resumed the in-flight messages"
    assert sorted(gw.accepted.values()) == [1] * n_sites, f"each message accepted once: {gw.accepted}"
    for i, a in enumerate(alerts):
        texts = gw.texts_to(_phone(i))
        assert len(texts) == 1 and a.rule in texts[0] and f"S{i}/dev{i}" in texts[0]
    ledger = await _ledger(settings, topics)
    planned = [d for d in ledger if d.kind == "planned"]
    delivered = [d for d in ledger if d.kind == "delivered"]
    assert len({d.message_id for d in planned}) == n_sites, "nothing planned twice across the restart"
    assert {d.message_id for d in delivered} == set(gw.accepted), "idempotency key = message id"
    keys = [k for d in delivered for k in d.keys]
    assert len(keys) == len(set(keys)) == n_sites
    retries = [d for d in ledger if d.kind == "attempt" and d.status == "retry"]
    assert retries and all(d.http_status == 500 and d.latency_ms is not None for d in retries)
    # Attempt numbers continue across the restart: per message they strictly increase and never repeat (a
    # repeat would give two attempts the same InfluxDB point and hide one).
    for mid in {d.message_id for d in planned}:
        numbers = [_attempt_number(d) for d in ledger if d.kind == "attempt" and d.message_id == mid]
        assert numbers == sorted(set(numbers)) and len(numbers) >= 2, (mid, numbers)


async def test_channels_formats_signatures_and_fallback(live_stack: Settings, topics: Topics) -> None:
    sms, hook, ding, wecom = [await FakeHttp().start() for _ in range(4)]
    ding.robot = wecom.robot = True
    sms.status = 400  # refuses the number: not retryable, so the fallback channel takes over
    secret = uuid.uuid4().hex
    try:
        settings = notify_settings(live_stack, sms_url=f"{sms.base}/sms", webhook_secret=secret, summary_over=5)
        config = sites(
            {
                "S1": {
                    "recipients": {
                        "operator": [
                            {
                                "name": "op",
                                "phone": "+8613800000001",
                                "webhook": f"{hook.base}/hook",
                                "channels": ["sms", "webhook"],
                            }
                        ],
                        "site_manager": [
                            {
                                "name": "grp",
                                "dingtalk": f"{ding.base}/robot/send?access_token=x",
                                "channels": ["dingtalk"],
                            }
                        ],
                        "station": [
                            {"name": "wx", "wecom": f"{wecom.base}/cgi-bin/webhook/send?key=k", "channels": ["wecom"]}
                        ],
                    },
                    "escalation": {"warning": [{"after_min": 0, "roles": ["operator", "site_manager", "station"]}]},
                }
            }
        )
        a = make_alert("S1", "fridge-3")
        await produce(settings, topics.alerts, [(a.site, a)])
        svc = await _notifier(settings, topics, config).started()
        await eventually(lambda: bool(hook.ok() and ding.ok() and wecom.ok()), 20, "all three channels")
        await svc.close()
    finally:
        for s in (sms, hook, ding, wecom):
            await s.stop()

    assert len(sms.requests) == 1 and sms.requests[0].status == 400, "a 4xx is not retried on the same channel"
    (wh,) = hook.ok()
    assert verify_webhook(secret, wh), "HMAC over '<timestamp>.<body>'"
    body = wh.json()
    assert wh.headers["Idempotency-Key"] == body["message_id"]
    assert body["alerts"][0]["alert_id"] == a.alert_id and body["alerts"][0]["state"] == "open"
    assert body["recipient"] == {"name": "op", "role": "operator"} and "/a/" in body["ack_url"]
    for robot in (ding, wecom):
        (req,) = robot.ok()
        msg = req.json()
        assert msg["msgtype"] == "text" and a.rule in msg["text"]["content"]
    ledger = await _ledger(settings, topics)
    op = [d for d in ledger if d.role == "operator" and d.kind in ("attempt", "delivered")]
    assert [(d.kind, d.channel, d.status) for d in op] == [
        ("attempt", "sms", "error"),
        ("attempt", "webhook", "ok"),
        ("delivered", "webhook", None),
    ]


async def test_ack_link_page_api_and_sms_reply_refuse_forged_expired_replayed(
    live_stack: Settings, topics: Topics
) -> None:
    gw = await FakeHttp().start()
    port = free_port()
    reply_token = uuid.uuid4().hex
    settings = notify_settings(
        live_stack,
        sms_url=f"{gw.base}/sms",
        public_url=f"http://127.0.0.1:{port}",
        sms_reply_token=reply_token,
    )
    config = sites(
        {
            f"S{i}": {
                "recipients": {"operator": [{"name": f"op{i}", "phone": _phone(i)}]},
                "escalation": ONLY_OPERATOR,
            }
            for i in range(3)
        }
    )
    from aiohttp import web

    api = AckApi(settings, topics, routing_config(settings, config))
    runner = web.AppRunner(api.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    svc = await _notifier(settings, topics, config).started()
    try:
        alerts = [make_alert(f"S{i}", f"dev{i}") for i in range(3)]
        await produce(settings, topics.alerts, [(a.site, a) for a in alerts])
        await eventually(lambda: all(gw.texts_to(_phone(i)) for i in range(3)), 20, "three texts")
        url0, token0 = link_in(gw.texts_to(_phone(0))[0])
        key = settings.ack_key.get_secret_value()  # type: ignore[union-attr]
        mid0 = acklinks.verify(key, token0, time.time()).message_id

        async with httpx.AsyncClient(timeout=10) as http:
            page = await http.get(url0)
            assert page.status_code == 200 and alerts[0].rule in page.text and "<form" in page.text
            forged = token0[:-2] + ("AA" if not token0.endswith("AA") else "BB")
            assert (await http.get(f"{url0.rsplit('/', 1)[0]}/{forged}")).status_code == 403
            assert (await http.post(f"{url0.rsplit('/', 1)[0]}/{forged}", data={"note": "x"})).status_code == 403
            expired = acklinks.issue(key, mid0, int(time.time()) - 1)
            assert (await http.post(f"{url0.rsplit('/', 1)[0]}/{expired}", data={"note": "x"})).status_code == 410
            assert (
                await http.post(f"http://127.0.0.1:{port}/v1/alerts/{alerts[0].alert_id}/ack", json={"token": expired})
            ).status_code == 410

            # The supervisor acknowledges through the link with curl, as a phone browser would POST the form.
            out = await curl_form(url0, {"name": "Wang", "note": "moved stock to freezer 2"})
            assert out == b"200"
            replay = await http.post(url0, data={"note": "again"})
            assert replay.status_code == 409, "a used link is refused"
            assert (await http.get(url0)).status_code == 409
            api_replay = await http.post(
                f"http://127.0.0.1:{port}/v1/alerts/{alerts[0].alert_id}/ack", json={"token": token0}
            )
            assert api_replay.status_code == 409

            # API with a bearer token, for the second alert; a token does not cover other messages' alerts.
            _, token1 = link_in(gw.texts_to(_phone(1))[0])
            wrong = await http.post(
                f"http://127.0.0.1:{port}/v1/alerts/{alerts[2].alert_id}/ack",
                headers={"Authorization": f"Bearer {token1}"},
            )
            assert wrong.status_code == 403
            ok = await http.post(
                f"http://127.0.0.1:{port}/v1/alerts/{alerts[1].alert_id}/ack",
                headers={"Authorization": f"Bearer {token1}"},
                json={"note": "door closed", "by": "Li"},
            )
            assert ok.status_code == 202 and ok.json()["via"] == "api"

            # SMS reply from the phone the third message went to.
            text2 = gw.texts_to(_phone(2))[0]
            code = text2.rsplit("reply ACK ", 1)[1].strip()
            reply_url = f"http://127.0.0.1:{port}/v1/sms/reply"
            bad = await http.post(reply_url, params={"token": "nope"}, json={"from": _phone(2), "text": f"ACK {code}"})
            assert bad.status_code == 403
            stranger = await http.post(
                reply_url, params={"token": reply_token}, json={"from": _phone(7), "text": f"ACK {code}"}
            )
            assert stranger.json()["ok"] is False
            real_clock = api.clock  # a day later, the code has expired with the message's link
            api.clock = ManualClock(real_clock.now_ms() + settings.notify.link_ttl_s * 1000 + 60_000)
            late = await http.post(
                reply_url, params={"token": reply_token}, json={"from": _phone(2), "text": f"ACK {code}"}
            )
            api.clock = real_clock
            assert late.json() == {"ok": False, "reason": "that message's ack code has expired"}
            good = await http.post(
                reply_url, params={"token": reply_token}, json={"from": _phone(2), "text": f"ack {code} fixed seal"}
            )
            assert good.json() == {"ok": True, "acknowledged": [alerts[2].alert_id]}

        def acked() -> dict[str, Alert]:
            return {a.alert_id: a for a in transitions if a.state is AlertState.ACKNOWLEDGED}

        transitions: list[Alert] = []

        async def refresh() -> None:
            transitions[:] = await _alerts(settings, topics)

        for _ in range(50):
            await refresh()
            if len(acked()) == 3:
                break
            await asyncio.sleep(0.2)
        got = acked()
        assert got[alerts[0].alert_id].evidence["note"] == "moved stock to freezer 2"
        assert got[alerts[0].alert_id].evidence["by"] == "Wang"
        assert got[alerts[0].alert_id].evidence["via"] == "link"
        assert got[alerts[1].alert_id].evidence["via"] == "api"
        assert got[alerts[2].alert_id].evidence["via"] == "sms"
        assert got[alerts[2].alert_id].evidence["note"] == "fixed seal"
    finally:
        await svc.close()
        await runner.cleanup()
        await gw.stop()
