"""The bridge acknowledges MQTT messages only once Kafka has every record of their tick, whatever Kafka does in
between: a send that raises (aiokafka's KafkaTimeoutError while the broker is away), a batch that fails, both
in a row. Driven in-process with a fake producer and a recording MQTT client; no network."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, NotEnoughReplicasError

from pipeline import serde, testing
from pipeline.ingest import bridge as bridge_mod
from pipeline.ingest.bridge import Bridge
from pipeline.ingest.registry import ReloadingRegistry
from pipeline.settings import load_settings


class FlakyProducer:
    """``plan`` says, per send, what happens: "raise" (send itself fails), "fail" (the batch future
    fails), "ok". Every record of an "ok" round lands in ``landed``."""

    def __init__(self, plan: list[str]) -> None:
        self.plan = plan
        self.rounds = 0
        self.landed: list[tuple[str, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes, partition: int) -> asyncio.Future[Any]:
        what = self.plan[min(self.rounds, len(self.plan) - 1)]
        self.rounds += 1  # the tick here is one record: a round is one send
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if what == "raise":
            raise KafkaTimeoutError()
        if what == "fail":
            fut.set_exception(NotEnoughReplicasError())
        else:
            fut.set_result(None)
            self.landed.append((topic, value))
        return fut


@pytest.fixture
def bridge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Bridge, list[int]]:
    testing.write_site_file(tmp_path / "sites.yaml", testing.ingest_site_doc({"d1": ("a1", "d1-secret-xyz")}, {}))
    settings = load_settings(state_dir=tmp_path, site_config=tmp_path / "sites.yaml")
    b = Bridge(settings, ReloadingRegistry(settings.site_config))
    b.partitions = 4
    acked: list[int] = []
    monkeypatch.setattr(bridge_mod, "ack_many", lambda client, mids: acked.extend(mids))
    monkeypatch.setattr(bridge_mod.asyncio, "sleep", _no_wait)
    return b, acked


_sleep = asyncio.sleep


async def _no_wait(_delay: float) -> None:
    await _sleep(0)  # the retry back-off, without its seconds


def _publish(b: Bridge, n: int) -> None:
    b._on_publishes(
        [("larder/v1/devices/d1/readings", serde.dumps({"ts": 1795290000, "seq": i, "temp_c": 3.5}), i + 1, 1, False)
         for i in range(n)]
    )  # fmt: skip


async def _round(b: Bridge, producer: FlakyProducer, n: int) -> None:
    b.producer = producer  # type: ignore[assignment]
    _publish(b, n)
    await b.tick()  # must not raise, whatever the producer does
    while b._tasks:
        await asyncio.gather(*b._tasks)


@pytest.mark.parametrize(
    "plan",
    [
        ["ok"],
        ["raise", "ok"],
        ["fail", "ok"],
        ["raise", "raise", "fail", "fail", "raise", "ok"],
        ["fail", "raise", "ok"],
    ],
)
async def test_messages_are_acknowledged_only_after_kafka_has_them(
    bridge: tuple[Bridge, list[int]], plan: list[str]
) -> None:
    b, acked = bridge
    producer = FlakyProducer(plan)
    original_send = producer.send
    acked_when_landed: list[int] = []

    async def watching_send(topic: str, value: bytes, key: bytes, partition: int) -> asyncio.Future[Any]:
        acked_when_landed.append(len(acked))
        return await original_send(topic, value, key, partition)

    producer.send = watching_send  # type: ignore[method-assign]
    await _round(b, producer, 5)
    assert acked == [1, 2, 3, 4, 5], "every message acknowledged once, after the round that landed"
    assert set(acked_when_landed) == {0}, "nothing acknowledged while Kafka had not taken the tick"
    readings = [r for t, v in producer.landed if t == b.topics.readings for r in serde.loads(v)["items"]]
    assert sorted(r["seq"] for r in readings) == [0, 1, 2, 3, 4]
    assert b.accepted == 5 and b.inflight == 0


async def test_a_message_the_validator_chokes_on_is_dead_lettered_not_fatal(
    bridge: tuple[Bridge, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    b, acked = bridge
    real = bridge_mod.validate_device_payload

    def choking(payload: bytes, *args: Any) -> Any:
        if b'"seq":2' in payload:
            raise RecursionError("a bug on one odd message")
        return real(payload, *args)

    monkeypatch.setattr(bridge_mod, "validate_device_payload", choking)
    producer = FlakyProducer(["ok"])
    await _round(b, producer, 5)
    assert acked == [1, 2, 3, 4, 5]
    letters = [serde.loads(v) for t, v in producer.landed if t == b.topics.deadletter]
    assert [(d["reason_code"], d["device"]) for d in letters] == [("invalid", "d1")]
    assert "a bug on one odd message" in letters[0]["reason"] and b.accepted == 4


async def test_paho_s_thread_waits_while_the_payload_bytes_in_flight_are_over_their_bound(
    bridge: tuple[Bridge, list[int]],
) -> None:
    """Uploads of 1,000 readings make a message count a poor bound on memory: bytes bound it too."""
    import threading

    b, acked = bridge
    b.max_inflight_bytes = 1_000
    upload = serde.dumps({"readings": [{"ts": 1795290000, "seq": i, "temp_c": 3.5} for i in range(40)]})
    assert len(upload) > b.max_inflight_bytes
    handed = threading.Event()

    def hand_over() -> None:
        b._on_publishes([("larder/v1/devices/d1/readings", upload, 1, 1, False)])
        handed.set()

    second = threading.Thread(target=hand_over)
    second.start()  # paho's thread, one socket read holding one upload: past the bound, it waits
    await asyncio.sleep(0.3)
    assert not handed.is_set() and b.inflight == 1
    b.producer = FlakyProducer(["ok"])  # type: ignore[assignment]
    await b.tick()
    while b._tasks:
        await asyncio.gather(*b._tasks)
    await asyncio.to_thread(second.join, 5)
    assert handed.is_set() and acked == [1] and b._inflight_bytes == 0 and b.accepted == 40
