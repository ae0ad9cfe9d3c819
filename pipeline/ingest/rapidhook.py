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

from pipeline.contracts.rapidtest import enrich, validate_results
from pipeline.contracts.records import rapid_tests_value
from pipeline.ingest.registry import ReloadingRegistry
from pipeline.ingest.signedhook import HookHost, authenticate, commit, fresh_items, partitions_of
from pipeline.partitioner import partition_for


class RouteHost(HookHost, Protocol):
    """What this route uses of :class:`pipeline.ingest.hooks.Hooks` besides what :func:`commit` does."""

    @property
    def registry(self) -> ReloadingRegistry: ...

    @property
    def skew_ms(self) -> int: ...


log = logging.getLogger(__name__)


class RapidTestRoute:
    def __init__(self, hooks: RouteHost) -> None:
        self.hooks = hooks
        self.partitions = 0

    async def start(self) -> None:
        """Called by the hooks' producer context once the producer runs: the topic must exist."""
        self.partitions = await partitions_of(self.hooks.producer, self.hooks.topics.rapid_tests)

    async def handle(self, request: web.Request) -> web.Response:
        hooks = self.hooks
        received_ms = int(time.time() * 1000)
        hooks.registry.reload()
        signed = await authenticate(
            request, "X-Larder-Instrument", hooks.registry.current.instruments, "instrument", received_ms
        )
        if isinstance(signed, web.Response):
            return signed
        instrument, info, body = signed
        ok, bad = validate_results(body, received_ms, hooks.skew_ms)
        fresh = fresh_items(
            ok,
            hooks.seen,
            # The LRU is shared with cameras: a prefix keeps an instrument and a camera of one id apart.
            lambda result: (f"instrument:{instrument}", result.result_id),
            lambda result: enrich(
                result, instrument=instrument, instrument_type=info.type, site=info.site, received_ms=received_ms
            ),
        )
        # One record of the new results, keyed by site: the detector's state is per site.
        batch = None
        if fresh.items:
            p = partition_for(info.site, self.partitions)
            batch = (hooks.topics.rapid_tests, info.site, rapid_tests_value(fresh.items), p)
        return await commit(
            hooks,
            batch,
            fresh,
            bad,
            source="rapid_test",
            sender=("instrument", instrument),
            received_ms=received_ms,
            what="results",
        )
