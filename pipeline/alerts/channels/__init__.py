"""Delivery channels: each turns one message into one HTTP request and classifies the answer.

Retries, backoff, fallback and the ledger are the notifier's (:mod:`pipeline.alerts.delivery_log` and
:mod:`pipeline.alerts.notifier`); a channel only says whether an attempt worked and whether trying again could
help.
"""

from __future__ import annotations

from pipeline.alerts.channels.base import Channel, Outcome, OutMessage
from pipeline.settings import NotifySettings

__all__ = ["Channel", "OutMessage", "Outcome", "build_channels"]


def build_channels(settings: NotifySettings) -> dict[str, Channel]:
    """One instance per channel name, with the configured SMS driver."""
    from pipeline.alerts.channels.dingtalk import DingTalk
    from pipeline.alerts.channels.sms_http import HttpSms
    from pipeline.alerts.channels.twilio import TwilioSms
    from pipeline.alerts.channels.webhook import Webhook
    from pipeline.alerts.channels.wecom import WeCom

    sms: Channel = TwilioSms(settings) if settings.sms_driver == "twilio" else HttpSms(settings)
    return {"sms": sms, "webhook": Webhook(settings), "dingtalk": DingTalk(settings), "wecom": WeCom(settings)}
