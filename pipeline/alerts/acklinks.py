"""Signed, expiring acknowledgement links, short enough for an SMS.

A token names one message (``message_id``, 8 bytes) and an expiry (Unix seconds, 4 bytes) and carries a
truncated HMAC-SHA256 over both (12 bytes = 96 bits) keyed with ``settings.ack_key``: 32 URL-safe characters.
Forging one needs the key; an expired one is refused by time; a used one is refused because the API remembers
the ids of used tokens (rebuilt from the acks topic, which records ``token_id``). The token authorises
acknowledging the alerts of *that* message on behalf of *its* recipient, nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from dataclasses import dataclass
from enum import StrEnum

_MAC_BYTES = 12


class TokenError(StrEnum):
    MALFORMED = "malformed"
    FORGED = "forged"
    EXPIRED = "expired"


class InvalidToken(ValueError):
    def __init__(self, reason: TokenError) -> None:
        self.reason = reason
        super().__init__(f"ack link is {reason.value}")


@dataclass(frozen=True)
class LinkClaims:
    message_id: str
    expires_s: int


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, b"larder-ack-v1|" + body, hashlib.sha256).digest()[:_MAC_BYTES]


def issue(key: str, message_id: str, expires_s: int) -> str:
    if not (message_id.startswith("m") and len(message_id) == 17):
        raise ValueError(f"not a message id: {message_id!r}")
    body = bytes.fromhex(message_id[1:]) + struct.pack(">I", expires_s)
    return base64.urlsafe_b64encode(body + _mac(key.encode(), body)).decode().rstrip("=")


def verify(key: str, token: str, now_s: float) -> LinkClaims:
    """The claims of a genuine, unexpired token; raises :class:`InvalidToken` otherwise.

    The signature is checked before the expiry so a forged token is always reported as forged.
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        raise InvalidToken(TokenError.MALFORMED) from None
    if len(raw) != 8 + 4 + _MAC_BYTES:
        raise InvalidToken(TokenError.MALFORMED)
    body, mac = raw[:12], raw[12:]
    if not hmac.compare_digest(mac, _mac(key.encode(), body)):
        raise InvalidToken(TokenError.FORGED)
    (expires,) = struct.unpack(">I", body[8:])
    if now_s >= expires:
        raise InvalidToken(TokenError.EXPIRED)
    return LinkClaims("m" + body[:8].hex(), expires)


def reply_code(message_id: str) -> str:
    """The code people text back ("ACK 3f9k2a"): the message id's first 6 hex digits."""
    return message_id[1:7].upper()
