"""Each channel's request shape and answer classification, against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse

import httpx
import pytest

from pipeline.alerts.channels import OutMessage, build_channels
from pipeline.alerts.channels.dingtalk import DingTalk
from pipeline.alerts.channels.sms_http import HttpSms
from pipeline.alerts.channels.twilio import TwilioSms
from pipeline.alerts.channels.wecom import WeCom
from pipeline.settings import NotifySettings
from pipeline.siteconfig import Recipient
from tests.alerts_support import FakeHttp

MSG = OutMessage("m0123456789abcdef", 'Cold room "A" at 9.5 °C\nAck: http://x/a/t')


async def test_generic_sms_fills_the_template_safely_and_sends_the_idempotency_key() -> None:
    gw = await FakeHttp().start()
    try:
        n = NotifySettings(
            sms_url=f"{gw.base}/v1/send",
            sms_template='{"mobile": "{to}", "content": "{text}", "ext": {"client_id": "{id}"}, "sign": "Larder"}',
            sms_token="tok-123",  # type: ignore[arg-type]
        )
        async with httpx.AsyncClient() as client:
            out = await HttpSms(n).send(client, MSG, Recipient(name="a", phone="+8613800000001"))
    finally:
        await gw.stop()
    assert out.ok and out.http_status == 200 and out.latency_ms > 0
    (req,) = gw.requests
    assert req.json() == {
        "mobile": "+8613800000001",
        "content": MSG.text,
        "ext": {"client_id": MSG.message_id},
        "sign": "Larder",
    }
    assert req.headers["Idempotency-Key"] == MSG.message_id
    assert req.headers["Authorization"] == "Bearer tok-123"


async def test_twilio_messages_rest_shape() -> None:
    gw = await FakeHttp().start()
    gw.status = 201
    try:
        n = NotifySettings(
            sms_driver="twilio",
            sms_url=gw.base,
            twilio_account_sid="AC123",
            twilio_auth_token="secret-token",  # type: ignore[arg-type]
            twilio_from="+15005550006",
        )
        channel = build_channels(n)["sms"]
        assert isinstance(channel, TwilioSms)
        async with httpx.AsyncClient() as client:
            out = await channel.send(client, MSG, Recipient(name="a", phone="+8613800000001"))
    finally:
        await gw.stop()
    assert out.ok and out.http_status == 201
    (req,) = gw.requests
    assert req.path == "/2010-04-01/Accounts/AC123/Messages.json"
    form = urllib.parse.parse_qs(req.body.decode())
    assert form == {"To": ["+8613800000001"], "From": ["+15005550006"], "Body": [MSG.text]}
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(b"AC123:secret-token").decode()


def test_twilio_driver_refuses_missing_credentials() -> None:
    with pytest.raises(ValueError, match="twilio"):
        TwilioSms(NotifySettings(sms_driver="twilio"))


async def test_dingtalk_signs_when_a_secret_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    robot = await FakeHttp(robot=True).start()
    monkeypatch.setenv("LARDER_TEST_DING_SECRET", "SECabc123")
    try:
        r = Recipient(
            name="g",
            dingtalk=f"{robot.base}/robot/send?access_token=t0k",
            webhook_secret_ref="env:LARDER_TEST_DING_SECRET",
            channels=["dingtalk"],
        )
        async with httpx.AsyncClient() as client:
            out = await DingTalk(NotifySettings()).send(client, MSG, r)
    finally:
        await robot.stop()
    assert out.ok
    (req,) = robot.requests
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(req.path).query)
    ts = q["timestamp"][0]
    want = base64.b64encode(hmac.new(b"SECabc123", f"{ts}\nSECabc123".encode(), hashlib.sha256).digest()).decode()
    assert q["access_token"] == ["t0k"] and q["sign"] == [want]
    assert req.json() == {"msgtype": "text", "text": {"content": MSG.text}}


@pytest.mark.parametrize(
    ("errcode", "ok", "retryable"),
    [(0, True, True), (45009, False, True), (93000, False, False)],
)
async def test_wecom_errcode_decides(errcode: int, ok: bool, retryable: bool) -> None:
    from aiohttp import web

    async def handler(_req: web.Request) -> web.Response:
        return web.json_response({"errcode": errcode, "errmsg": "x"})

    app = web.Application()
    app.router.add_post("/cgi-bin/webhook/send", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        r = Recipient(name="w", wecom=f"http://127.0.0.1:{port}/cgi-bin/webhook/send?key=k", channels=["wecom"])
        async with httpx.AsyncClient() as client:
            out = await WeCom(NotifySettings()).send(client, MSG, r)
    finally:
        await runner.cleanup()
    assert out.http_status == 200
    assert (out.ok, out.retryable) == (ok, retryable)


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True), (400, False), (401, False)])
async def test_http_status_classification(status: int, retryable: bool) -> None:
    gw = await FakeHttp(status=status).start()
    try:
        async with httpx.AsyncClient() as client:
            out = await HttpSms(NotifySettings(sms_url=f"{gw.base}/s")).send(
                client, MSG, Recipient(name="a", phone="12345")
            )
    finally:
        await gw.stop()
    assert not out.ok and out.retryable is retryable and out.http_status == status


async def test_unreachable_gateway_is_retryable_not_an_exception() -> None:
    from pipeline.testing import free_port

    async with httpx.AsyncClient(timeout=2) as client:
        out = await HttpSms(NotifySettings(sms_url=f"http://127.0.0.1:{free_port()}/s")).send(
            client, MSG, Recipient(name="a", phone="12345")
        )
    assert not out.ok and out.retryable and out.http_status is None and "Connect" in (out.error or "")


async def test_missing_address_is_final() -> None:
    async with httpx.AsyncClient() as client:
        out = await HttpSms(NotifySettings()).send(client, MSG, Recipient(name="a", webhook="http://x"))
    assert not out.ok and not out.retryable
