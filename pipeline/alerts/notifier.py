"""`larder notifier`: the alert lifecycle service. Routing is :mod:`.routing`; this module does the I/O.

It consumes the alerts and acks topics, keeps each alert's lifecycle in a :class:`~.routing.RouterState`,
publishes the ``escalated`` and ``acknowledged`` transitions back to the alerts topic (the sink writes every
transition to InfluxDB), and delivers messages through the channels with retries, backoff and fallback,
recording every step in the delivery ledger (:mod:`.delivery_log`).

State survives restarts without a store of its own: on start the notifier folds the deliveries topic (which
keys were planned, which messages are still in flight), then the alerts topic (open/resolved and its own
escalated/acknowledged records), then the acks topic, and only then starts ticking. Nothing is planned during
the fold, so the rebuilt state is what the previous process had, minus a group window of unsent notifications,
which the first tick plans again. Run one notifier per topic prefix (a second one would double-send);
restarting it, or a standby taking over after the first died, is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import httpx
from aiokafka import AIOKafkaProducer, ConsumerRecord
from pydantic import ValidationError

from pipeline.alerts import acklinks, messages
from pipeline.alerts.channels import Channel, OutMessage, build_channels
from pipeline.alerts.channels.base import Outcome
from pipeline.alerts.delivery_log import Ledger
from pipeline.alerts.kafkaio import Offsets, read_to_end, tail
from pipeline.alerts.routing import (
    Action,
    Pending,
    Person,
    Router,
    RouterState,
    RoutingConfig,
    Send,
    Transition,
)
from pipeline.clock import Clock, WallClock
from pipeline.contracts import records
from pipeline.contracts.models import AlertState, Delivery
from pipeline.producer import durable_producer, until_kafka_takes
from pipeline.settings import Settings
from pipeline.siteconfig import SiteConfig
from pipeline.topics import Topics

log = logging.getLogger("larder.notifier")

_T = TypeVar("_T")


def routing_config(settings: Settings, sites: SiteConfig) -> RoutingConfig:
    n = settings.notify
    return RoutingConfig.from_sites(
        sites,
        group_window_ms=int(n.group_window_s * 1000),
        rate_limit=n.rate_limit,
        rate_window_ms=int(n.rate_window_s * 1000),
        keep_resolved_ms=n.link_ttl_s * 1000,
    )


def _kind_of(tag: str) -> tuple[str, int]:
    """The notification kind and step from the middle part of a key (``0``, ``2``, ``1r3``, ``resolved``)."""
    if tag == "resolved":
        return "resolved", -1
    if "r" in tag:
        return "reminder", int(tag.split("r", 1)[0])
    step = int(tag)
    return ("open" if step == 0 else "escalated"), step


class Notifier:
    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        sites: SiteConfig,
        *,
        clock: Clock | None = None,
        tick_s: float = 1.0,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        if settings.ack_key is None:
            raise ValueError("settings.ack_key is not set (load_settings() generates one)")
        self.settings = settings
        self.topics = topics
        self.router = Router(routing_config(settings, sites))
        self.state = RouterState()
        self.ledger = Ledger()
        self.clock: Clock = clock or WallClock()
        self.tick_s = tick_s
        self.channels: dict[str, Channel] = build_channels(settings.notify)
        self._say = on_event or (lambda m: log.info("%s", m))
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._http: httpx.AsyncClient | None = None
        self._key = settings.ack_key.get_secret_value()

    # -- Kafka out ---------------------------------------------------------------------------------------------

    async def _publish(self, topic: str, key: str, value: bytes) -> None:
        """Until Kafka has the record: a delivery whose ledger record cannot be written must wait, not die
        (its task would end with the message neither delivered nor failed)."""
        producer = self._producer
        assert producer is not None
        await until_kafka_takes(lambda: producer.send_and_wait(topic, value, key=key.encode()), f"a {topic} record")

    async def _record(self, d: Delivery) -> None:
        self.ledger.apply(d)
        await self._publish(self.topics.deliveries, d.message_id, records.encode(d))

    # -- rebuild -----------------------------------------------------------------------------------------------

    async def rebuild(self) -> tuple[Offsets, list[Action]]:
        s = self.settings
        now = self.clock.now_ms()

        def on_delivery(rec: ConsumerRecord) -> None:
            with contextlib.suppress(ValueError, ValidationError):
                self.ledger.apply(records.read_delivery(rec.value))

        await read_to_end(s, [self.topics.deliveries], on_delivery)
        self.state = self.router.on_planned_many(
            self.state, [(d.recipient, d.keys, d.at_ms) for d in self.ledger.planned.values()]
        )

        actions: list[Action] = []

        def folding(
            read: Callable[[bytes], _T], step: Callable[[RouterState, _T, int], tuple[RouterState, list[Action]]]
        ) -> Callable[[ConsumerRecord], None]:
            """Each record, as ``read`` makes it, through the router's ``step``; unreadable ones are skipped."""

            def handle(rec: ConsumerRecord) -> None:
                try:
                    value = read(rec.value)
                except (ValueError, ValidationError):
                    return
                self.state, acts = step(self.state, value, now)
                actions.extend(acts)

            return handle

        alert_end = await read_to_end(s, [self.topics.alerts], folding(records.read_alert, self.router.on_alert))
        # Every alert the ledger names has its track now (or is older than the topic): the map did its job.
        self.state = replace(self.state, notified_before={})
        ack_end = await read_to_end(s, [self.topics.acks], folding(records.read_ack, self.router.on_ack))
        return {**alert_end, **ack_end}, actions

    # -- main loop ---------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        s = self.settings
        self._producer = durable_producer(s)
        await self._producer.start()
        self._http = httpx.AsyncClient(timeout=s.notify.http_timeout_s)
        try:
            start, actions = await self.rebuild()
            self._say(
                f"rebuilt: {len(self.state.tracks)} alerts, {len(self.ledger.planned)} messages "
                f"({len(self.ledger.in_flight())} in flight)"
            )
            await self._execute(actions)
            for planned in self.ledger.in_flight():
                self._spawn(planned)
            if ready is not None:
                ready.set()
            async for batch in tail(s, [self.topics.alerts, self.topics.acks], start, stop, int(self.tick_s * 1000)):
                now = self.clock.now_ms()
                for rec in batch:
                    await self._on_record(rec, now)
                # Alerts in messages on their way: their deliveries build the message from the tracks.
                busy = self.ledger.alerts_in_flight()
                self.state, acts = self.router.on_tick(self.state, self.clock.now_ms(), busy)
                await self._execute(acts)
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            await self._http.aclose()
            await self._producer.stop()

    async def _on_record(self, rec: ConsumerRecord, now: int) -> None:
        try:
            if rec.topic == self.topics.acks:
                ack = records.read_ack(rec.value)
                self.state, acts = self.router.on_ack(self.state, ack, now)
            else:
                alert = records.read_alert(rec.value)
                self.state, acts = self.router.on_alert(self.state, alert, now)
        except (ValueError, ValidationError) as exc:
            log.error("skipping undecodable record on %s@%d: %s", rec.topic, rec.offset, str(exc)[:200])
            return
        await self._execute(acts)

    async def _execute(self, actions: list[Action]) -> None:
        for act in actions:
            if isinstance(act, Transition):
                a = act.alert
                await self._publish(self.topics.alerts, a.site, records.encode(a))
                who = (
                    f" by {a.evidence.get('by')} via {a.evidence.get('via')}"
                    if a.state is AlertState.ACKNOWLEDGED
                    else ""
                )
                self._say(f"{a.alert_id} {a.state.value} (step {a.evidence.get('step')}){who}")
            else:
                await self._plan(act)

    # -- delivery ----------------------------------------------------------------------------------------------

    def _link(self, send: Send) -> tuple[str | None, str | None]:
        if not send.ackable:
            return None, None
        exp = send.at_ms // 1000 + self.settings.notify.link_ttl_s
        token = acklinks.issue(self._key, send.message_id, exp)
        link = f"{self.settings.notify.public_url.rstrip('/')}/a/{token}"
        code = acklinks.reply_code(send.message_id) if send.person.recipient.phone else None
        return link, code

    async def _plan(self, send: Send) -> None:
        person = send.person
        link, code = self._link(send)
        sites = {p.alert.site for p in send.items}
        policy = self.router.config.sites.get(next(iter(sites))) if len(sites) == 1 else None
        text = messages.render_text(
            send, link=link, code=code, summary_over=self.settings.notify.summary_over, tz=policy.tz if policy else None
        )
        rules = {p.alert.rule for p in send.items}
        channels = [
            c for c in person.recipient.channels if c in self.channels and self.channels[c].address(person.recipient)
        ]
        planned = Delivery(
            kind="planned",
            message_id=send.message_id,
            at_ms=send.at_ms,
            recipient=person.id,
            recipient_name=person.name,
            role=person.role,
            site=next(iter(sites)) if len(sites) == 1 else "*",
            rule=next(iter(rules)) if len(rules) == 1 else "*",
            severity="critical" if any(p.critical for p in send.items) else send.items[0].alert.severity.value,
            keys=send.keys,
            alert_ids=sorted({p.alert.alert_id for p in send.items}),
            channels=channels,
            text=text,
        )
        # Durable before the first attempt: from here on these keys are never planned again.
        await self._record(planned)
        self._say(f"planned {send.message_id} to {person.role} {person.name}: {len(send.items)} notification(s)")
        self._spawn(planned)

    def _spawn(self, planned: Delivery) -> None:
        if planned.message_id in self._tasks:
            return
        task = asyncio.create_task(self._deliver(planned), name=f"deliver-{planned.message_id}")
        self._tasks[planned.message_id] = task
        mid = planned.message_id

        def forget(task: asyncio.Task[None]) -> None:
            self._tasks.pop(mid, None)
            if task.cancelled() or task.exception() is None:
                return
            # A bug, not a refusal (those are outcomes): never drop the message silently; try again later.
            log.error("delivery of %s stopped; retrying in 10 s", mid, exc_info=task.exception())
            asyncio.get_running_loop().call_later(10.0, self._spawn, planned)

        task.add_done_callback(forget)

    def _follow(self, planned: Delivery, kind: str, **fields: object) -> Delivery:
        """A ledger record that follows ``planned`` (attempt, delivered, failed), with its tags copied."""
        return planned.model_copy(
            update={
                "kind": kind,
                "at_ms": self.clock.now_ms(),
                "keys": [],
                "alert_ids": [],
                "channels": [],
                "text": "",
                **fields,
            }
        )

    def _items(self, planned: Delivery) -> tuple[Pending, ...]:
        out = []
        for key in planned.keys:
            aid, tag, _pid = key.split("|")
            track = self.state.tracks.get(aid)
            if track is None:
                continue
            kind, step = _kind_of(tag)
            out.append(Pending(key, track.alert, kind, step, planned.at_ms, planned.at_ms))
        return tuple(out)

    def _superseded(self, planned: Delivery) -> bool:
        """Every alert in it is acknowledged or resolved, and it is not itself a resolution notice."""
        if any(k.split("|")[1] == "resolved" for k in planned.keys):
            return False
        tracks = [self.state.tracks.get(a) for a in planned.alert_ids]
        return all(t is None or t.acked or t.resolved_ms is not None for t in tracks)

    async def _deliver(self, planned: Delivery) -> None:
        n = self.settings.notify
        person: Person | None = self.router.config.person(planned.recipient)
        if person is None or not planned.channels:
            why = "recipient no longer in the site file" if person is None else "recipient has no usable channel"
            await self._record(self._follow(planned, "failed", error=why))
            self._say(f"{planned.message_id} failed: {why}")
            return
        items = self._items(planned)
        link = None
        if "Ack: " in planned.text:
            link = planned.text.split("Ack: ", 1)[1].split(" ", 1)[0]
        body = messages.webhook_body(
            Send(planned.message_id, person, items, planned.at_ms), text=planned.text, link=link
        )
        msg = OutMessage(planned.message_id, planned.text, body)
        attempt = self.ledger.attempts.get(planned.message_id, 0)
        delay = n.backoff_s
        assert self._http is not None
        while True:
            any_retryable = False
            for ch_name in planned.channels:
                channel = self.channels[ch_name]
                for _ in range(n.attempts_before_fallback):
                    if self._superseded(planned):
                        await self._record(
                            self._follow(planned, "failed", error="acknowledged or resolved before delivery")
                        )
                        self._say(f"{planned.message_id} dropped: its alerts were acknowledged or resolved first")
                        return
                    attempt += 1
                    try:
                        outcome = await channel.send(self._http, msg, person.recipient)
                    except Exception as exc:  # e.g. a malformed URL in the site file: this channel cannot work
                        # The type only: the message of such an error may carry the URL and its token.
                        log.warning("%s via %s: %s", planned.message_id, ch_name, type(exc).__name__)
                        outcome = Outcome(False, retryable=False, error=f"{type(exc).__name__} (notifier log)")
                    status = "ok" if outcome.ok else ("retry" if outcome.retryable else "error")
                    await self._record(
                        self._follow(
                            planned,
                            "attempt",
                            channel=ch_name,
                            status=status,
                            http_status=outcome.http_status,
                            latency_ms=round(outcome.latency_ms, 3),
                            attempt=attempt,
                            error=outcome.error,
                        )
                    )
                    if outcome.ok:
                        await self._record(
                            self._follow(
                                planned,
                                "delivered",
                                channel=ch_name,
                                attempt=attempt,
                                keys=planned.keys,
                                alert_ids=planned.alert_ids,
                            )
                        )
                        self._say(
                            f"{planned.message_id} delivered by {ch_name} to {person.role} {person.name} "
                            f"(attempt {attempt})"
                        )
                        return
                    log.warning("%s via %s attempt %d: %s", planned.message_id, ch_name, attempt, outcome.error)
                    if not outcome.retryable:
                        break  # the next channel, if any, is the fallback
                    any_retryable = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, n.backoff_max_s)
            if not any_retryable:
                await self._record(self._follow(planned, "failed", error="every channel refused the message"))
                self._say(f"{planned.message_id} failed: every channel refused it")
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, n.backoff_max_s)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until no delivery is in flight (tests, graceful shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=timeout)
