"""Helpers for the alert-delivery tests: local HTTP servers that play the SMS gateway, webhook receivers and
DingTalk/WeCom robots, services run as asyncio tasks, and Kafka/InfluxDB helpers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer
from influxdb_client import InfluxDBClient

from pipeline import serde, testing
from pipeline.schemas import Alert
from pipeline.settings import NotifySettings, Settings
from pipeline.siteconfig import SiteConfig

#: The phones of the operator and the site manager of sites S1 (acknowledges) and S2 (the control site) in the
#: escalation tests (end to end, and in the console's browser test).
PHONES = {
    ("S1", "operator"): "+8613800000011",
    ("S1", "site_manager"): "+8613800000012",
    ("S2", "operator"): "+8613800000021",
    ("S2", "site_manager"): "+8613800000022",
}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    def json(self) -> Any:
        return serde.loads(self.body)


@dataclass
class FakeHttp:
    """One aiohttp server on 127.0.0.1 that records every request and answers ``status`` (or a robot body).

    ``fail_until`` (monotonic seconds) makes it answer 500 until then. ``accepted`` maps idempotency keys to
    how many times a request with that key was answered 2xx: a real gateway would have sent that many texts.
    """

    robot: bool = False
    status: int = 200
    fail_until: float = 0.0
    requests: list[Received] = field(default_factory=list)
    accepted: dict[str, int] = field(default_factory=dict)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, req: web.Request) -> web.Response:
        body = await req.read()
        status = 500 if time.monotonic() < self.fail_until else self.status
        self.requests.append(Received(req.path_qs, dict(req.headers), body, time.monotonic(), status))
        if 200 <= status < 300:
            key = req.headers.get("Idempotency-Key") or hashlib.sha256(body).hexdigest()
            self.accepted[key] = self.accepted.get(key, 0) + 1
            if self.robot:
                return web.json_response({"errcode": 0, "errmsg": "ok"})
            return web.json_response({"id": key, "status": "queued"}, status=status)
        return web.json_response({"error": "gateway unavailable"}, status=status)

    async def start(self) -> FakeHttp:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def ok(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]

    def texts_to(self, phone: str) -> list[str]:
        return [r.json()["text"] for r in self.ok() if r.json().get("to") == phone]


def verify_webhook(secret: str, r: Received) -> bool:
    ts = r.headers["X-Larder-Timestamp"]
    want = "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + r.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, r.headers["X-Larder-Signature"])


LINK = re.compile(r"Ack: (\S+/a/([A-Za-z0-9_-]+))")


def link_in(text: str) -> tuple[str, str]:
    m = LINK.search(text)
    assert m, f"no ack link in {text!r}"
    return m.group(1), m.group(2)


def notify_settings(settings: Settings, **notify: Any) -> Settings:
    defaults: dict[str, Any] = {
        "group_window_s": 1.0,
        "backoff_s": 0.3,
        "backoff_max_s": 2.0,
        "http_timeout_s": 3.0,
        "attempts_before_fallback": 3,
    }
    group = NotifySettings.model_validate({**settings.notify.model_dump(), **defaults, **notify})
    return settings.model_copy(update={"notify": group})


def sites(spec: dict[str, Any]) -> SiteConfig:
    return SiteConfig.model_validate({"sites": spec})


def make_alert(site: str, subject: str, *, rule: str = "coldchain.high", severity: str = "warning") -> Alert:
    opened = time.time_ns() // 1_000_000
    return testing.open_alert(site, subject, opened, rule=rule, severity=severity, evidence={"temp_c": 9.5})


async def produce(settings: Settings, topic: str, records: list[tuple[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for key, value in records:
            data = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
            await producer.send_and_wait(topic, serde.dumps(data), key=key.encode())
    finally:
        await producer.stop()


class Service:
    """A long-running coroutine ``run(stop, ready)`` as a task, stopped cleanly."""

    def __init__(self, run: Callable[[asyncio.Event, asyncio.Event], Coroutine[Any, Any, Any]]) -> None:
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.task: asyncio.Task[Any] = asyncio.create_task(run(self.stop, self.ready))

    async def started(self, timeout: float = 30) -> Service:
        done, _ = await asyncio.wait(
            [self.task, asyncio.create_task(self.ready.wait())], timeout=timeout, return_when="FIRST_COMPLETED"
        )
        if self.task in done:
            self.task.result()  # raises what killed it
        assert self.ready.is_set(), "service did not become ready"
        return self

    async def close(self, timeout: float = 20) -> Any:
        self.stop.set()
        return await asyncio.wait_for(self.task, timeout=timeout)


def flux(settings: Settings, query: str) -> list[dict[str, Any]]:
    i = settings.influx
    with InfluxDBClient(url=i.base_url, token=i.token_value(), org=i.org, timeout=30_000) as client:
        tables = client.query_api().query(query)
    return [rec.values for t in tables for rec in t.records]
