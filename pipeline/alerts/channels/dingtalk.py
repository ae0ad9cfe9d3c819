"""DingTalk group robot (自定义机器人): ``POST <webhook URL>`` with ``{"msgtype": "text", "text": {...}}``.

If the robot uses signing (加签), its secret comes from the recipient's ``webhook_secret_ref``; the request
then carries ``&timestamp=<ms>&sign=<urlencoded base64 HMAC-SHA256(secret, "<ms>\\n<secret>")>`` as DingTalk
documents. DingTalk answers HTTP 200 with ``errcode``; 0 is delivered, 130101 (sending too fast) is retried.
Robots have no idempotency key: at-least-once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse

import httpx

from pipeline.alerts.channels.base import Outcome, OutMessage, RobotChannel
from pipeline.alerts.channels.webhook import recipient_secret
from pipeline.siteconfig import Recipient

RATE_LIMITED = frozenset({130101})


def signed_url(url: str, secret: str, now_ms: int) -> str:
    to_sign = f"{now_ms}\n{secret}".encode()
    sig = base64.b64encode(hmac.new(secret.encode(), to_sign, hashlib.sha256).digest()).decode()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}timestamp={now_ms}&sign={urllib.parse.quote_plus(sig)}"


class DingTalk(RobotChannel):
    name = "dingtalk"
    missing = "recipient has no DingTalk robot URL"
    rate_limited = RATE_LIMITED

    def address(self, recipient: Recipient) -> str | None:
        return recipient.dingtalk

    async def deliver(self, client: httpx.AsyncClient, msg: OutMessage, recipient: Recipient, to: str) -> Outcome:
        try:
            secret = recipient_secret(recipient, None)
        except (KeyError, OSError) as exc:
            return Outcome(False, retryable=False, error=f"DingTalk secret unavailable: {exc}")
        if secret:
            to = signed_url(to, secret, time.time_ns() // 1_000_000)
        return await super().deliver(client, msg, recipient, to)
