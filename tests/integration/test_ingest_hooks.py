"""`larder hooks` against the real Kafka, called with the real `curl`, signed with `openssl dgst`."""

from __future__ import annotations

import base64
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import serde
from pipeline.partitioner import partition_for
from pipeline.settings import Settings
from pipeline.testing import IngestEnv, consume, free_port, make_env, read_all
from pipeline.topics import Topics
from tests.integration.ingest_support import curl_signed, dead_letters, openssl_signature

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def env(live_stack: Settings, topics: Topics, tmp_path: Path) -> Iterator[IngestEnv]:
    e = make_env(live_stack, topics, tmp_path, n_devices=0, n_cameras=2)
    yield e
    e.close()


def curl(port: int, camera: str, timestamp: str, signature: str, body: bytes) -> tuple[int, dict[str, Any]]:
    return curl_signed(port, "/v1/kitchen/events", ("X-Larder-Camera", camera), timestamp, signature, body)


def event(event_id: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "ts": "2026-11-22T11:30:05Z", "type": "stove_on", "zone": "cook", **extra}


async def kitchen_items(settings: Settings, topics: Topics, n: int, timeout: float = 20) -> list[tuple[int, Any]]:
    got: list[tuple[int, Any]] = []

    def on(record: Any) -> None:
        batch = serde.loads(record.value)
        assert batch["kind"] == "kitchen_events" and record.key.decode() == batch["items"][0]["kitchen"]
        got.extend((record.partition, item) for item in batch["items"])

    await consume(settings, topics.kitchen_events, on, lambda: len(got) >= n, timeout)
    return got


async def test_good_wrong_stale_and_replayed_signatures(env: IngestEnv) -> None:
    port = free_port()
    env.hooks(port)
    (cam, (kitchen, secret)), (cam2, (_, secret2)) = list(env.cameras.items())
    body = serde.dumps(event("e-1"))
    now = str(int(time.time()))
    good = openssl_signature(secret, now, body)

    status, answer = curl(port, cam, now, good, body)
    assert (status, answer["accepted"], answer["duplicate"]) == (202, 1, False)

    status, answer = curl(port, cam, now, openssl_signature("not-the-secret", now, body), body)
    assert (status, answer["error"]) == (401, "bad_signature")
    status, answer = curl(port, cam, now, openssl_signature(secret2, now, body), body)
    assert (status, answer["error"]) == (401, "bad_signature"), "another camera's secret does not work"

    # A header that is not even UTF-8 (aiohttp keeps such bytes as surrogates) is a bad signature, not a 500.
    status, answer = curl(port, cam, now, "sha256=\udcff\udcfe", body)
    assert (status, answer["error"]) == (401, "bad_signature")

    stale = str(int(time.time()) - 301)
    status, answer = curl(port, cam, stale, openssl_signature(secret, stale, body), body)
    assert (status, answer["error"]) == (401, "stale_timestamp")
    status, answer = curl(port, "cam-nobody", now, good, body)
    assert (status, answer["error"]) == (401, "unknown_camera")

    status, answer = curl(port, cam, now, good, body)  # the exact request again: a replay
    assert (status, answer["duplicate"], answer["accepted"]) == (202, True, 0)

    # A batch of 100 from the second camera (other kitchen), one record.
    batch = serde.dumps({"events": [event(f"b-{i}", type="person_count", count=i % 4) for i in range(100)]})
    status, answer = curl(port, cam2, now, openssl_signature(secret2, now, batch), batch)
    assert (status, answer["accepted"]) == (202, 100)

    items = await kitchen_items(env.settings, env.topics, 101)
    assert len(items) == 101, "the replay and the refused requests produced nothing"
    p, first = items[0] if items[0][1]["camera"] == cam else next(i for i in items if i[1]["camera"] == cam)
    assert (first["site"], first["kitchen"], first["event_id"]) == ("S1", kitchen, "e-1")
    assert p == partition_for(kitchen, env.topics.partitions), "partitioned by kitchen id"
    assert first["ts_ms"] == 1_795_347_005_000
    assert await read_all(env.settings, env.topics.deadletter) == [], "unauthenticated bytes are not kept"
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in (
        'larder_ingest_accepted_total{source="hook"} 101.0',
        'larder_ingest_duplicates_total{source="hook"} 1.0',
        'larder_hooks_requests_total{status="202"} 3.0',
        'larder_hooks_requests_total{status="401"} 5.0',
    ):
        assert line in metrics, line


async def test_malformed_bodies_from_a_camera_are_dead_lettered(env: IngestEnv) -> None:
    port = free_port()
    env.hooks(port)
    cam, (_, secret) = next(iter(env.cameras.items()))
    now = str(int(time.time()))
    cases = [
        (b"{not json", "not_json"),
        (serde.dumps(event("m-1", type="teleport")), "wrong_type"),
        (serde.dumps({"event_id": "m-2", "type": "fire"}), "missing_field"),
        (serde.dumps(event("m-3", confidence=1.7)), "out_of_range"),
        (serde.dumps(event("m-4", ts="2099-01-01T00:00:00Z")), "future_timestamp"),
        (serde.dumps({"events": [event(f"x-{i}") for i in range(1001)]}), "batch_too_large"),
    ]
    for body, code in cases:
        status, answer = curl(port, cam, now, openssl_signature(secret, now, body), body)
        assert (status, answer["error"]) == (400, code), body[:80]
    # One bad event in a batch: the good ones still go in, the bad one is dead-lettered, the answer says which.
    mixed = serde.dumps({"events": [event("ok-1"), event("bad-1", type="nope"), event("ok-2")]})
    status, answer = curl(port, cam, now, openssl_signature(secret, now, mixed), mixed)
    assert status == 400 and answer["accepted"] == 2
    assert answer["rejected"] == [{"index": 1, "reason_code": "wrong_type", "reason": answer["rejected"][0]["reason"]}]

    letters = await dead_letters(env.settings, env.topics, len(cases) + 1)
    assert [(d["reason_code"], d["camera"], d["source"]) for d in letters] == [
        *((code, cam, "hook") for _, code in cases),
        ("wrong_type", cam, "hook"),
    ]
    assert base64.b64decode(letters[0]["payload_b64"]) == b"{not json"
    assert letters[-1]["index"] == 1
    items = await kitchen_items(env.settings, env.topics, 2)
    assert sorted(i["event_id"] for _, i in items) == ["ok-1", "ok-2"]
