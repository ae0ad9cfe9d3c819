"""``POST /v1/rapid-tests`` (contract 6): signed rapid-test results -> record batches on the rapid-tests topic.

Signed exactly like contract 2, with the instrument in place of the camera:
``X-Larder-Instrument``, ``X-Larder-Timestamp`` (Unix seconds, within 300 s of now) and
``X-Larder-Signature: sha256=<hex HMAC-SHA256(instrument secret, "<timestamp>.<raw body>")>``.

* 415 when the request does not say ``Content-Type: application/json`` (nothing is read or kept).
* 401 ``{"error", "reason"}``: unknown instrument, bad/stale timestamp, wrong signature. Nothing is kept.
* 400: authenticated, but the body (or some results of a batch) is malformed: those go to the dead-letter topic
  with the reason (``instrument`` set), the valid ones are still produced; ``rejected`` lists them.
* 202 ``{"accepted", "duplicates", "duplicate"}`` once every new result is in Kafka (acks=all). A replayed
  (instrument, result_id) is not produced again (``duplicate: true``); the worker de-duplicates across
  processes by result id too.

The route lives here and is mounted by :class:`pipeline.ingest.hooks.Hooks`, which owns the producer, the
registry and the de-duplication LRU.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.contracts.rapidtest import enrich, validate_results
from pipeline.contracts.records import rapid_tests_value, refusal_dead_letters
from pipeline.ingest.registry import ReloadingRegistry
from pipeline.ingest.signedhook import Seen, answer, fresh_items, read_signed, store
from pipeline.ingest.signedhook import refuse as _refuse
from pipeline.partitioner import partition_for
from pipeline.topics import Topics


class HookHost(Protocol):
    """What the route uses of :class:`pipeline.ingest.hooks.Hooks`, which mounts it (no import of that module:
    it imports this one)."""

    @property
    def producer(self) -> AIOKafkaProducer | None: ...

    @property
    def topics(self) -> Topics: ...

    @property
    def registry(self) -> ReloadingRegistry: ...

    @property
    def seen(self) -> Seen: ...

    @property
    def skew_ms(self) -> int: ...

log = logging.getLogger(__name__)


class RapidTestRoute:
    def __init__(self, hooks: HookHost) -> None:
        self.hooks = hooks
        self.partitions = 0

    async def start(self) -> None:
        """Called by the hooks' producer context once the producer runs: the topic must exist."""
        assert self.hooks.producer is not None
        topic = self.hooks.topics.rapid_tests
        parts = await self.hooks.producer.partitions_for(topic)
        if not parts:
            raise RuntimeError(f"topic {topic} does not exist; run `larder stack up`")
        self.partitions = len(parts)

    async def handle(self, request: web.Request) -> web.Response:
        hooks = self.hooks
        received_ms = int(time.time() * 1000)
        if request.content_type != "application/json":
            return _refuse(415, "unsupported_media_type", "send the result with Content-Type: application/json")
        hooks.registry.reload()
        instrument = request.headers.get("X-Larder-Instrument", "")
        info = hooks.registry.current.instruments.get(instrument)
        if info is None:
            return _refuse(401, "unknown_instrument", "X-Larder-Instrument names no instrument in the site file")
        body = await read_signed(request, info.secret, received_ms)
        if isinstance(body, web.Response):
            return body

        ok, bad = validate_results(body, received_ms, hooks.skew_ms)
        fresh, keys, duplicates = fresh_items(
            ok,
            hooks.seen,
            # The LRU is shared with cameras: a prefix keeps an instrument and a camera of one id apart.
            lambda result: (f"instrument:{instrument}", result.result_id),
            lambda result: enrich(
                result, instrument=instrument, instrument_type=info.type, site=info.site, received_ms=received_ms
            ),
        )
        # One record of the new results, keyed by site: the detector's state is per site.
        site = info.site
        batch = None
        if fresh:
            batch = (hooks.topics.rapid_tests, site, rapid_tests_value(fresh), partition_for(site, self.partitions))
        dead = refusal_dead_letters(bad, source="hook", arrived_ms=received_ms, instrument=instrument)
        try:
            assert hooks.producer is not None
            await store(hooks.producer, batch, hooks.topics.deadletter, dead, instrument)
        except KafkaError as exc:
            log.warning("Kafka did not take rapid-test results from %s: %s", instrument, exc)
            return _refuse(503, "kafka_unavailable", "the results are not stored yet; send the request again")
        for key in keys:
            hooks.seen.add(key)
        return answer("rapid_test", len(fresh), duplicates, bad)
