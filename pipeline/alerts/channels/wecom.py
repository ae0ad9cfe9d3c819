"""WeCom (企业微信) group robot: ``POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...``.

Body ``{"msgtype": "text", "text": {"content": ...}}``; the answer is HTTP 200 with ``errcode`` (0 delivered,
45009 "api freq out of limit" retried, anything else refused). No signing beyond the key in the URL and no
idempotency key: at-least-once.
"""

from __future__ import annotations

from pipeline.alerts.channels.base import RobotChannel
from pipeline.siteconfig import Recipient


class WeCom(RobotChannel):
    name = "wecom"
    missing = "recipient has no WeCom robot URL"
    rate_limited = frozenset({45009})

    def address(self, recipient: Recipient) -> str | None:
        return recipient.wecom
