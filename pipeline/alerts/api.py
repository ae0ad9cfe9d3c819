"""`larder api`: the acknowledgement page behind every message's link, the ack API and the SMS reply webhook.

* ``GET /a/{token}`` -- a small mobile page listing the message's alerts with a corrective-action note field.
  GET never acknowledges anything (chat apps and mail scanners fetch links to preview them).
* ``POST /a/{token}`` (form: ``name``, ``note``) -- acknowledges every alert of that message.
* ``POST /v1/alerts/{alert_id}/ack`` -- JSON ``{"token": ..., "note": ..., "by": ...}`` (or ``Authorization:
  Bearer <token>``): acknowledges one alert of the token's message. 202 with the ack record.
* ``POST /v1/sms/reply?token=<notify.sms_reply_token>`` -- the SMS gateway's inbound-message callback, JSON
  ``{"from": ..., "text": ...}`` or Twilio's form (``From``, ``Body``). ``ACK <code> [note]`` from the phone the
  message went to acknowledges its alerts.

Refusals: a token whose signature does not match is 403 (forged), an expired one 410, one already used for
these alerts 409 (replayed). Acks go to the acks topic (acks=all) before the answer; the notifier stops the
escalation and publishes the ``acknowledged`` transition. The API keeps a read model folded from the
deliveries, alerts and acks topics (which message holds which alerts, who it went to, which token ids were
used), so any number of API processes can run; two of them racing on the same link within milliseconds could
both accept it (the notifier then records the first ack only).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import logging
import re
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiokafka import AIOKafkaProducer, ConsumerRecord
from pydantic import ValidationError

from pipeline import serde
from pipeline.alerts import acklinks
from pipeline.alerts.kafkaio import read_to_end, tail
from pipeline.alerts.routing import RoutingConfig
from pipeline.clock import Clock, WallClock
from pipeline.contracts import records
from pipeline.contracts.models import Ack, Alert, AlertState, Delivery
from pipeline.httpbody import json_object
from pipeline.producer import durable_producer
from pipeline.settings import Settings
from pipeline.topics import Topics

log = logging.getLogger("larder.api")
_REPLY = re.compile(r"^\s*ACK\s+([0-9A-Fa-f]{6})\b\s*(.*)$", re.IGNORECASE | re.DOTALL)


def _digits(phone: str) -> str:
    return re.sub(r"\D", "", phone)


@dataclass
class ReadModel:
    messages: dict[str, Delivery] = field(default_factory=dict)
    by_code: dict[str, list[str]] = field(default_factory=dict)
    alerts: dict[str, Alert] = field(default_factory=dict)
    used: set[tuple[str, str]] = field(default_factory=set)  # (token id, alert id)
    acked: set[str] = field(default_factory=set)

    def apply(self, topics: Topics, rec: ConsumerRecord) -> None:
        try:
            if rec.topic == topics.deliveries:
                d = records.read_delivery(rec.value)
                if d.kind == "planned" and d.message_id not in self.messages:
                    self.messages[d.message_id] = d
                    self.by_code.setdefault(acklinks.reply_code(d.message_id), []).append(d.message_id)
            elif rec.topic == topics.alerts:
                a = records.read_alert(rec.value)
                if a.state in (AlertState.OPEN, AlertState.RESOLVED) or a.alert_id not in self.alerts:
                    self.alerts[a.alert_id] = a
                if a.state is AlertState.ACKNOWLEDGED:
                    self.acked.add(a.alert_id)
            elif rec.topic == topics.acks:
                ack = records.read_ack(rec.value)
                self.acked.add(ack.alert_id)
                if ack.token_id:
                    self.used.add((ack.token_id, ack.alert_id))
        except (ValueError, ValidationError):
            log.warning("skipping undecodable record on %s@%d", rec.topic, rec.offset)

    @staticmethod
    def ackable(msg: Delivery) -> list[str]:
        return sorted({k.split("|")[0] for k in msg.keys if k.split("|")[1] != "resolved"})


class AckApi:
    def __init__(self, settings: Settings, topics: Topics, routing: RoutingConfig, clock: Clock | None = None) -> None:
        if settings.ack_key is None:
            raise ValueError("settings.ack_key is not set (load_settings() generates one)")
        self.settings = settings
        self.topics = topics
        self.routing = routing
        self.clock: Clock = clock or WallClock()
        self.model = ReadModel()
        self._key = settings.ack_key.get_secret_value()
        self._producer: AIOKafkaProducer | None = None
        self._stop = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/a/{token}", self._page)
        app.router.add_post("/a/{token}", self._page_ack)
        app.router.add_post("/v1/alerts/{alert_id}/ack", self._api_ack)
        app.router.add_post("/v1/sms/reply", self._sms_reply)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _start(self, _app: web.Application) -> None:
        s = self.settings
        self._producer = durable_producer(s)
        await self._producer.start()
        t = self.topics
        names = [t.deliveries, t.alerts, t.acks]
        start = await read_to_end(s, names, lambda rec: self.model.apply(t, rec))
        self._follower = asyncio.create_task(self._follow(names, start))

    async def _follow(self, names: list[str], start: dict) -> None:  # type: ignore[type-arg]
        async for batch in tail(self.settings, names, start, self._stop, timeout_ms=200):
            if batch:
                for rec in batch:
                    self.model.apply(self.topics, rec)
                async with self._changed:
                    self._changed.notify_all()

    async def _cleanup(self, _app: web.Application) -> None:
        self._stop.set()
        if self._follower is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._follower, timeout=5)
        if self._producer is not None:
            await self._producer.stop()

    async def _message(self, message_id: str, wait_s: float = 3.0) -> Delivery | None:
        """The planned message, waiting briefly: a link can be opened before the read model saw its record."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while message_id not in self.model.messages:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=remaining)
        return self.model.messages[message_id]

    # -- shared ------------------------------------------------------------------------------------------------

    def _claims(self, token: str) -> acklinks.LinkClaims:
        return acklinks.verify(self._key, token, self.clock.now_ms() / 1000)

    async def _acknowledge(self, msg: Delivery, alert_ids: list[str], *, by: str, note: str, via: str) -> list[Ack]:
        assert self._producer is not None
        acks = []
        for aid in alert_ids:
            alert = self.model.alerts.get(aid)
            site = alert.site if alert else msg.site
            ack = Ack(
                alert_id=aid,
                site=site,
                by=by[:200] or msg.recipient_name,
                role=msg.role or None,
                via=via,  # type: ignore[arg-type]
                note=note[:2000],
                at_ms=self.clock.now_ms(),
                token_id=msg.message_id,
            )
            # Marked before the await so a double-submitted form cannot pass twice in this process.
            self.model.used.add((msg.message_id, aid))
            try:
                await self._producer.send_and_wait(self.topics.acks, records.encode(ack), key=site.encode())
            except Exception:
                self.model.used.discard((msg.message_id, aid))
                raise
            acks.append(ack)
        return acks

    # -- handlers ----------------------------------------------------------------------------------------------

    async def _health(self, _req: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "messages": len(self.model.messages)})

    async def _resolve(self, token: str) -> tuple[Delivery | None, web.Response | None]:
        try:
            claims = self._claims(token)
        except acklinks.InvalidToken as exc:
            status = {"expired": 410, "forged": 403, "malformed": 403}[exc.reason.value]
            return None, _page(status, "Link refused", f"This acknowledgement link is {exc.reason.value}.")
        msg = await self._message(claims.message_id)
        if msg is None:
            return None, _page(404, "Unknown message", "This link names a message Larder does not know.")
        return msg, None

    async def _page(self, req: web.Request) -> web.Response:
        msg, refusal = await self._resolve(req.match_info["token"])
        if refusal is not None:
            return refusal
        assert msg is not None
        ids = ReadModel.ackable(msg)
        rows = []
        for aid in ids:
            a = self.model.alerts.get(aid)
            state = "acknowledged" if aid in self.model.acked else (a.state.value if a else "?")
            what = f"{a.severity.value} {a.rule} at {a.site}/{a.subject}, opened {a.opened_at}" if a else aid
            rows.append(f"<li><b>{html.escape(state)}</b> {html.escape(what)}</li>")
        pending = [a for a in ids if (msg.message_id, a) not in self.model.used]
        if not pending:
            return _page(409, "Already used", "This link was already used to acknowledge these alerts.")
        form = (
            '<form method="post">'
            f'<label>Your name<input name="name" value="{html.escape(msg.recipient_name)}" maxlength="200"></label>'
            '<label>Corrective action taken<textarea name="note" rows="4" maxlength="2000"></textarea></label>'
            '<button type="submit">Acknowledge</button></form>'
        )
        return _page(200, "Acknowledge alert", f"<ul>{''.join(rows)}</ul>{form}", raw=True)

    async def _page_ack(self, req: web.Request) -> web.Response:
        msg, refusal = await self._resolve(req.match_info["token"])
        if refusal is not None:
            return refusal
        assert msg is not None
        pending = [a for a in ReadModel.ackable(msg) if (msg.message_id, a) not in self.model.used]
        if not pending:
            return _page(409, "Already used", "This link was already used to acknowledge these alerts.")
        form = await req.post()
        acks = await self._acknowledge(
            msg, pending, by=str(form.get("name", "")).strip(), note=str(form.get("note", "")).strip(), via="link"
        )
        return _page(200, "Acknowledged", f"Acknowledged {len(acks)} alert(s). Escalation stops. Thank you.")

    async def _api_ack(self, req: web.Request) -> web.Response:
        alert_id = req.match_info["alert_id"]
        body = await json_object(req)
        if isinstance(body, web.Response):
            return body
        auth = req.headers.get("Authorization", "")
        token = body.get("token") or (auth[7:] if auth.startswith("Bearer ") else "")
        if not isinstance(token, str) or not token:
            return web.json_response({"error": "a token is required (body 'token' or Bearer)"}, status=401)
        try:
            claims = self._claims(token)
        except acklinks.InvalidToken as exc:
            status = 410 if exc.reason is acklinks.TokenError.EXPIRED else 403
            return web.json_response({"error": str(exc)}, status=status)
        msg = await self._message(claims.message_id)
        if msg is None or alert_id not in ReadModel.ackable(msg):
            return web.json_response({"error": "this token does not cover that alert"}, status=403)
        if (msg.message_id, alert_id) in self.model.used:
            return web.json_response({"error": "this token was already used for that alert"}, status=409)
        note, by = body.get("note", ""), body.get("by", "")
        if not isinstance(note, str) or not isinstance(by, str):
            return web.json_response({"error": "'note' and 'by' must be strings"}, status=400)
        (ack,) = await self._acknowledge(msg, [alert_id], by=by, note=note, via="api")
        return web.json_response(ack.model_dump(mode="json"), status=202)

    async def _sms_reply(self, req: web.Request) -> web.Response:
        secret = self.settings.notify.sms_reply_token
        given = req.query.get("token", "")
        if secret is None or not hmac.compare_digest(given.encode(), secret.get_secret_value().encode()):
            return web.json_response({"error": "unknown or unauthorised endpoint"}, status=403)
        if req.content_type == "application/json":
            try:
                data = serde.loads(await req.read())
            except serde.JSONDecodeError:
                return web.json_response({"error": "body is not JSON"}, status=400)
            sender, text = str(data.get("from", "")), str(data.get("text", ""))
        else:
            form = await req.post()
            sender, text = str(form.get("From", form.get("from", ""))), str(form.get("Body", form.get("text", "")))
        m = _REPLY.match(text)
        if not sender or m is None:
            return web.json_response({"ok": False, "reason": "not an 'ACK <code>' reply"})
        code, note = m.group(1).upper(), m.group(2).strip()
        for mid in self.model.by_code.get(code, []):
            msg = self.model.messages[mid]
            person = self.routing.person(msg.recipient)
            phone = person.recipient.phone if person else None
            if phone and _digits(phone) == _digits(sender):
                if self.clock.now_ms() > msg.at_ms + self.settings.notify.link_ttl_s * 1000:
                    # The reply code stands in for the message's link, so it expires with it (410 for a link).
                    return web.json_response({"ok": False, "reason": "that message's ack code has expired"})
                pending = [a for a in ReadModel.ackable(msg) if (mid, a) not in self.model.used]
                acks = await self._acknowledge(msg, pending, by=msg.recipient_name, note=note, via="sms")
                return web.json_response({"ok": True, "acknowledged": [a.alert_id for a in acks]})
        return web.json_response({"ok": False, "reason": "no message with that code was sent to this number"})


class RedactingAccessLog(AbstractAccessLogger):
    """Access log without credentials: ack tokens in paths and every query string (the SMS reply token) are cut."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = re.sub(r"^/a/[^/]+", "/a/<token>", request.path)
        self.logger.info('%s "%s %s" %d %.1f ms', request.remote, request.method, path, response.status, time * 1000)


def _page(status: int, title: str, body: str, *, raw: bool = False) -> web.Response:
    content = body if raw else f"<p>{html.escape(body)}</p>"
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)} - Larder</title>
<style>body{{font-family:system-ui,sans-serif;margin:1rem;max-width:36rem}}label{{display:block;margin:.8rem 0}}
input,textarea{{display:block;width:100%;font-size:1rem;padding:.4rem;box-sizing:border-box}}
button{{font-size:1.2rem;padding:.8rem;width:100%;background:#0a6;color:#fff;border:0;border-radius:.4rem}}
li{{margin:.4rem 0}}</style></head><body><h1>{html.escape(title)}</h1>{content}</body></html>"""
    return web.Response(status=status, text=doc, content_type="text/html")
