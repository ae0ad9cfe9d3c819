"""Twilio's Messages REST API: ``POST {base}/2010-04-01/Accounts/{sid}/Messages.json`` (form: To, From, Body).

Basic auth with the account SID and auth token. ``notify.sms_url`` is the API base (``https://api.twilio.com``,
or a local fake in tests). Twilio's create-message call has no idempotency key, so this driver is
at-least-once: a crash between Twilio's 201 and our ledger record resends once (docs/alerts.md).
"""

from __future__ import annotations

import httpx

from pipeline.alerts.channels.base import Outcome, OutMessage, SmsChannel, post
from pipeline.settings import NotifySettings
from pipeline.siteconfig import Recipient


class TwilioSms(SmsChannel):
    def __init__(self, settings: NotifySettings) -> None:
        if not settings.twilio_account_sid or settings.twilio_auth_token is None or not settings.twilio_from:
            raise ValueError("the twilio SMS driver needs notify.twilio_account_sid, twilio_auth_token, twilio_from")
        base = settings.sms_url.rstrip("/")
        self._url = f"{base}/2010-04-01/Accounts/{settings.twilio_account_sid}/Messages.json"
        self._auth = (settings.twilio_account_sid, settings.twilio_auth_token.get_secret_value())
        self._from = settings.twilio_from

    async def deliver(self, client: httpx.AsyncClient, msg: OutMessage, recipient: Recipient, to: str) -> Outcome:
        outcome, _ = await post(
            client, self._url, data={"To": to, "From": self._from, "Body": msg.text}, auth=self._auth
        )
        return outcome
