"""Signed JSON webhooks, the same scheme cameras use towards Larder (contract 2), pointed the other way.

Headers: ``X-Larder-Timestamp: <unix s>``, ``X-Larder-Signature: sha256=<hex HMAC-SHA256(secret,
"<timestamp>.<raw body>")>``, ``Idempotency-Key: <message id>`` (also ``message_id`` in the body). A receiver
checks the signature and the timestamp window and drops a repeated idempotency key. The secret is the
recipient's ``webhook_secret_ref`` or, failing that, ``notify.webhook_secret``.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx

from pipeline import serde
from pipeline.alerts.channels.base import AddressedChannel, Outcome, OutMessage, post
from pipeline.settings import NotifySettings
from pipeline.siteconfig import Recipient, SecretRef


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def recipient_secret(recipient: Recipient, default: str | None) -> str | None:
    if recipient.webhook_secret_ref:
        return SecretRef(secret_ref=recipient.webhook_secret_ref).resolve_secret()
    return default


class Webhook(AddressedChannel):
    name = "webhook"
    missing = "recipient has no webhook URL"

    def __init__(self, settings: NotifySettings) -> None:
        self._default = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None

    def address(self, recipient: Recipient) -> str | None:
        return recipient.webhook

    async def deliver(self, client: httpx.AsyncClient, msg: OutMessage, recipient: Recipient, to: str) -> Outcome:
        try:
            secret = recipient_secret(recipient, self._default)
        except (KeyError, OSError) as exc:
            return Outcome(False, retryable=False, error=f"webhook secret unavailable: {exc}")
        if not secret:
            return Outcome(
                False, retryable=False, error="no webhook secret (webhook_secret_ref or notify.webhook_secret)"
            )
        body = serde.dumps(msg.body or {"message_id": msg.message_id, "text": msg.text})
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Larder-Timestamp": ts,
            "X-Larder-Signature": sign(secret, ts, body),
            "Idempotency-Key": msg.message_id,
        }
        outcome, _ = await post(client, to, content=body, headers=headers)
        return outcome
