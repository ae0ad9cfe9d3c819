"""A small read-only JSON endpoint over the grading states (``larder grade serve``), for the console.

The states come from the grading table's changelog (:func:`pipeline.grading.store.read_states`), re-read at
most every ``refresh_s`` seconds; grades and rollups are computed per request as of ``as_of`` (RFC 3339;
default the latest event seen). Listens on 127.0.0.1 only: put it behind the console's own authentication.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from pipeline import serde
from pipeline.grading import rollup, store
from pipeline.grading.evidence import SiteEvidence, iso_ms
from pipeline.grading.score import Weights
from pipeline.grading.topics import GradingTopics
from pipeline.settings import Settings
from pipeline.siteconfig import SiteConfig


class _States:
    def __init__(self, settings: Settings, gt: GradingTopics, refresh_s: float) -> None:
        self.settings, self.gt, self.refresh_s = settings, gt, refresh_s
        self.states: dict[str, SiteEvidence] = {}
        self.read_at = 0.0
        self.lock = asyncio.Lock()
        #: Answers computed from the current states, by request (a rollup over 10,000 sites takes seconds of
        #: CPU; the console asks the same few questions again and again). Emptied when the states are re-read.
        self.memo: dict[tuple[str, ...], Any] = {}

    async def get(self) -> dict[str, SiteEvidence]:
        async with self.lock:
            if time.monotonic() - self.read_at >= self.refresh_s:
                self.states = await store.read_states(self.settings, self.gt)
                self.read_at = time.monotonic()
                self.memo = {}
            return self.states


def make_web_app(
    settings: Settings, gt: GradingTopics, cfg: SiteConfig, weights: Weights, refresh_s: float = 5.0
) -> web.Application:
    cache = _States(settings, gt, refresh_s)

    def as_of(request: web.Request, states: dict[str, SiteEvidence]) -> int:
        raw = request.query.get("as_of")
        if raw is None:
            return store.latest_event_ms(states)
        try:
            return iso_ms(raw)
        except ValueError:
            raise web.HTTPBadRequest(text=f"as_of {raw!r} is not an RFC 3339 time") from None

    async def all_grades(request: web.Request) -> web.Response:
        states = await cache.get()
        at = as_of(request, states)
        key = ("grades", str(at))
        if key not in cache.memo:
            cache.memo[key] = serde.dumps(
                [g.model_dump(mode="json") for g in store.grades(states, cfg, at, weights=weights)]
            )
        return _raw(cache.memo[key])

    async def one_grade(request: web.Request) -> web.Response:
        site = request.match_info["site"]
        if site not in cfg.sites:
            raise web.HTTPNotFound(text=f"no site {site!r}")
        states = await cache.get()
        at = as_of(request, states)
        return _json(store.grades(states, cfg, at, [site], weights)[0].model_dump(mode="json"))

    async def rollups(request: web.Request) -> web.Response:
        level = request.query.get("level", "station")
        period = request.query.get("period", "day")
        if level not in ("station", "district") or period not in rollup.PERIOD_MS:
            raise web.HTTPBadRequest(text="level: station|district, period: day|week|month")
        states = await cache.get()
        at = as_of(request, states)
        key = ("rollup", level, period, str(at))
        if key not in cache.memo:
            cache.memo[key] = serde.dumps(rollup.rollup(states, cfg, at, period, level, weights))  # type: ignore[arg-type]
        return _raw(cache.memo[key])

    app = web.Application()
    app.router.add_get("/v1/grades", all_grades)
    app.router.add_get("/v1/grades/{site}", one_grade)
    app.router.add_get("/v1/rollup", rollups)
    return app


def _json(value: Any) -> web.Response:
    return _raw(serde.dumps(value))


def _raw(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")
