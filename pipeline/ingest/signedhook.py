"""What the two signed-hook routes share (contract 2 for cameras, contract 6 for rapid-test instruments): the
JSON refusal and the check of ``X-Larder-Timestamp`` and ``X-Larder-Signature`` against the raw body.

One verifier so the two routes cannot drift apart on the window, the constant-time compare or the reason codes.
Each route still looks its sender up itself (camera or instrument: different header, code and registry).
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from pipeline.ingest import metrics
from pipeline.ingest.signing import sign
from pipeline.schemas import HOOK_TIMESTAMP_WINDOW_S


def refuse(status: int, code: str, reason: str, **extra: Any) -> web.Response:
    """``{"error": code, "reason": reason, **extra}`` with ``status``, counted in the hooks' request metric."""
    metrics.HOOK_REQUESTS.labels(str(status)).inc()
    return web.json_response({"error": code, "reason": reason, **extra}, status=status)


async def read_signed(request: web.Request, secret: bytes, received_ms: int) -> bytes | web.Response:
    """The raw body once the timestamp is within the window and the signature matches; otherwise the 401 to
    answer (``bad_timestamp``, ``stale_timestamp`` or ``bad_signature``). The body is only read after the
    timestamp passed, and nothing of a refused request is kept: it could be anyone's bytes."""
    ts_header = request.headers.get("X-Larder-Timestamp", "")
    signature = request.headers.get("X-Larder-Signature", "")
    try:
        sent_s = float(ts_header)
    except ValueError:
        return refuse(401, "bad_timestamp", "X-Larder-Timestamp must be Unix seconds")
    if not abs(received_ms / 1000 - sent_s) <= HOOK_TIMESTAMP_WINDOW_S:
        return refuse(401, "stale_timestamp", f"X-Larder-Timestamp is more than {HOOK_TIMESTAMP_WINDOW_S} s from now")
    body = await request.read()
    expected = sign(secret, ts_header, body)
    # surrogateescape: aiohttp keeps undecodable header bytes as surrogates; such a header is a bad signature.
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "surrogateescape")):
        return refuse(401, "bad_signature", "X-Larder-Signature does not match the body and timestamp")
    return body


def answer(source: str, accepted: int, duplicates: int, bad: list[tuple[int | None, str, str, bytes]]) -> web.Response:
    """The answer once Kafka has the accepted items and the dead letters of ``bad`` (``source`` labels the
    metrics): 400 listing the ``rejected`` ones when any were bad, else 202 ``{accepted, duplicates, duplicate}``
    (``duplicate``: all of it was a replay, so the sender stops retrying)."""
    metrics.ACCEPTED.labels(source).inc(accepted)
    if duplicates:
        metrics.DUPLICATES.labels(source).inc(duplicates)
    for _, code, _, _ in bad:
        metrics.DEAD_LETTERED.labels(source, code).inc()
    if bad:
        rejected = [{"index": i, "reason_code": c, "reason": r} for i, c, r, _ in bad]
        return refuse(400, bad[0][1], bad[0][2], rejected=rejected, accepted=accepted, duplicates=duplicates)
    metrics.HOOK_REQUESTS.labels("202").inc()
    return web.json_response(
        {"accepted": accepted, "duplicates": duplicates, "duplicate": not accepted and duplicates > 0}, status=202
    )
