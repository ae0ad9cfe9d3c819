"""What the two signed-hook routes share (contract 2 for cameras, contract 6 for rapid-test instruments): the
JSON refusal and the check of ``X-Larder-Timestamp`` and ``X-Larder-Signature`` against the raw body.

One verifier so the two routes cannot drift apart on the window, the constant-time compare or the reason codes.
Each route still looks its sender up itself (camera or instrument: different header, code and registry).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol, TypeVar

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.contracts.records import refusal_dead_letters
from pipeline.ingest import metrics
from pipeline.ingest.signing import sign
from pipeline.ingest.validate import Refused
from pipeline.schemas import HOOK_TIMESTAMP_WINDOW_S
from pipeline.topics import Topics

log = logging.getLogger(__name__)


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


class Fresh(NamedTuple):
    items: list[dict[str, Any]]
    keys: list[Key]
    duplicates: int


def fresh_items(
    ok: Iterable[tuple[int, T]], seen: Seen, key_of: Callable[[T], Key], item_of: Callable[[T], dict[str, Any]]
) -> Fresh:
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
    return Fresh(items, keys, duplicates)


class HookHost(Protocol):
    """What the routes use of :class:`pipeline.ingest.hooks.Hooks`, which owns the producer, the topics and the
    de-duplication LRU and mounts both routes (no import of that module: it imports the routes)."""

    @property
    def producer(self) -> AIOKafkaProducer | None: ...

    @property
    def topics(self) -> Topics: ...

    @property
    def seen(self) -> Seen: ...


async def partitions_of(producer: AIOKafkaProducer | None, topic: str) -> int:
    """The partition count of ``topic`` (a route produces to explicit partitions); it must exist already."""
    assert producer is not None
    parts = await producer.partitions_for(topic)
    if not parts:
        raise RuntimeError(f"topic {topic} does not exist; run `larder stack up`")
    return len(parts)


async def commit(
    host: HookHost,
    batch: tuple[str, str, bytes, int] | None,
    fresh: Fresh,
    bad: list[Refused],
    *,
    source: str,
    sender: tuple[str, str],
    received_ms: int,
    what: str,
) -> web.Response:
    """Send one request's batch record ``(topic, key, value, partition)`` and the dead letters of its refused
    parts (naming the sender, ``("camera", id)`` or ``("instrument", id)``), wait until Kafka (acks=all) has
    every one, then remember the new keys and answer (:func:`answer`). If Kafka does not confirm, nothing is
    remembered and the answer is 503: the sender sends the request again (the same ids, de-duplicated)."""
    field, ident = sender
    dead = refusal_dead_letters(bad, source="hook", arrived_ms=received_ms, **{field: ident})
    t0 = time.perf_counter()
    try:
        assert host.producer is not None
        futures = []
        if batch is not None:
            topic, key, value, partition = batch
            futures.append(await host.producer.send(topic, value, key=key.encode(), partition=partition))
        for value in dead:
            futures.append(await host.producer.send(host.topics.deadletter, value, key=ident.encode()))
        for fut in futures:
            await fut
    except KafkaError as exc:
        log.warning("Kafka did not take %s from %s: %s", what, ident, exc)
        return refuse(503, "kafka_unavailable", f"the {what} are not stored yet; send the request again")
    if futures:
        metrics.PRODUCE_SECONDS.labels(source).observe(time.perf_counter() - t0)
    for k in fresh.keys:
        host.seen.add(k)
    return answer(source, len(fresh.items), fresh.duplicates, bad)


class Sender(Protocol):
    """A camera or instrument of the registry: what signs its requests."""

    @property
    def secret(self) -> bytes: ...


S = TypeVar("S", bound=Sender)


async def authenticate(
    request: web.Request, header: str, senders: Mapping[str, S], kind: str, received_ms: int
) -> tuple[str, S, bytes] | web.Response:
    """(sender id, its registry entry, the raw body) of a JSON request signed by a sender the site file knows
    (``header`` names it; ``kind``: camera or instrument), or the refusal to answer: 415 for another content
    type (nothing is read), 401 ``unknown_<kind>``, or the 401s of :func:`read_signed`."""
    if request.content_type != "application/json":  # aiohttp strips "; charset=..."
        return refuse(
            415, "unsupported_media_type", f"Content-Type must be application/json, got {request.content_type}"
        )
    ident = request.headers.get(header, "")
    info = senders.get(ident)
    if info is None:
        return refuse(401, f"unknown_{kind}", f"{header} names no {kind} in the site configuration")
    body = await read_signed(request, info.secret, received_ms)
    if isinstance(body, web.Response):
        return body
    return ident, info, body


def answer(source: str, accepted: int, duplicates: int, bad: list[Refused]) -> web.Response:
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
