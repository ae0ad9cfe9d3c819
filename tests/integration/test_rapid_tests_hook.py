"""Contract 6 against the real `larder hooks` process and Kafka: `curl` with good, wrong, stale and replayed
signatures (signed with `openssl dgst`), and malformed results read back from the dead-letter topic with `kcat`."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import serde
from pipeline.partitioner import partition_for
from pipeline.settings import Settings
from pipeline.testing import IngestEnv, free_port, rapid_test_body, read_all, register_in_broker
from pipeline.topics import Topics
from tests.integration.ingest_support import curl_signed, openssl_signature

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SITE = "M1"


@pytest.fixture
def env(live_stack: Settings, topics: Topics, tmp_path: Path) -> Iterator[tuple[IngestEnv, dict[str, str]]]:
    tag = uuid.uuid4().hex[:6]
    instruments = {f"rt-{tag}-1": f"rt-{uuid.uuid4().hex[:12]}", f"rt-{tag}-2": f"rt-{uuid.uuid4().hex[:12]}"}
    site_file = tmp_path / "sites.yaml"
    lines = ["version: 1", "sites:", f"  {SITE}:", "    name: 城东农贸市场", "    instruments:"]
    lines += [f'      {i}: {{ type: enzyme_inhibition, secret: "{s}" }}' for i, s in instruments.items()]
    site_file.write_text("\n".join(lines) + "\n")
    e = IngestEnv(live_stack, topics, site_file, tmp_path, {}, {})
    yield e, instruments
    e.close()


def curl(
    port: int, instrument: str, timestamp: str, signature: str, body: bytes, content_type: str = "application/json"
) -> tuple[int, dict[str, Any]]:
    return curl_signed(
        port, "/v1/rapid-tests", ("X-Larder-Instrument", instrument), timestamp, signature, body, content_type
    )


def result(result_id: str, **extra: Any) -> dict[str, Any]:
    """A contract-6 body from a market stall, its supplier and trace code named."""
    return rapid_test_body(result_id, **{"stall": "A07", "supplier": "寿光蔬菜合作社", "trace_code": "TR0001", **extra})


def kcat(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every record of ``topic``, read by kcat from the beginning to the end."""
    out = subprocess.run(
        ["kcat", "-C", "-b", settings.kafka.bootstrap_servers, "-t", topic, "-o", "beginning", "-e", "-q"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout.decode()
    return [json.loads(x) for x in out.splitlines() if x.strip()]


async def test_good_wrong_stale_and_replayed_signatures(env: tuple[IngestEnv, dict[str, str]]) -> None:
    e, instruments = env
    (ins, secret), (ins2, secret2) = list(instruments.items())
    port = free_port()
    e.hooks(port)
    body = serde.dumps(result(f"r-{uuid.uuid4().hex[:6]}"))
    now = str(int(time.time()))

    code, answer = curl(port, ins, now, openssl_signature(secret, now, body), body)
    assert (code, answer) == (202, {"accepted": 1, "duplicates": 0, "duplicate": False})
    # Wrong: another instrument's secret, and a body changed after signing.
    assert curl(port, ins, now, openssl_signature(secret2, now, body), body)[1]["error"] == "bad_signature"
    tampered = body.replace(b"positive", b"negative")
    code, answer = curl(port, ins, now, openssl_signature(secret, now, body), tampered)
    assert (code, answer["error"]) == (401, "bad_signature")
    # Stale: correctly signed, 301 s old.
    old = str(int(time.time()) - 301)
    code, answer = curl(port, ins, old, openssl_signature(secret, old, body), body)
    assert (code, answer["error"]) == (401, "stale_timestamp")
    # Unknown instrument; a camera's path does not know instruments either.
    assert curl(port, "rt-ghost", now, openssl_signature(secret, now, body), body)[0] == 401
    # Not JSON by its content type: refused before anything is read.
    code, answer = curl(port, ins, now, openssl_signature(secret, now, body), body, "text/plain")
    assert (code, answer["error"]) == (415, "unsupported_media_type")
    # Replayed: the same signed request again is accepted but not produced twice.
    code, answer = curl(port, ins, now, openssl_signature(secret, now, body), body)
    assert (code, answer) == (202, {"accepted": 0, "duplicates": 1, "duplicate": True})

    records = kcat(e.settings, e.topics.rapid_tests)
    items = [it for r in records for it in r["items"]]
    assert len(records) == 1 and records[0]["kind"] == "rapid_tests" and len(items) == 1
    item = items[0]
    # Site and instrument type come from the site file; tested_at becomes event-time ms.
    assert (item["site"], item["instrument"], item["instrument_type"]) == (SITE, ins, "enzyme_inhibition")
    assert item["ts_ms"] == 1795299000000 and item["sample_name"] == "菠菜" and "tested_at" not in item
    # Keyed by site: the partition any Kafka client computes.
    raw = await read_all(e.settings, e.topics.rapid_tests)
    assert [(r.key, r.partition) for r in raw] == [(SITE.encode(), partition_for(SITE, e.topics.partitions))]
    assert await read_all(e.settings, e.topics.deadletter) == []
    assert ins2  # the second instrument only lent its (wrong) secret


async def test_malformed_results_are_dead_lettered_with_reasons(env: tuple[IngestEnv, dict[str, str]]) -> None:
    e, instruments = env
    ins, secret = next(iter(instruments.items()))
    port = free_port()
    e.hooks(port)

    def post(body: bytes) -> tuple[int, dict[str, Any]]:
        now = str(int(time.time()))
        return curl(port, ins, now, openssl_signature(secret, now, body), body)

    code, answer = post(b"{not json")
    assert (code, answer["error"]) == (400, "not_json")
    bad = [
        result("ok-1"),
        {k: v for k, v in result("no-sample").items() if k != "sample_id"},
        result("bad-result", result="maybe"),
        result("no-value", value=None),
        result("future", tested_at="2099-01-01T00:00:00Z"),
        result("bad-time", tested_at="yesterday"),
        result("ok-2", stage="recheck", result="negative"),
    ]
    code, answer = post(serde.dumps({"results": bad}))
    assert code == 400 and answer["accepted"] == 2
    expected = [
        (1, "missing_field"),
        (2, "wrong_type"),
        (3, "missing_field"),
        (4, "future_timestamp"),
        (5, "bad_timestamp"),
    ]
    assert [(r["index"], r["reason_code"]) for r in answer["rejected"]] == expected

    letters = kcat(e.settings, e.topics.deadletter)
    assert [(d["index"], d["reason_code"]) for d in letters] == [(None, "not_json"), *expected]
    for d in letters:
        assert d["source"] == "hook" and d["instrument"] == ins and d["reason"]
    assert base64.b64decode(letters[0]["payload_b64"]) == b"{not json"
    assert json.loads(base64.b64decode(letters[2]["payload_b64"]))["result_id"] == "bad-result"
    # The two good results of the batch were produced, in one record.
    items = [it for r in kcat(e.settings, e.topics.rapid_tests) for it in r["items"]]
    assert [it["result_id"] for it in items] == ["ok-1", "ok-2"]


async def test_the_same_results_over_mqtt_as_the_instruments_own_user(env: tuple[IngestEnv, dict[str, str]]) -> None:
    """mosquitto_pub as the instrument: accepted on its own topic, dropped by the broker's ACL on another
    instrument's topic, malformed results dead-lettered by the bridge with the instrument named."""
    e, instruments = env
    (ins, secret), (ins2, _) = list(instruments.items())
    register_in_broker(e.settings, instruments)
    e.bridge()
    m = e.settings.mqtt

    def pub(topic: str, body: bytes) -> None:
        subprocess.run(
            [
                *("mosquitto_pub", "-h", m.host, "-p", str(m.port), "-u", ins, "-P", secret, "-q", "1"),
                *("-i", f"{ins}-pub", "-t", topic, "-s"),
            ],
            input=body,
            check=True,
            timeout=30,
        )

    good = {
        "results": [result("mq-1"), result("mq-2", stage="recheck", result="negative"), result("mq-bad", stage="x")]
    }
    pub(f"larder/v1/instruments/{ins}/results", serde.dumps(good))
    pub(f"larder/v1/instruments/{ins2}/results", serde.dumps(result("mq-spoofed")))  # not its topic: dropped
    deadline = time.monotonic() + 30
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(items) < 2:
        items = [it for r in kcat(e.settings, e.topics.rapid_tests) for it in r["items"]]
        time.sleep(0.5)
    assert [(it["result_id"], it["instrument"], it["site"]) for it in items] == [
        ("mq-1", ins, SITE),
        ("mq-2", ins, SITE),
    ]
    letters = kcat(e.settings, e.topics.deadletter)
    assert [(d["source"], d["instrument"], d["index"], d["reason_code"]) for d in letters] == [
        ("mqtt", ins, 2, "wrong_type")
    ]
    # The spoofed publish never reached the bridge: a moment later still only the two results.
    time.sleep(1.0)
    assert len([it for r in kcat(e.settings, e.topics.rapid_tests) for it in r["items"]]) == 2


async def test_larder_record_captures_rapid_test_requests(
    env: tuple[IngestEnv, dict[str, str]], tmp_path: Path
) -> None:
    """`larder record` (the CLI, a process) writes what instruments posted to the real hook, accepted or refused,
    as contract-3 ``rapid_test`` lines whose bodies are the requests' results."""
    import os
    import signal

    from pipeline.contracts.replay import Line
    from pipeline.services import larder_argv

    e, instruments = env
    ins, secret = next(iter(instruments.items()))
    port = free_port()
    e.hooks(port)
    out, log = tmp_path / "recording.jsonl", tmp_path / "record.log"
    with log.open("wb") as fh:
        rec = subprocess.Popen(
            [*larder_argv(), "record", "--out", str(out), "--topic-prefix", e.topics.prefix],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )
    try:
        deadline = time.monotonic() + 30
        while "recording to" not in log.read_text():
            assert rec.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        one = result(f"r-{uuid.uuid4().hex[:6]}")
        batch = {"results": [result("b-1", stage="recheck"), result("b-2", result="negative", value=9.5)]}
        bad = {**result("bad-1"), "tested_at": "not a time"}
        for doc in (one, batch, bad):
            body = serde.dumps(doc)
            now = str(int(time.time()))
            code, _ = curl(port, ins, now, openssl_signature(secret, now, body), body)
            assert code in (202, 400), code
        time.sleep(4.0)  # past the recorder's 3 s reorder window
    finally:
        rec.send_signal(signal.SIGINT)
        assert rec.wait(30) == 0, log.read_text()
    lines = [Line.parse(x) for x in out.read_bytes().splitlines() if x.strip()]
    rapid = [x for x in lines if x.kind == "rapid_test"]
    assert [x.source for x in rapid] == [ins, ins, ins], log.read_text()
    # Accepted: the results as posted (the hook's enrichment removed; tested_at in UTC, the same instant).
    got_one, got_batch, got_bad = (x.body for x in rapid)
    assert {k: v for k, v in got_one.items() if k != "tested_at"} == {k: v for k, v in one.items() if k != "tested_at"}
    from datetime import datetime

    def instant(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    assert instant(got_one["tested_at"]) == instant(one["tested_at"])
    assert [{k: v for k, v in r.items() if k != "tested_at"} for r in got_batch["results"]] == [
        {k: v for k, v in r.items() if k != "tested_at"} for r in batch["results"]
    ]
    assert got_bad == bad, "a refused request is recorded as it was sent"
    assert "3 rapid-test requests" in log.read_text()
