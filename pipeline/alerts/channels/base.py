"""What every channel shares: the message handed to it, the outcome it reports, and HTTP classification."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from pipeline.settings import NotifySettings
from pipeline.siteconfig import Recipient


@dataclass(frozen=True)
class OutMessage:
    message_id: str  # also the idempotency key
    text: str
    body: dict[str, Any] = field(default_factory=dict)  # structured form for webhooks
    title: str = "Larder alert"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    retryable: bool = True
    http_status: int | None = None
    error: str | None = None
    latency_ms: float = 0.0


class Channel(Protocol):
    name: str

    def address(self, recipient: Recipient) -> str | None:
        """Where this recipient is reached on this channel, or None if not configured."""
        ...

    async def send(self, client: httpx.AsyncClient, msg: OutMessage, recipient: Recipient) -> Outcome: ...


class AddressedChannel:
    """What every Larder channel does the same way: a recipient is reached at one field of its record
    (``address``); :meth:`send` refuses a recipient without one (not retryable: no retry can give it an address)
    and hands the address to :meth:`deliver`, the channel's own request."""

    name: str
    #: The error a recipient without an address on this channel gets.
    missing: str

    def __init__(self, settings: NotifySettings) -> None:
        pass

    def address(self, recipient: Recipient) -> str | None:
        raise NotImplementedError

    async def send(self, client: httpx.AsyncClient, msg: OutMessage, recipient: Recipient) -> Outcome:
        to = self.address(recipient)
        if not to:
            return Outcome(False, retryable=False, error=self.missing)
        return await self.deliver(client, msg, recipient, to)

    async def deliver(self, client: httpx.AsyncClient, msg: OutMessage, recipient: Recipient, to: str) -> Outcome:
        raise NotImplementedError


class SmsChannel(AddressedChannel):
    """The SMS drivers (generic gateway, Twilio): one channel name, reached at the recipient's phone."""

    name = "sms"
    missing = "recipient has no phone number"

    def address(self, recipient: Recipient) -> str | None:
        return recipient.phone


class RobotChannel(AddressedChannel):
    """Group robots (DingTalk, WeCom): the same text body to the robot's URL, answered with an ``errcode``."""

    #: errcodes that mean "too fast, try again later" on this robot.
    rate_limited: frozenset[int]

    async def deliver(self, client: httpx.AsyncClient, msg: OutMessage, recipient: Recipient, to: str) -> Outcome:
        body = {"msgtype": "text", "text": {"content": msg.text}}
        outcome, resp = await post(client, to, json=body)
        return robot_outcome(outcome, resp, self.rate_limited)


def classify(resp: httpx.Response, started: float) -> Outcome:
    """2xx is delivered; 408/425/429/5xx may pass on a retry; any other 4xx will not."""
    latency = (time.perf_counter() - started) * 1000
    code = resp.status_code
    if 200 <= code < 300:
        return Outcome(True, http_status=code, latency_ms=latency)
    retryable = code in (408, 425, 429) or code >= 500
    return Outcome(False, retryable, code, f"HTTP {code}: {resp.text[:200]}", latency)


async def post(client: httpx.AsyncClient, url: str, **kwargs: Any) -> tuple[Outcome, httpx.Response | None]:
    """One POST; a connection error or timeout is a retryable failure, never an exception."""
    started = time.perf_counter()
    try:
        resp = await client.post(url, **kwargs)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:200]
        return Outcome(False, True, None, error, (time.perf_counter() - started) * 1000), None
    return classify(resp, started), resp


def robot_outcome(outcome: Outcome, resp: httpx.Response | None, rate_codes: frozenset[int]) -> Outcome:
    """DingTalk and WeCom answer HTTP 200 with ``{"errcode": n, "errmsg": ...}``; only errcode 0 is delivered."""
    if not outcome.ok or resp is None:
        return outcome
    try:
        data = resp.json()
    except ValueError:
        data = None
    code = data.get("errcode") if isinstance(data, dict) else None
    if code == 0:
        return outcome
    errmsg = str(data.get("errmsg", ""))[:150] if isinstance(data, dict) else resp.text[:150]
    return Outcome(
        False,
        retryable=code in rate_codes or code == -1,  # -1: "system busy, try again"
        http_status=outcome.http_status,
        error=f"errcode {code}: {errmsg}",
        latency_ms=outcome.latency_ms,
    )
