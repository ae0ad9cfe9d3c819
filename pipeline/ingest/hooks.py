"""`larder hooks`: signed camera events (contract 2) -> kitchen-event record batches on Kafka.

``POST /v1/kitchen/events`` with ``X-Larder-Camera``, ``X-Larder-Timestamp`` and
``X-Larder-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>``.

* 401 ``{"error": reason_code, "reason": ...}``: unknown camera, missing/bad headers, a timestamp more than
  300 s from now, a wrong signature (compared in constant time). Nothing of an unauthenticated request is
  kept: it could be anyone's bytes.
* 400: the camera is authenticated but the body (or some events of it) is malformed. The bad parts go to the
  dead-letter topic with the reason; valid events of the same batch are still produced. The body lists
  ``rejected: [{index, reason_code, reason}]``.
* 202 ``{"accepted": n, "duplicates": d, "duplicate": bool}`` once every new event is in Kafka (acks=all).
  A replayed (camera, event_id) seen by this process is not produced again and answers 202 with
  ``duplicate: true``: the camera must stop retrying, and the worker's exact de-dup covers other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from pipeline.contracts.rapidtest import RAPID_TEST_PATH
from pipeline.contracts.records import kitchen_events_value
from pipeline.ingest import metrics
from pipeline.ingest.rapidhook import RapidTestRoute
from pipeline.ingest.registry import ReloadingRegistry
from pipeline.ingest.signedhook import authenticate, commit, fresh_items, partitions_of
from pipeline.ingest.signing import sign as sign  # re-exported: cameras' and tests' import path
from pipeline.ingest.validate import (
    BAD_TIMESTAMP,
    DEFAULT_TS_FLOOR_MS,
    FUTURE_TIMESTAMP,
    INVALID,
    MISSING_FIELD,
    Refused,
    batch_elements,
    describe,
    element_bytes,
    precheck,
    reason_code_for,
)
from pipeline.partitioner import partition_for
from pipeline.producer import durable_producer
from pipeline.schemas import (
    HOOK_PATH,
    MAX_HOOK_BATCH,
    MAX_HOOK_BODY,
    CameraEvent,
    to_ms,
)
from pipeline.settings import Settings
from pipeline.topics import Topics

log = logging.getLogger(__name__)


class SeenEvents:
    """Bounded LRU of (camera, event_id): best-effort de-dup for one process."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __contains__(self, key: tuple[str, str]) -> bool:
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        return False

    def add(self, key: tuple[str, str]) -> None:
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)


def validate_events(
    body: bytes, now_ms: int, skew_ms: int, floor_ms: int = DEFAULT_TS_FLOOR_MS
) -> tuple[list[tuple[int, CameraEvent]], list[Refused]]:
    """Body -> ([(index, event)], [(index, reason_code, reason, bytes)]). Pure."""
    if (early := precheck(body)) is not None:
        return [], [(None, early.reason_code, early.reason, early.payload)]
    elements, bad = batch_elements(body, "events", MAX_HOOK_BATCH)
    ok: list[tuple[int, CameraEvent]] = []
    for index, element in elements:
        raw = body if index is None else element_bytes(element)
        try:
            event = CameraEvent.model_validate(element)
        except ValidationError as exc:
            first = exc.errors()[0]
            code = reason_code_for(first)
            if code == INVALID and "'count'" in first["msg"]:
                code = MISSING_FIELD
            bad.append((index, code, describe(first), raw))
            continue
        except ValueError as exc:  # model_post_init: person_count without count
            bad.append((index, MISSING_FIELD, str(exc), raw))
            continue
        ts_ms = to_ms(event.ts)
        if ts_ms < floor_ms:
            bad.append((index, BAD_TIMESTAMP, f"ts: before {floor_ms // 1000} (Unix seconds)", raw))
            continue
        if ts_ms > now_ms + skew_ms:
            bad.append((index, FUTURE_TIMESTAMP, f"ts: {ts_ms - now_ms} ms in the future", raw))
            continue
        ok.append((index if index is not None else 0, event))
    return ok, bad


class Hooks:
    def __init__(self, settings: Settings, registry: ReloadingRegistry, topics: Topics | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.topics = topics or Topics(prefix=settings.topic_prefix, partitions=settings.readings_partitions)
        self.seen = SeenEvents(settings.ingest.hooks_dedup_size)
        self.skew_ms = int(settings.ingest.future_skew_s * 1000)
        self.floor_ms = int(settings.ingest.ts_floor.timestamp() * 1000)
        self.producer: AIOKafkaProducer | None = None
        self.partitions = 0
        # Contract 6 (rapid-test instruments) shares this process, its producer, registry and de-dup LRU.
        self.rapid_tests = RapidTestRoute(self)

    def app(self) -> web.Application:
        # Bounded so that a request's record (and a dead letter of its body) stays under Kafka's default
        # message.max.bytes (1 MB); a larger body gets aiohttp's 413.
        app = web.Application(client_max_size=MAX_HOOK_BODY)
        app.router.add_post(HOOK_PATH, self.handle)
        app.router.add_post(RAPID_TEST_PATH, self.rapid_tests.handle)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.health)
        app.cleanup_ctx.append(self._producer_ctx)
        app.on_startup.append(self._on_startup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not in the main thread (tests)
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: self.registry.reload(force=True))

    async def _producer_ctx(self, app: web.Application) -> Any:
        self.producer = durable_producer(self.settings)
        await self.producer.start()
        self.partitions = await partitions_of(self.producer, self.topics.kitchen_events)
        await self.rapid_tests.start()
        yield
        await self.producer.stop()

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def handle(self, request: web.Request) -> web.Response:
        received_ms = int(time.time() * 1000)
        self.registry.reload()  # a stat() per request: new cameras work without a restart
        signed = await authenticate(request, "X-Larder-Camera", self.registry.current.cameras, "camera", received_ms)
        if isinstance(signed, web.Response):
            return signed
        camera, info, body = signed
        ok, bad = validate_events(body, received_ms, self.skew_ms, self.floor_ms)
        fresh = fresh_items(
            ok,
            self.seen,
            lambda event: (camera, event.event_id),
            lambda event: {
                "camera": camera,
                "site": info.site,
                "kitchen": info.kitchen,
                **event.model_dump(mode="json", exclude_none=True, exclude={"ts"}),
                "ts_ms": to_ms(event.ts),
                "received_ms": received_ms,
            },
        )
        batch = None
        if fresh.items:
            p = partition_for(info.kitchen, self.partitions)
            batch = (self.topics.kitchen_events, info.kitchen, kitchen_events_value(fresh.items), p)
            metrics.BATCH_SIZE.labels("hook").observe(len(fresh.items))
        return await commit(
            self, batch, fresh, bad, source="hook", sender=("camera", camera), received_ms=received_ms, what="events"
        )


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    registry = ReloadingRegistry(settings.site_config)
    hooks = Hooks(settings, registry)
    host = host or settings.ingest.hooks_host
    port = port if port is not None else settings.ingest.hooks_port
    web.run_app(hooks.app(), host=host, port=port, print=lambda m: log.info("%s", m), access_log=None)
