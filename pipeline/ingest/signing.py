"""The signature of signed hooks (contract 2 for cameras, contract 6 for rapid-test instruments)."""

from __future__ import annotations

import hashlib
import hmac


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value: ``sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`` (also what
    cameras, instruments, replay and tests compute)."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
