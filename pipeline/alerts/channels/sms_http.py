"""A generic HTTP SMS gateway: POST a JSON body made from a template, with an ``Idempotency-Key`` header.

Most Chinese and international SMS gateways take a JSON POST with a number, a text and often a client-side
message id; ``notify.sms_template`` shapes the body (string values may hold ``{to}``, ``{text}``, ``{id}``),
``notify.sms_url`` is the endpoint and ``notify.sms_token`` (optional) goes out as a Bearer token. The message id
goes in the body (if the template asks for it) and in ``Idempotency-Key``: a gateway that honours either
de-duplicates our retries.
"""

from __future__ import annotations

from typing import Any

import httpx

from pipeline import serde
from pipeline.alerts.channels.base import Outcome, OutMessage, SmsChannel, post
from pipeline.settings import NotifySettings
from pipeline.siteconfig import Recipient


def _fill(template: Any, values: dict[str, str]) -> Any:
    if isinstance(template, str):
        out = template
        for k, v in values.items():
            out = out.replace("{" + k + "}", v)
        return out
    if isinstance(template, dict):
        return {k: _fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, values) for v in template]
    return template


class HttpSms(SmsChannel):
    def __init__(self, settings: NotifySettings) -> None:
        try:
            self._template = serde.loads(settings.sms_template)
        except serde.JSONDecodeError as exc:
            raise ValueError(f"notify.sms_template is not JSON: {exc}") from None
        self._url = settings.sms_url
        self._token = settings.sms_token

    async def deliver(self, client: httpx.AsyncClient, msg: OutMessage, recipient: Recipient, to: str) -> Outcome:
        # Substituted after parsing, so a quote or newline in the text cannot break the JSON.
        body = _fill(self._template, {"to": to, "text": msg.text, "id": msg.message_id})
        headers = {"Idempotency-Key": msg.message_id, "Content-Type": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        outcome, _ = await post(client, self._url, content=serde.dumps(body), headers=headers)
        return outcome
