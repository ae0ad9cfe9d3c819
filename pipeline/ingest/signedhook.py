"""What the two signed-hook routes share (contract 2 for cameras, contract 6 for rapid-test instruments): the
JSON refusal and the check of ``X-Larder-Timestamp`` and ``X-Larder-Signature`` against the raw body.

One verifier so the two routes cannot drift apart on the window, the constant-time compare or the reason codes.
Each route still looks its sender up itself (camera or instrument: different header, code and registry).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from aiohttp import web
from aiokafka import AIOKafkaProducer

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


T = TypeVar("T")
Key = tuple[str, str]


class Seen(Protocol):
    """The hooks' de-duplication LRU of (sender, id), shared by both routes."""

    def __contains__(self, key: Key) -> bool: ...

    def add(self, key: Key) -> None: ...


def fresh_items(
    ok: Iterable[tuple[int, T]], seen: Seen, key_of: Callable[[T], Key], item_of: Callable[[T], dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[Key], int]:
    """The validated elements not seen before (by this process, or earlier in the same request) as topic items,
    with their keys (to add to ``seen`` once Kafka has them, not before: a failed produce must be retried) and
    the number of duplicates."""
    items: list[dict[str, Any]] = []
    keys: list[Key] = []
    in_request: set[Key] = set()
    duplicates = 0
    for _, element in ok:
        key = key_of(element)
        if key in seen or key in in_request:
            duplicates += 1
            continue
        in_request.add(key)
        keys.append(key)
        items.append(item_of(element))
    return items, keys, duplicates


async def store(
    producer: AIOKafkaProducer,
    batch: tuple[str, str, bytes, int] | None,
    deadletter_topic: str,
    dead_letters: list[bytes],
    sender: str,
) -> None:
    """Send one request's batch record ``(topic, key, value, partition)`` and its dead letters (keyed by the
    sender), then wait until Kafka (acks=all) has every one: a route answers 202/400 only after this returns."""
    futures = []
    if batch is not None:
        topic, key, value, partition = batch
        futures.append(await producer.send(topic, value, key=key.encode(), partition=partition))
    for value in dead_letters:
        futures.append(await producer.send(deadletter_topic, value, key=sender.encode()))
    for fut in futures:
        await fut


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
