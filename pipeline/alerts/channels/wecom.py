"""WeCom (企业微信) group robot: ``POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...``.

Body ``{"msgtype": "text", "text": {"content": ...}}``; the answer is HTTP 200 with ``errcode`` (0 delivered,
45009 "api freq out of limit" retried, anything else refused). No signing beyond the key in the URL and no
idempotency key: at-least-once.
"""

from __future__ import annotations

import httpx

from pipeline.alerts.channels.base import Outcome, OutMessage, post, robot_outcome
from pipeline.settings import NotifySettings
from pipeline.siteconfig import Recipient

RATE_LIMITED = frozenset({45009})


class WeCom:
    name = "wecom"

    def __init__(self, settings: NotifySettings) -> None:
        pass

    def address(self, recipient: Recipient) -> str | None:
        return recipient.wecom

    async def send(self, client: httpx.AsyncClient, msg: OutMessage, recipient: Recipient) -> Outcome:
        url = self.address(recipient)
        if not url:
            return Outcome(False, retryable=False, error="recipient has no WeCom robot URL")
        body = {"msgtype": "text", "text": {"content": msg.text}}
        outcome, resp = await post(client, url, json=body)
        return robot_outcome(outcome, resp, RATE_LIMITED)
