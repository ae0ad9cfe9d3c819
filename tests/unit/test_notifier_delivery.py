"""A delivery task never ends silently: a channel that raises (a malformed URL in the site file) hands over to
the fallback channel, and a ledger record Kafka does not take is written again, not dropped with its task.
In-process: the notifier's planning and delivery with fake channels and a fake producer, no network."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaTimeoutError

from pipeline.alerts.channels.base import Outcome
from pipeline.alerts.notifier import Notifier
from pipeline.clock import ManualClock
from pipeline.schemas import Delivery
from pipeline.settings import NotifySettings, Settings
from pipeline.siteconfig import SiteConfig
from pipeline.topics import Topics
from tests.unit.test_routing import T0, S, alert


class FakeSms:
    name = "sms"

    def __init__(self) -> None:
        self.calls = 0

    def address(self, recipient: Any) -> str | None:
        return str(recipient.phone)

    async def send(self, client: Any, message: Any, recipient: Any) -> Outcome:
        self.calls += 1
        return Outcome(True, http_status=200)


class FlakyProducer:
    """send_and_wait fails ``fail`` times (as aiokafka does while Kafka is away), then takes every record."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.taken: list[bytes] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        if self.fail:
            self.fail -= 1
            raise KafkaTimeoutError()
        self.taken.append(value)


def notifier(webhook: str, producer: FlakyProducer) -> tuple[Notifier, FakeSms]:
    operator = {"name": "op", "phone": "+8613800000001", "webhook": webhook, "channels": ["webhook", "sms"]}
    cfg = SiteConfig.model_validate(
        {
            "sites": {
                "S1": {
                    "timezone": "Asia/Shanghai",
                    "recipients": {"operator": [operator]},
                }
            }
        }
    )
    settings = Settings(
        ack_key="k" * 32, notify=NotifySettings(webhook_secret="s" * 16, backoff_s=0.01, backoff_max_s=0.02)
    )
    n = Notifier(settings, Topics(), cfg, clock=ManualClock(T0))
    sms = FakeSms()
    n.channels["sms"] = sms  # type: ignore[assignment]
    n._producer = producer  # type: ignore[assignment]
    return n, sms


async def deliver_one(n: Notifier) -> list[str]:
    n._http = httpx.AsyncClient(timeout=1)
    try:
        state = n.router.on_alert(n.state, alert("S1", T0), T0)[0]
        state, _ = n.router.on_tick(state, T0 + S)
        state, actions = n.router.on_tick(state, T0 + 40 * S)
        n.state = state
        for action in actions:
            await n._plan(action)  # type: ignore[arg-type]
        assert n._tasks, "a delivery was planned"
        await n.drain(timeout=10)
    finally:
        await n._http.aclose()
    return [Delivery.model_validate_json(v).kind for v in n._producer.taken]  # type: ignore[union-attr]


@pytest.mark.parametrize("webhook", ["https://ops.example/hook\n", "http://127.0.0.1:99999/hook"])
async def test_a_channel_that_raises_hands_over_to_the_fallback(webhook: str) -> None:
    n, sms = notifier(webhook, FlakyProducer(0))
    kinds = await deliver_one(n)
    assert sms.calls == 1 and kinds[-1] == "delivered", kinds
    assert kinds.count("attempt") == 2, "the refused webhook attempt and the SMS are both in the ledger"


async def test_ledger_records_kafka_does_not_take_are_written_again() -> None:
    n, sms = notifier("https://ops.example/hook\n", FlakyProducer(3))
    kinds = await deliver_one(n)
    assert kinds[0] == "planned" and kinds[-1] == "delivered" and sms.calls == 1, kinds
