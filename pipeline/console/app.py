"""The console's web application (aiohttp): pages, the JSON API ``/api/v1/...`` and server-sent events.

Every request but ``/login``, ``/static`` and ``/healthz`` needs a session; every POST needs the session's CSRF
token; every alert, site and device is looked up inside the user's scope, so one outside it is a 404 exactly like
one that does not exist. Actions go to Kafka (acks=all) before the answer and are audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web
from aiokafka import AIOKafkaProducer
from markupsafe import Markup, escape
from pydantic import BaseModel, ValidationError

from pipeline import serde
from pipeline.alerts.kafkaio import read_to_end, tail
from pipeline.clock import Clock, WallClock
from pipeline.console import auth, charts, grades, users
from pipeline.console.model import AGE_BUCKETS, AlertView, ReadModel
from pipeline.console.records import AuditRecord, ResolutionRecord, VerdictRecord
from pipeline.console.reports import CONTENT_TYPES, DATE_PATTERN, SERVED, ReportIndex
from pipeline.console.series import Series
from pipeline.contracts import records as record_values
from pipeline.contracts.models import KitchenVerdict
from pipeline.detectors.kitchen import VerdictError, apply_verdict
from pipeline.grading import store
from pipeline.grading.evidence import Override
from pipeline.grading.topics import GradingTopics
from pipeline.httpbody import json_object
from pipeline.partitioner import partition_for
from pipeline.producer import durable_producer
from pipeline.schemas import Ack, ms_to_iso
from pipeline.settings import Settings
from pipeline.siteconfig import Site, SiteConfig
from pipeline.topics import Topics

log = logging.getLogger("larder.console")
HERE = Path(__file__).parent
QUEUE_LIMIT = 200
#: Sites listed on the grades page, the riskiest first (all of them: the JSON API).
GRADES_SHOWN = 300
#: Where a cached site row of the grades page takes the session's CSRF token: raw ``<`` cannot come out of
#: escaped data, so only the template's own slot matches.
_CSRF_SLOT = "\x00<csrf>\x00"
SEVERITIES = ("critical", "warning", "info")
FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#13202e"/>'
    b'<path d="M5 3v10h6" stroke="#cfe0f2" stroke-width="2.2" fill="none"/></svg>'
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Principal:
    username: str
    user: users.User
    scope: frozenset[str]
    csrf: str


class Console:
    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        config: SiteConfig,
        users_path: Path,
        *,
        bucket: str | None = None,
        clock: Clock | None = None,
        secure_cookies: bool = False,
        trust_proxy: bool = False,
        login_limiter: auth.LoginLimiter | None = None,
        grades_refresh_s: float = 300.0,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.config = config
        self.users_path = users_path
        self.clock: Clock = clock or WallClock()
        self.sessions = auth.Sessions(auth.session_key(settings.state_dir), secure=secure_cookies)
        self.limiter = login_limiter or auth.LoginLimiter()
        self.trust_proxy = trust_proxy
        self.model = ReadModel(topics)
        self.series = Series(settings, bucket)
        self.bucket = bucket
        #: The daily records' ledger (reports and sign-offs topics), for the records pages.
        self.reports = ReportIndex()
        #: One sign-off at a time: each makes the next version of a day, and two at once would race for it.
        self._sign_lock = asyncio.Lock()
        self._users: users.UsersFile = users.load(users_path)
        self._users_mtime = self._mtime()
        self._scopes: dict[str, frozenset[str]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._stop = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None
        self.grading = grades.GradingBoard(settings, topics, config, self.clock, refresh_s=grades_refresh_s)
        self._grading_task: asyncio.Task[None] | None = None
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True
        )
        self.env.filters["iso"] = lambda ms: ms_to_iso(ms) if ms else ""
        self.env.filters["age"] = _age
        self.env.filters["local"] = _local
        self.env.globals["quote"] = quote
        self.device_of: dict[str, tuple[str, str]] = {d: (s, dev.asset) for d, s, dev in config.devices()}
        #: What the overview shows of each site that only the site file changes.
        self._site_static = {
            sid: (
                site.name or sid,
                site.station or "(no station)",
                site.district,
                len(site.devices),
                len(site.kitchens),
            )
            for sid, site in config.sites.items()
        }
        self.ready = asyncio.Event()
        self._cards: dict[str, tuple[tuple[Any, ...], Markup]] = {}
        self._card_template = self.env.get_template("_site_card.html")
        #: The grades page's rows, rendered once per snapshot (the snapshot they belong to, then the rows).
        self._grade_rows: tuple[object, dict[tuple[Any, ...], tuple[Markup, ...]]] = (None, {})
        self._unit_row_template = self.env.get_template("_grades_unit_row.html")
        self._site_row_template = self.env.get_template("_grades_site_row.html")

    # -- lifecycle ------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._headers, self._auth],  # type: ignore[list-item]  # bound methods; aiohttp's protocol
            client_max_size=64 * 1024,
        )
        r = app.router
        r.add_get("/healthz", self._health)
        r.add_get("/favicon.ico", self._favicon)
        r.add_get("/login", self._login_page)
        r.add_post("/login", self._login)
        r.add_post("/logout", self._logout)
        r.add_static("/static", HERE / "static", append_version=True)
        r.add_get("/", self._overview)
        r.add_get("/alerts", self._queue)
        r.add_get("/alerts/{alert_id}", self._alert)
        r.add_post("/alerts/{alert_id}/{action:ack|resolve|verdict}", self._act_form)
        r.add_get("/sites/{site}", self._site)
        r.add_get("/devices", self._devices)
        r.add_get("/grades", self._grades)
        r.add_post("/grades/{site}/override", self._override_form)
        r.add_get("/records", self._unsigned)
        r.add_get("/sites/{site}/records", self._records)
        r.add_get("/sites/{site}/records/{date}/v{version:[0-9]+}/{file}", self._record_file)
        r.add_post("/sites/{site}/records/{date}/sign", self._sign_form)
        r.add_get("/events", self._events)
        r.add_get("/api/v1/session", self._api_session)
        r.add_get("/api/v1/overview", self._api_overview)
        r.add_get("/api/v1/alerts", self._api_queue)
        r.add_get("/api/v1/alerts/{alert_id}", self._api_alert)
        r.add_post("/api/v1/alerts/{alert_id}/{action:ack|resolve|verdict}", self._act_api)
        r.add_get("/api/v1/sites/{site}", self._api_site)
        r.add_get("/api/v1/devices", self._api_devices)
        r.add_get("/api/v1/grades", self._api_grades)
        r.add_get("/api/v1/rollup", self._api_rollup)
        r.add_get("/api/v1/records/unsigned", self._api_unsigned)
        r.add_get("/api/v1/sites/{site}/records", self._api_records)
        r.add_get("/api/v1/sites/{site}/records/{date}/v{version:[0-9]+}/{file}", self._record_file)
        r.add_post("/api/v1/sites/{site}/records/{date}/sign", self._sign_api)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._end_streams)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _start(self, _app: web.Application) -> None:
        self._producer = durable_producer(self.settings)
        await self._producer.start()
        t = self.topics
        names = [t.deliveries, t.alerts, t.acks, t.annotations, t.verdicts, t.resolutions]
        names += [t.reports, t.report_signoffs]
        started = time.monotonic()

        def fold(rec: Any) -> None:
            if rec.topic in (t.reports, t.report_signoffs):
                self.reports.apply(rec.topic == t.reports, rec.key, rec.value)
            else:
                self.model.apply_record(rec.topic, rec.value)

        ends = await read_to_end(self.settings, names, fold)
        self.model.fix_early_messages()
        log.info(
            "read model rebuilt in %.1f s: %d alerts (%d open), %d messages",
            time.monotonic() - started,
            len(self.model.alerts),
            len(self.model.open_ids),
            len(self.model.messages),
        )
        self._follower = asyncio.create_task(self._follow(names, ends))
        if self.grading.refresh_s > 0:
            self._grading_task = asyncio.create_task(self.grading.run(self._stop))
        self.ready.set()

    async def _follow(self, names: list[str], start: dict) -> None:  # type: ignore[type-arg]
        async for records in tail(self.settings, names, start, self._stop, timeout_ms=100):
            changed: list[str] = []
            for rec in records:
                if rec.topic in (self.topics.reports, self.topics.report_signoffs):
                    self.reports.apply(rec.topic == self.topics.reports, rec.key, rec.value)
                    continue
                aid = self.model.apply_record(rec.topic, rec.value)
                if aid:
                    changed.append(aid)
            for aid in dict.fromkeys(changed):
                self.model.publish(aid)

    async def _end_streams(self, _app: web.Application) -> None:
        """Before aiohttp waits for running handlers: the event streams never end on their own."""
        self._stop.set()
        for q in list(self.model._listeners):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait("")

    async def _cleanup(self, _app: web.Application) -> None:
        await self._end_streams(_app)
        for task in (self._follower, self._grading_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, timeout=5)
        if self._producer is not None:
            await self._producer.stop()
        self.series.close()

    # -- users and scope ------------------------------------------------------------------------------------

    def _mtime(self) -> float:
        try:
            return self.users_path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _current_users(self) -> users.UsersFile:
        """The users file as it is now: a removed user or a changed role counts from the next request."""
        mtime = self._mtime()
        if mtime != self._users_mtime:
            try:
                self._users = users.load(self.users_path)
                self._scopes = {}
            except users.UsersFileError as exc:
                log.error("users file not reloaded (keeping the last good one): %s", exc)
            self._users_mtime = mtime
        return self._users

    def principal(self, req: web.Request) -> Principal | None:
        data = self.sessions.read(req.cookies.get(auth.COOKIE))
        if data is None:
            return None
        name = str(data["u"])
        user = self._current_users().users.get(name)
        if user is None:
            return None
        scope = self._scopes.get(name)
        if scope is None:
            scope = self._scopes[name] = user.scope(self.config)
        return Principal(name, user, scope, str(data["c"]))

    def remote(self, req: web.Request) -> str:
        if self.trust_proxy and "X-Forwarded-For" in req.headers:
            return req.headers["X-Forwarded-For"].split(",")[0].strip()
        return req.remote or ""

    # -- middlewares ----------------------------------------------------------------------------------------

    @web.middleware
    async def _headers(self, req: web.Request, handler: Handler) -> web.StreamResponse:
        resp = await handler(req)
        h = resp.headers
        h.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        )
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "same-origin")
        if not req.path.startswith("/static/"):
            h.setdefault("Cache-Control", "no-store")
        return resp

    @web.middleware
    async def _auth(self, req: web.Request, handler: Handler) -> web.StreamResponse:
        path = req.path
        if path in ("/login", "/healthz", "/favicon.ico") or path.startswith("/static/"):
            return await handler(req)
        p = self.principal(req)
        api = path.startswith("/api/")
        if p is None:
            if api or path == "/events":
                return web.json_response({"error": "log in first (POST /login)"}, status=401)
            if req.method != "GET":
                raise web.HTTPSeeOther("/login")
            raise web.HTTPSeeOther("/login?" + urlencode({"next": req.path_qs}))
        req["principal"] = p
        if req.method == "POST":
            given = req.headers.get("X-CSRF-Token")
            if given is None and req.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
                given = str((await req.post()).get("csrf", ""))
            if not auth.csrf_ok({"c": p.csrf}, given):
                await self.audit(req, p, "csrf_refused", ok=False, detail={"path": path})
                if api:
                    return web.json_response({"error": "missing or wrong CSRF token (X-CSRF-Token)"}, status=403)
                return self.page(
                    req,
                    "error.html",
                    status=403,
                    title="Refused",
                    message="The form was stale or forged (CSRF token missing or wrong). Reload and try again.",
                )
        return await handler(req)

    # -- rendering ------------------------------------------------------------------------------------------

    def page(self, req: web.Request, template: str, *, status: int = 200, **ctx: Any) -> web.Response:
        p: Principal | None = req.get("principal")
        text = self.env.get_template(template).render(
            me=p, csrf=p.csrf if p else "", path=req.path, now_ms=self.clock.now_ms(), **ctx
        )
        return web.Response(status=status, text=text, content_type="text/html")

    def not_found(self, req: web.Request) -> web.Response:
        if req.path.startswith("/api/"):
            return web.json_response({"error": "not found"}, status=404)
        return self.page(req, "error.html", status=404, title="Not found", message="There is nothing here for you.")

    # -- audit ----------------------------------------------------------------------------------------------

    async def audit(
        self,
        req: web.Request,
        p: Principal | None,
        action: str,
        *,
        ok: bool = True,
        user: str = "",
        site: str = "",
        alert_id: str = "",
        detail: dict[str, Any] | None = None,
    ) -> None:
        rec = AuditRecord(
            at_ms=self.clock.now_ms(),
            user=(p.username if p else user)[:200],
            role=p.user.role if p else "",
            action=action,
            ok=ok,
            remote=self.remote(req),
            user_agent=req.headers.get("User-Agent", "")[:300],
            site=site,
            alert_id=alert_id,
            detail=detail or {},
        )
        await self._send(self.topics.audit, site or rec.user, rec)

    async def _feed_kitchen_rules(self, v: AlertView, vr: VerdictRecord) -> None:
        """The verdict again, for the worker's kitchen rules: in the kitchen's partition of the kitchen-events
        topic, so it is ordered with that kitchen's camera events (the verdicts topic is keyed by site, for
        the people and systems that account for it). Written after it, so a failure between the two leaves
        the accountable record; the user's retry writes both again (a repeated verdict changes nothing)."""
        kitchen = v.first.subject.split("/", 1)[-1]
        item = KitchenVerdict(
            kitchen=kitchen, site=v.site, alert_id=v.alert_id, verdict=vr.verdict, by=vr.by, at_ms=vr.at_ms
        )
        assert self._producer is not None
        topic = self.topics.kitchen_events
        partitions = await self._producer.partitions_for(topic)
        await self._producer.send_and_wait(
            topic,
            record_values.kitchen_verdicts_value([item.model_dump(mode="json")]),
            key=kitchen.encode(),
            partition=partition_for(kitchen, len(partitions)),
        )

    async def _send(self, topic: str, key: str, rec: BaseModel) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(topic, serde.dumps(rec.model_dump(mode="json")), key=key.encode())

    # -- login ----------------------------------------------------------------------------------------------

    async def _health(self, _req: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok" if self.ready.is_set() else "starting", "alerts": len(self.model.alerts)}
        )

    async def _favicon(self, _req: web.Request) -> web.Response:
        return web.Response(body=FAVICON, content_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    def _login_form(self, req: web.Request, *, status: int = 200, error: str = "", username: str = "") -> web.Response:
        cookie, token = self.sessions.login_token(req.cookies.get(auth.LOGIN_COOKIE))
        nxt = req.query.get("next", "/")
        resp = self.page(
            req, "login.html", status=status, error=error, login_token=token, next=_safe_next(nxt), username=username
        )
        resp.set_cookie(auth.LOGIN_COOKIE, cookie, max_age=3600, **self.sessions.cookie_args())
        return resp

    async def _login_page(self, req: web.Request) -> web.Response:
        return self._login_form(req)

    async def _login(self, req: web.Request) -> web.StreamResponse:
        form = await req.post()
        name, password = str(form.get("username", "")).strip()[:64], str(form.get("password", ""))
        remote = self.remote(req)
        if not self.sessions.login_token_ok(req.cookies.get(auth.LOGIN_COOKIE), str(form.get("login_token", ""))):
            await self.audit(req, None, "csrf_refused", ok=False, user=name, detail={"path": "/login"})
            return self._login_form(req, status=403, error="The login form expired. Please try again.")
        wait = self.limiter.retry_after(name, remote)
        if wait > 0:
            await self.audit(req, None, "login_limited", ok=False, user=name)
            resp = self._login_form(
                req,
                status=429,
                error=f"Too many wrong passwords. Try again in {int(wait // 60) + 1} min.",
                username=name,
            )
            resp.headers["Retry-After"] = str(int(wait) + 1)
            return resp
        # argon2 takes ~50 ms of CPU: in a thread, so logins do not stall the event streams.
        user = await asyncio.to_thread(users.verify, self._current_users(), name, password)
        if user is None:
            self.limiter.failed(name, remote)
            await self.audit(req, None, "login_failed", ok=False, user=name)
            return self._login_form(req, status=401, error="Wrong user name or password.", username=name)
        self.limiter.succeeded(name)
        cookie, csrf = self.sessions.issue(name)
        p = Principal(name, user, user.scope(self.config), csrf)
        await self.audit(req, p, "login")
        resp = web.HTTPSeeOther(_safe_next(str(form.get("next", "/"))))
        resp.set_cookie(auth.COOKIE, cookie, max_age=self.sessions.max_age_s, **self.sessions.cookie_args())
        resp.del_cookie(auth.LOGIN_COOKIE, path="/")
        return resp

    async def _logout(self, req: web.Request) -> web.StreamResponse:
        await self.audit(req, req["principal"], "logout")
        resp = web.HTTPSeeOther("/login")
        resp.del_cookie(auth.COOKIE, path="/")
        return resp

    # -- data (shared by pages and API) ---------------------------------------------------------------------

    def overview_data(self, p: Principal) -> dict[str, Any]:
        now = self.clock.now_ms()
        sites: dict[str, dict[str, Any]] = {}
        for sid in sorted(p.scope):
            name, station, district, n_dev, n_kit = self._site_static[sid]
            sites[sid] = {
                "site": sid,
                "name": name,
                "station": station,
                "district": district,
                "status": "ok",
                "open": {"critical": 0, "warning": 0, "info": 0},
                "devices": n_dev,
                "devices_offline": 0,
                "kitchens": n_kit,
                "kitchens_unattended": 0,
            }
        matrix = {s: {b: 0 for b, _ in AGE_BUCKETS} for s in SEVERITIES}
        (b1, l1), (b2, l2), (b3, l3), (b4, _) = AGE_BUCKETS  # inlined age_bucket: this loop runs per open alert
        offline: dict[str, set[str]] = {}
        unattended: dict[str, set[str]] = {}
        for site_id, sev, opened_ms, rule, subject in self.model.open_facts.values():
            row = sites.get(site_id)
            if row is None:
                continue  # outside the scope
            row["open"][sev] += 1
            age_s = (now - opened_ms) // 1000
            matrix[sev][b1 if age_s < l1 else b2 if age_s < l2 else b3 if age_s < l3 else b4] += 1
            if rule == "liveness.offline":
                offline.setdefault(site_id, set()).add(subject)
            elif rule.startswith("kitchen.unattended"):
                unattended.setdefault(site_id, set()).add(subject)
        for sid, row in sites.items():
            row["devices_offline"] = len(offline.get(sid, ()))
            row["kitchens_unattended"] = len(unattended.get(sid, ()))
            if row["open"]["critical"]:
                row["status"] = "critical"
            elif row["open"]["warning"] or row["devices_offline"]:
                row["status"] = "warning"
        stations: dict[str, list[dict[str, Any]]] = {}
        for row in sites.values():
            stations.setdefault(row["station"], []).append(row)
        return {
            "stations": [{"station": k, "sites": v} for k, v in sorted(stations.items())],
            "open_by_severity_and_age": matrix,
            "age_buckets": [b for b, _ in AGE_BUCKETS],
            "sites": len(sites),
            "devices_offline": sum(len(x) for x in offline.values()),
            "kitchens_unattended": sum(len(x) for x in unattended.values()),
        }

    def queue_data(self, p: Principal, q: dict[str, str]) -> dict[str, Any]:
        filters = {k: q.get(k, "") for k in ("severity", "rule", "site", "state", "retrospective")}
        filters["state"] = filters["state"] or "open"
        views = self.model.query(p.scope, **filters)
        now = self.clock.now_ms()
        return {
            "filters": filters,
            "total": len(views),
            "alerts": [v.summary(now) for v in views[:QUEUE_LIMIT]],
            "limit": QUEUE_LIMIT,
        }

    def _limits(self, site: str, device: str) -> list[charts.Limit]:
        from pipeline.siteconfig import resolve_device_rules

        try:
            r = resolve_device_rules(self.config, site, device)
        except Exception:  # a device removed from the site file since: no limits, the chart still draws
            return []
        out = []
        for label, rule, kind in (
            ("HH", r.high_high, "high"),
            ("H", r.high, "high"),
            ("L", r.low, "low"),
            ("LL", r.low_low, "low"),
        ):
            if rule.limit is not None:
                out.append(charts.Limit(label, rule.limit, kind))
        return out

    async def alert_data(self, v: AlertView) -> dict[str, Any]:
        now = self.clock.now_ms()
        messages = []
        for mid in v.messages:
            m = self.model.messages.get(mid)
            if m is None:
                continue
            d = m.planned
            last = m.closed or (m.attempts[-1] if m.attempts else None)
            messages.append(
                {
                    "message_id": mid,
                    "at": ms_to_iso(d.at_ms),
                    "role": d.role,
                    "recipient": d.recipient_name,
                    "steps": m.steps(v.alert_id),
                    "channels": d.channels,
                    "status": m.status,
                    "channel": last.channel if last else None,
                    "attempts": len(m.attempts),
                    "closed_at": ms_to_iso(m.closed.at_ms) if m.closed else None,
                    "error": m.closed.error if m.closed and m.closed.kind == "failed" else None,
                }
            )
        messages.sort(key=lambda x: str(x["at"]))
        data = v.summary(now) | {
            "transitions": [
                {
                    "state": t.state.value,
                    "at": ms_to_iso(t.at_ms),
                    "step": t.evidence.get("step"),
                    "by": t.evidence.get("by"),
                    "via": t.evidence.get("via"),
                    "reason": t.evidence.get("reason"),
                }
                for t in v.transitions
            ],
            "deliveries": messages,
            "acks": [a.model_dump(mode="json") | {"at": ms_to_iso(a.at_ms)} for a in v.acks],
            "verdicts": [x.model_dump(mode="json") | {"at": ms_to_iso(x.at_ms)} for x in v.verdicts],
            "resolution": (v.resolution.model_dump(mode="json") | {"at": ms_to_iso(v.resolution.at_ms)})
            if v.resolution
            else None,
            "takes_verdict": v.camera,
            "timezone": self.config.sites[v.site].timezone if v.site in self.config.sites else "UTC",
            "site_name": self.config.sites[v.site].name if v.site in self.config.sites else v.site,
        }
        return data

    async def alert_chart(self, v: AlertView) -> tuple[str, str]:
        """(SVG, asset label) of the subject device's temperature around the alert; empty for non-devices."""
        dev = v.first.subject
        if dev not in self.device_of:
            return "", ""
        site, asset = self.device_of[dev]
        now = self.clock.now_ms()
        end_at = v.resolved_ms or now
        # The excursion is shaded from when the breach began (evidence), not only from when the rule opened.
        breach = _ms(v.first.evidence.get("breach_since")) or v.opened_ms
        start = min(breach, v.opened_ms) - 3_600_000
        end = min(end_at + (30 * 60_000 if v.resolved_ms else 5 * 60_000), now + 60_000)
        points = await asyncio.to_thread(self.series.temperature, dev, start, end)
        tz = self.config.sites[site].timezone
        svg = charts.temperature_chart(
            points,
            start_ms=start,
            end_ms=end,
            limits=self._limits(site, dev),
            shade=(breach, end_at),
            marks=[(t.at_ms, t.state.value) for t in v.transitions if t.state.value in ("acknowledged", "escalated")],
            tz=tz,
            title=f"{asset} ({dev})",
        )
        return svg, f"{asset} · {dev}"

    async def site_data(self, sid: str) -> dict[str, Any]:
        site = self.config.sites[sid]
        now = self.clock.now_ms()
        latest, spark = await asyncio.gather(
            asyncio.to_thread(self.series.site_latest, sid, now),
            asyncio.to_thread(self.series.site_spark, sid, now - 86_400_000, now),
        )
        open_views = self.model.open_in([sid])
        by_subject: dict[str, list[AlertView]] = {}
        for v in open_views:
            by_subject.setdefault(v.first.subject, []).append(v)
        assets = []
        for aid, asset in site.assets.items():
            devices = []
            for did, dev in site.devices.items():
                if dev.asset != aid:
                    continue
                last = latest.get(did, {})
                alerts = by_subject.get(did, [])
                offline_alert = any(a.rule == "liveness.offline" for a in alerts)
                stale = not last or now - int(last.get("last_ms", 0)) > 2 * dev.interval_s * 1000
                limits = self._limits(sid, did)
                devices.append(
                    {
                        "device": did,
                        "temp_c": last.get("temp_c"),
                        "battery": last.get("battery"),
                        "last_ms": last.get("last_ms"),
                        "online": not (offline_alert or stale),
                        "alerts": [x.summary(now) for x in alerts],
                        "limits": [{"label": lim.label, "value": lim.value} for lim in limits],
                        "spark_svg": charts.sparkline(
                            spark.get(did, []),
                            start_ms=now - 86_400_000,
                            end_ms=now,
                            limits=[lim.value for lim in limits if lim.label in ("H", "L")],
                        ),
                    }
                )
            assets.append(
                {
                    "asset": aid,
                    "name": asset.name or aid,
                    "kind": asset.kind,
                    "profile": asset.profile,
                    "devices": devices,
                }
            )
        kitchens = []
        for kid, k in site.kitchens.items():
            alerts = by_subject.get(f"{sid}/{kid}", [])
            unattended = [a for a in alerts if a.rule.startswith("kitchen.unattended")]
            kitchens.append(
                {
                    "kitchen": kid,
                    "name": k.name or kid,
                    "state": "unattended" if unattended else ("alerts" if alerts else "ok"),
                    "alerts": [x.summary(now) for x in alerts],
                    "cameras": [c for c, cam in site.cameras.items() if cam.kitchen == kid],
                }
            )
        return _site_head(sid, site) | {
            "assets": assets,
            "kitchens": kitchens,
            "open_alerts": len(open_views),
            "series_error": self.series.error,
        }

    def devices_data(self, p: Principal) -> dict[str, Any]:
        now = self.clock.now_ms()
        rows = []
        for v in self.model.open_in(p.scope):
            if v.rule.startswith("liveness."):
                dev = v.first.subject
                _site, asset = self.device_of.get(dev, (v.site, ""))
                rows.append(v.summary(now) | {"device": dev, "asset": asset, "problem": v.rule.split(".", 1)[1]})
        rows.sort(key=lambda r: (r["site"], r["device"], r["rule"]))
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["problem"]] = counts.get(r["problem"], 0) + 1
        return {"devices": rows, "counts": counts}

    # -- pages ----------------------------------------------------------------------------------------------

    def _card(self, row: dict[str, Any]) -> Markup:
        """One site's card, rendered again only when what it shows changed (an overview of 1,000 sites would
        otherwise spend most of its time rendering the same cards)."""
        key = (
            row["status"],
            row["open"]["critical"],
            row["open"]["warning"],
            row["devices_offline"],
            row["kitchens_unattended"],
        )
        hit = self._cards.get(row["site"])
        if hit is not None and hit[0] == key:
            return hit[1]
        html = Markup(self._card_template.render(s=row))
        self._cards[row["site"]] = (key, html)
        return html

    async def _overview(self, req: web.Request) -> web.Response:
        data = self.overview_data(req["principal"])
        for st in data["stations"]:
            st["cards"] = Markup("").join(self._card(row) for row in st["sites"])
        return self.page(req, "overview.html", title="Overview", data=data)

    async def _queue(self, req: web.Request) -> web.Response:
        p: Principal = req["principal"]
        data = self.queue_data(p, dict(req.query))
        rules = sorted(set().union(*(self.model.rules_by_site.get(s, ()) for s in p.scope)))
        return self.page(req, "queue.html", title="Alert queue", data=data, rules=rules, sites=sorted(p.scope))

    def _view(self, req: web.Request) -> AlertView | None:
        return self.model.visible(req.match_info["alert_id"], req["principal"].scope)

    async def _alert(self, req: web.Request) -> web.Response:
        v = self._view(req)
        if v is None:
            return self.not_found(req)
        data = await self.alert_data(v)
        svg, label = await self.alert_chart(v)
        return self.page(
            req,
            "alert.html",
            title=f"{v.rule} · {v.site}",
            a=data,
            chart=svg,
            chart_label=label,
            series_error=self.series.error,
            notice=req.query.get("done", ""),
        )

    async def _site(self, req: web.Request) -> web.Response:
        sid = req.match_info["site"]
        if sid not in req["principal"].scope:
            return self.not_found(req)
        return self.page(req, "site.html", title=f"Site {sid}", s=await self.site_data(sid))

    async def _devices(self, req: web.Request) -> web.Response:
        return self.page(req, "devices.html", title="Device health", data=self.devices_data(req["principal"]))

    # -- risk grades and rollups (pipeline.console.grades) --------------------------------------------------

    def grades_data(self, p: Principal, level: str, period: str, limit: int | None = None) -> dict[str, Any]:
        """From the board's snapshot only (nothing is graded on request); ``limit``: the riskiest sites only."""
        snap = self.grading.snapshot
        if level not in grades.LEVELS or period not in grades.PERIODS:
            raise web.HTTPBadRequest(text="level: station or district; period: day, week or month")
        if snap is None:
            return {"as_of": None, "grades": [], "sites": 0, "rollup": [], "error": self.grading.error,
                    "level": level, "period": period}  # fmt: skip
        rows, total = grades.visible_rows(snap, p.scope, limit)
        return {
            "as_of": ms_to_iso(snap.as_of_ms),
            "level": level,
            "period": period,
            "grades": rows,
            "sites": total,
            "rollup": grades.visible_rollup(snap, p.user, self.config, level, period),
            "error": self.grading.error,
            "may_override": p.user.role in ("station", "district", "admin"),
        }

    def _level_period(self, req: web.Request, p: Principal) -> tuple[str, str]:
        default = "district" if p.user.role in ("district", "admin") else "station"
        return req.query.get("level", default), req.query.get("period", "day")

    def grade_rows(self, data: dict[str, Any], csrf: str) -> tuple[list[Markup], list[Markup]]:
        """The rollup and site rows of the grades page (``unit_rows``, ``site_rows``). Each row is rendered once
        per snapshot and reused by every request and user (a row does not depend on who looks; the override
        form's CSRF token is put in per request): at 10,000 sites the admin page's 500 district and 300 site rows
        cost ~170 ms of CPU to render, every time."""
        snap = self.grading.snapshot
        if self._grade_rows[0] is not snap:
            self._grade_rows = (snap, {})
        cache = self._grade_rows[1]
        units: list[Markup] = []
        for r in data["rollup"]:
            key: tuple[Any, ...] = ("unit", r["level"], r["period"], r[r["level"]])
            hit = cache.get(key)
            if hit is None:
                hit = cache[key] = (Markup(self._unit_row_template.render(r=r)),)
            units.append(hit[0])
        token = escape(csrf)
        sites: list[Markup] = []
        for g in data["grades"]:
            key = ("site", g["site"], data.get("may_override", False))
            hit = cache.get(key)
            if hit is None:
                html = self._site_row_template.render(g=g, may_override=key[2], csrf=Markup(_CSRF_SLOT))
                hit = cache[key] = tuple(Markup(part) for part in html.split(_CSRF_SLOT))
            sites.append(token.join(hit))
        return units, sites

    async def _grades(self, req: web.Request) -> web.Response:
        p: Principal = req["principal"]
        level, period = self._level_period(req, p)
        data = self.grades_data(p, level, period, limit=GRADES_SHOWN)
        units, sites = self.grade_rows(data, p.csrf)
        return self.page(
            req, "grades.html", title="Risk grades", data=data, notice=req.query.get("done", ""),
            unit_rows=units, site_rows=sites,
        )  # fmt: skip

    async def _api_grades(self, req: web.Request) -> web.Response:
        p: Principal = req["principal"]
        data = self.grades_data(p, *self._level_period(req, p))
        body = serde.dumps({k: data[k] for k in ("as_of", "sites", "grades", "error")})
        return web.Response(body=body, content_type="application/json")

    async def _api_rollup(self, req: web.Request) -> web.Response:
        p: Principal = req["principal"]
        level, period = self._level_period(req, p)
        data = self.grades_data(p, level, period)
        if req.query.get("format") == "csv":
            name = f"rollup-{level}-{period}-{(data['as_of'] or 'none')[:10]}.csv"
            return web.Response(
                text=grades.rollup_csv(data["rollup"]),
                content_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="{name}"'},
            )
        body = serde.dumps({k: data[k] for k in ("as_of", "level", "period", "rollup", "error")})
        return web.Response(body=body, content_type="application/json")

    async def _override_form(self, req: web.Request) -> web.StreamResponse:
        """A station, district or admin user overrides a site's grade (or clears an override) with a reason:
        published to the overrides topic for the grading worker, and audited."""
        p: Principal = req["principal"]
        site = req.match_info["site"]
        if site not in p.scope or p.user.role not in ("station", "district", "admin"):
            return await self._refuse(req, site=site[:100])
        form = await req.post()
        grade = str(form.get("grade", "")).strip() or None
        try:
            override = Override(
                site=site, grade=grade, reason=str(form.get("reason", "")).strip(), by=p.username,
                role=p.user.role, at_ms=self.clock.now_ms(),  # type: ignore[arg-type]
            )  # fmt: skip
        except ValidationError as exc:
            msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            level, period = self._level_period(req, p)
            data = self.grades_data(p, level, period, limit=GRADES_SHOWN)
            units, sites = self.grade_rows(data, p.csrf)
            return self.page(
                req, "grades.html", status=400, title="Risk grades", data=data, error=msg,
                unit_rows=units, site_rows=sites,
            )  # fmt: skip
        await store.publish_override(self.settings, GradingTopics(self.topics), override)
        await self.audit(req, p, "grade_override", site=site, detail={"grade": grade, "reason": override.reason})
        raise web.HTTPSeeOther(f"/grades?done={quote('override of ' + site + ' recorded')}")

    # -- actions --------------------------------------------------------------------------------------------

    async def _acknowledge(self, v: AlertView, p: Principal, note: str, now: int) -> Ack:
        """Publish (acks=all) an acknowledgement of ``v`` by ``p`` from the console and apply it to the model."""
        ack = Ack(
            alert_id=v.alert_id, site=v.site, by=p.username, role=p.user.role, via="console", note=note, at_ms=now
        )
        await self._send(self.topics.acks, v.site, ack)
        self.model.on_ack(ack)
        return ack

    async def act(
        self, req: web.Request, v: AlertView, action: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """Validate, publish (acks=all) and audit one action; (HTTP status, JSON answer)."""
        p: Principal = req["principal"]
        now = self.clock.now_ms()
        note = str(body.get("comment") or body.get("note") or "").strip()
        try:
            if action == "ack":
                if not note:
                    return 400, {"error": "a comment is required to acknowledge"}
                out: dict[str, Any] = (await self._acknowledge(v, p, note[:2000], now)).model_dump(mode="json")
            elif action == "resolve":
                res = ResolutionRecord(
                    alert_id=v.alert_id,
                    site=v.site,
                    by=p.username,
                    role=p.user.role,
                    corrective_action=str(body.get("corrective_action", "")).strip(),
                    disposition=str(body.get("disposition", "")),  # type: ignore[arg-type]
                    use_within_h=_num(body.get("use_within_h")),
                    quantity=_num(body.get("quantity")),
                    unit=str(body.get("unit", "")).strip(),
                    at_ms=now,
                )
                if not v.acknowledged:
                    # Resolving is owning: it stops the escalation exactly as an acknowledgement does.
                    await self._acknowledge(v, p, res.corrective_action, now)
                await self._send(self.topics.resolutions, v.site, res)
                self.model.on_resolution(res)
                out = res.model_dump(mode="json")
            else:
                verdict = str(body.get("verdict", ""))
                apply_verdict(v.latest, verdict, now, by=p.username)  # refuses a non-hygiene alert or verdict
                vr = VerdictRecord(
                    alert_id=v.alert_id,
                    site=v.site,
                    verdict=verdict,  # type: ignore[arg-type]
                    by=p.username,
                    role=p.user.role,
                    note=note[:2000],
                    at_ms=now,
                )
                await self._send(self.topics.verdicts, v.site, vr)
                await self._feed_kitchen_rules(v, vr)
                self.model.on_verdict(vr)
                out = vr.model_dump(mode="json")
        except VerdictError as exc:
            return 400, {"error": str(exc)}
        except ValidationError as exc:
            return 400, {"error": "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())}
        detail = {k: v2 for k, v2 in out.items() if k not in ("v", "alert_id", "site", "by", "role", "at_ms")}
        await self.audit(req, p, action, site=v.site, alert_id=v.alert_id, detail=detail)
        self.model.publish(v.alert_id)
        return 202, out

    async def _refuse(
        self, req: web.Request, *, site: str = "", alert_id: str = "", detail: dict[str, Any] | None = None
    ) -> web.Response:
        """Something outside the user's scope (or that does not exist): 404 like any unknown, audited as denied."""
        await self.audit(
            req,
            req["principal"],
            "denied",
            ok=False,
            site=site,
            alert_id=alert_id,
            detail={"path": req.path[:300], **(detail or {})},
        )
        return self.not_found(req)

    async def _denied(self, req: web.Request) -> web.Response:
        """An action on an alert that does not exist or is outside the user's scope."""
        return await self._refuse(req, alert_id=req.match_info["alert_id"][:100])

    async def _act_form(self, req: web.Request) -> web.StreamResponse:
        v = self._view(req)
        if v is None:
            return await self._denied(req)
        form = await req.post()
        action = req.match_info["action"]
        status, out = await self.act(req, v, action, {k: str(x) for k, x in form.items()})
        if status >= 400:
            data = await self.alert_data(v)
            svg, label = await self.alert_chart(v)
            return self.page(
                req,
                "alert.html",
                status=status,
                title=v.rule,
                a=data,
                chart=svg,
                chart_label=label,
                error=out["error"],
                series_error=self.series.error,
                notice="",
            )
        raise web.HTTPSeeOther(f"/alerts/{quote(v.alert_id)}?done={action}")

    async def _act_api(self, req: web.Request) -> web.Response:
        v = self._view(req)
        if v is None:
            return await self._denied(req)
        body = await json_object(req)
        if isinstance(body, web.Response):
            return body
        status, out = await self.act(req, v, req.match_info["action"], body)
        return web.json_response(out, status=status)

    # -- daily records (issue 21) ---------------------------------------------------------------------------

    def may_sign(self, p: Principal, site: str) -> bool:
        """Only the site's own food-safety officer (食品安全员) signs its daily record (users file flag)."""
        return p.user.food_safety_officer and p.user.role in ("operator", "site_manager") and site in p.scope

    def records_data(self, p: Principal, sid: str) -> dict[str, Any]:
        site = self.config.sites[sid]
        days = self.reports.site_rows(sid)
        for d in days:
            for v in d["versions"]:
                v["urls"] = {f: _record_url(sid, d["date"], v["version"], f) for f in (*v["files"], "manifest.json")}
        return _site_head(sid, site) | {
            "may_sign": self.may_sign(p, sid),
            "days": days,
            "unsigned": sum(1 for d in days if not d["signed"]),
        }

    def unsigned_data(self, p: Principal) -> dict[str, Any]:
        """The unsigned days of the user's sites, by station (what a 市场监管所 follows up)."""
        stations: dict[str, list[dict[str, Any]]] = {}
        rows = self.reports.unsigned(p.scope)
        for row in rows:
            name, station, district, _n_dev, _n_kit = self._site_static[row["site"]]
            row |= {"name": name, "station": station, "district": district}
            stations.setdefault(station, []).append(row)
        reported = sum(1 for sid in p.scope if self.reports.days.get(sid))
        return {
            "unsigned": len(rows),
            "sites_reported": reported,
            "stations": [{"station": k, "days": v} for k, v in sorted(stations.items())],
        }

    async def _records_denied(self, req: web.Request) -> web.Response:
        """A record of a site outside the user's scope (or none such)."""
        return await self._refuse(req, detail={"site": req.match_info.get("site", "")[:100]})

    async def _records(self, req: web.Request) -> web.Response:
        p: Principal = req["principal"]
        sid = req.match_info["site"]
        if sid not in p.scope:
            return await self._records_denied(req)
        return self.page(
            req,
            "records.html",
            title=f"Daily records · {sid}",
            r=self.records_data(p, sid),
            notice=req.query.get("done", ""),
            error="",
        )

    async def _unsigned(self, req: web.Request) -> web.Response:
        return self.page(req, "unsigned.html", title="Daily records to sign", data=self.unsigned_data(req["principal"]))

    async def _record_file(self, req: web.Request) -> web.StreamResponse:
        """One file of a stored version, checked against the ledger's SHA-256 before it is served."""
        p: Principal = req["principal"]
        sid, day_s, name = req.match_info["site"], req.match_info["date"], req.match_info["file"]
        if sid not in p.scope:
            return await self._records_denied(req)
        day = self.reports.day(sid, day_s) if DATE_PATTERN.match(day_s) else None
        rec = day.versions.get(int(req.match_info["version"])) if day else None
        if rec is None or name not in SERVED:
            return self.not_found(req)
        from pipeline.reports.ledger import sha256, version_dir

        path = version_dir(self.settings, sid, day_s, rec.version) / name
        try:
            data = await asyncio.to_thread(path.read_bytes)
            if name == "manifest.json":
                intact = serde.loads(data) == rec.model_dump(mode="json")
            else:
                intact = sha256(data) == rec.files.get(name)
        except (OSError, ValueError):
            data, intact = b"", False
        if not intact:
            # Evidence that does not match its ledger is never handed out as if it did.
            await self.audit(req, p, "record_damaged", ok=False, site=sid, detail={"path": req.path[:300]})
            message = f"The stored {name} of {rec.report_id} is missing or does not match its SHA-256 on the ledger. "
            message += f"Run `larder report verify --site {sid}`."
            if req.path.startswith("/api/"):
                return web.json_response({"error": message}, status=500)
            return self.page(req, "error.html", status=500, title="Record damaged", message=message)
        await self.audit(
            req, p, "record_download", site=sid, detail={"date": day_s, "version": rec.version, "file": name}
        )
        ctype, _, charset = CONTENT_TYPES[name].partition("; charset=")
        return web.Response(
            body=data,
            content_type=ctype,
            charset=charset or None,
            headers={"Content-Disposition": f'attachment; filename="{rec.report_id}-{name}"'},
        )

    async def sign(self, req: web.Request, sid: str, day_s: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The officer's sign-off ("reviewed"), through :func:`pipeline.reports.service.sign` as the CLI does:
        the sign-off on Kafka and InfluxDB, then the day's next version that shows it on its PDF."""
        from datetime import date

        from pipeline.reports import service

        p: Principal = req["principal"]
        if not self.may_sign(p, sid):
            await self.audit(req, p, "sign_refused", ok=False, site=sid, detail={"date": day_s})
            return 403, {"error": "only the site's food-safety officer (食品安全员) signs its daily records"}
        comment = str(body.get("comment", "")).strip()
        if len(comment) > 2000:
            return 400, {"error": "comment: at most 2,000 characters"}
        name = f"{p.user.name} ({p.username})" if p.user.name else p.username
        async with self._sign_lock:
            day = self.reports.day(sid, day_s)
            if day is None:
                return 404, {"error": "not found"}
            if day.signoffs:
                by = ", ".join(s.name for s in day.signed())
                return 409, {"error": f"{sid} {day_s} is signed already (by {by})"}
            now = self.clock.now_ms()

            def run() -> tuple[Any, Any]:
                # Its own thread and loop: making the new version renders a PDF (seconds of CPU) that must not
                # stall the event streams and the other users' requests.
                return asyncio.run(
                    service.sign(
                        self.settings,
                        sid,
                        date.fromisoformat(day_s),
                        name,
                        comment=comment,
                        via="console",
                        now_ms=now,
                        bucket=self.bucket,
                    )
                )

            try:
                signoff, outcome = await asyncio.to_thread(run)
            except service.ReportError as exc:
                await self.audit(req, p, "sign", ok=False, site=sid, detail={"date": day_s, "error": str(exc)})
                return 409, {"error": str(exc)}
            except Exception as exc:  # Kafka or InfluxDB away: say so, audited, keep serving
                log.exception("sign-off of %s %s failed", sid, day_s)
                await self.audit(req, p, "sign", ok=False, site=sid, detail={"date": day_s, "error": repr(exc)[:300]})
                return 503, {"error": f"the sign-off could not be completed ({type(exc).__name__}); try again"}
            self.reports.add(signoff)
            self.reports.add(outcome.record)
        await self.audit(
            req,
            p,
            "sign",
            site=sid,
            detail={
                "date": day_s,
                "name": signoff.name,
                "meaning": signoff.meaning,
                "reviewed_version": signoff.report_version,
                "reviewed_sha256": signoff.report_sha256,
                "new_version": outcome.record.version,
                "comment": comment,
            },
        )
        return 202, {"signoff": signoff.model_dump(mode="json"), "record": outcome.record.model_dump(mode="json")}

    async def _sign_form(self, req: web.Request) -> web.StreamResponse:
        p: Principal = req["principal"]
        sid, day_s = req.match_info["site"], req.match_info["date"]
        if sid not in p.scope:
            return await self._records_denied(req)
        form = await req.post()
        status, out = await self.sign(req, sid, day_s, {k: str(x) for k, x in form.items()})
        if status == 404:
            return self.not_found(req)
        if status >= 400:
            return self.page(
                req,
                "records.html",
                status=status,
                title=f"Daily records · {sid}",
                r=self.records_data(p, sid),
                notice="",
                error=out["error"],
            )
        raise web.HTTPSeeOther(f"/sites/{quote(sid)}/records?done=signed#d-{day_s}")

    async def _sign_api(self, req: web.Request) -> web.Response:
        p: Principal = req["principal"]
        sid, day_s = req.match_info["site"], req.match_info["date"]
        if sid not in p.scope:
            return await self._records_denied(req)
        body = await json_object(req)
        if isinstance(body, web.Response):
            return body
        status, out = await self.sign(req, sid, day_s, body)
        return web.json_response(out, status=status, dumps=_dumps)

    async def _api_records(self, req: web.Request) -> web.Response:
        p: Principal = req["principal"]
        sid = req.match_info["site"]
        if sid not in p.scope:
            return await self._records_denied(req)
        return web.json_response(self.records_data(p, sid), dumps=_dumps)

    async def _api_unsigned(self, req: web.Request) -> web.Response:
        return web.json_response(self.unsigned_data(req["principal"]), dumps=_dumps)

    # -- API ------------------------------------------------------------------------------------------------

    async def _api_session(self, req: web.Request) -> web.Response:
        p: Principal = req["principal"]
        return web.json_response({"user": p.username, "role": p.user.role, "sites": sorted(p.scope), "csrf": p.csrf})

    async def _api_overview(self, req: web.Request) -> web.Response:
        return web.json_response(self.overview_data(req["principal"]), dumps=_dumps)

    async def _api_queue(self, req: web.Request) -> web.Response:
        return web.json_response(self.queue_data(req["principal"], dict(req.query)), dumps=_dumps)

    async def _api_alert(self, req: web.Request) -> web.Response:
        v = self._view(req)
        if v is None:
            return self.not_found(req)
        return web.json_response(await self.alert_data(v), dumps=_dumps)

    async def _api_site(self, req: web.Request) -> web.Response:
        sid = req.match_info["site"]
        if sid not in req["principal"].scope:
            return self.not_found(req)
        data = await self.site_data(sid)
        for a in data["assets"]:
            for d in a["devices"]:
                d.pop("spark_svg", None)
        return web.json_response(data, dumps=_dumps)

    async def _api_devices(self, req: web.Request) -> web.Response:
        return web.json_response(self.devices_data(req["principal"]), dumps=_dumps)

    # -- live -----------------------------------------------------------------------------------------------

    async def _events(self, req: web.Request) -> web.StreamResponse:
        """Server-sent events: ``alert`` with the queue row of every alert in scope that changes."""
        p: Principal = req["principal"]
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        await resp.prepare(req)
        q = self.model.subscribe()
        try:
            await resp.write(b": connected\nretry: 2000\n\n")
            while not self._stop.is_set():
                try:
                    aid = await asyncio.wait_for(q.get(), timeout=15)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if self._stop.is_set():
                    break
                v = self.model.alerts.get(aid)
                if v is None or v.site not in p.scope:
                    continue
                data = serde.dumps(v.summary(self.clock.now_ms())).decode()
                await resp.write(f"event: alert\ndata: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.model.unsubscribe(q)
        return resp


def _dumps(obj: Any) -> str:
    return serde.dumps(obj).decode()


def _site_head(sid: str, site: Site) -> dict[str, Any]:
    """What every site page (the site, its daily records) shows at the top."""
    return {
        "site": sid,
        "name": site.name or sid,
        "station": site.station,
        "district": site.district,
        "timezone": site.timezone,
    }


def _record_url(site: str, day: str, version: int, name: str) -> str:
    return f"/sites/{quote(site)}/records/{day}/v{version}/{name}"


def _num(x: Any) -> float | None:
    if x is None or x == "":
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return -1.0  # refused by the record's validation with a field name


def _safe_next(nxt: str) -> str:
    """Only a path on this site (no ``//host`` or scheme): the login form is no open redirect."""
    return nxt if nxt.startswith("/") and not nxt.startswith("//") and "\\" not in nxt else "/"


def _ms(iso: Any) -> int | None:
    if not isinstance(iso, str):
        return None
    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _local(value: Any, tz: str = "UTC") -> str:
    """An RFC 3339 string or epoch ms as the site's wall-clock time: what people on site read."""
    ms = value if isinstance(value, int) else _ms(value)
    if ms is None:
        return str(value)
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: int) -> str:
    s = int(seconds)
    if s < 3600:
        return f"{s // 60} min"
    if s < 86_400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86_400} d {s % 86_400 // 3600} h"
