"""`larder bridge` against the real Mosquitto and Kafka, fed by the real `mosquitto_pub`."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from pipeline import serde
from pipeline.partitioner import partition_for
from pipeline.settings import Settings
from pipeline.testing import LARDER, IngestEnv, free_port, read_all, register_in_broker
from pipeline.testing import device_payload as reading
from tests.integration.ingest_support import Readings, dead_letters

KCAT_FMT = "%p %k\n"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def pub(settings: Settings, user: str, password: str, payload: bytes, topic: str | None = None) -> int:
    """mosquitto_pub, the real client; returns its exit code."""
    return subprocess.run(
        [
            "mosquitto_pub",
            *("-h", settings.mqtt.host, "-p", str(settings.mqtt.port), "-u", user, "-P", password),
            *("-q", "1", "-t", topic or f"larder/v1/devices/{user}/readings", "-s"),
        ],
        input=payload,
        capture_output=True,
        timeout=10,
    ).returncode


async def test_reading_lands_enriched_in_its_device_partition(env: IngestEnv) -> None:
    port = free_port()
    env.bridge(LARDER_INGEST__BRIDGE_METRICS_PORT=str(port))
    (d0, (_, s0)), (d1, (_, s1)) = list(env.devices.items())[:2]
    # The device claims another site: site, asset and profile come from the registry, never from the device.
    assert pub(env.settings, d0, s0, reading(1, site="EVIL", asset="x", profile="y")) == 0
    assert pub(env.settings, d1, s1, serde.dumps({"readings": [serde.loads(reading(i)) for i in (5, 6, 7)]})) == 0
    got = await Readings().until(env.settings, env.topics, 4, timeout=20)
    by_dev = {(item["device"], item["seq"]): (p, item) for p, item in got.items}
    p, item = by_dev[(d0, 1)]
    assert (item["site"], item["asset"], item["profile"]) == ("S1", "a1", "chilled")
    assert p == partition_for(d0, env.topics.partitions)
    assert item["temp_c"] == 3.5 and item["received_ms"] >= item["ts_ms"] - 1000
    for seq in (5, 6, 7):
        p, item = by_dev[(d1, seq)]
        assert (item["site"], item["asset"], item["profile"]) == ("S2", "b1", "frozen")
        assert p == partition_for(d1, env.topics.partitions)
    # kcat, as an operator would look, finds the same record key in the same partition.
    out = subprocess.run(
        [
            "kcat",
            "-b",
            env.settings.kafka.bootstrap_servers,
            "-C",
            "-t",
            env.topics.readings,
            "-e",
            "-q",
            "-f",
            KCAT_FMT,
        ],
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout.split("\n")
    assert f"{partition_for(d0, env.topics.partitions)} {d0}" in out
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'larder_ingest_accepted_total{source="mqtt"} 4.0' in metrics
    assert "larder_ingest_produce_seconds_count" in metrics and "larder_ingest_inflight_messages" in metrics


async def test_foreign_topic_and_wrong_password_get_nothing_in(env: IngestEnv) -> None:
    env.bridge()
    (d0, (_, s0)), (d1, _) = list(env.devices.items())[:2]
    # Publishing to another device's topic: the ACL drops it (MQTT 3.1.1 gives the publisher no error).
    pub(env.settings, d0, s0, reading(100), topic=f"larder/v1/devices/{d1}/readings")
    assert pub(env.settings, d0, "wrong-password", reading(101)) != 0, "a wrong password is refused at connect"
    assert pub(env.settings, d1, s0, reading(102)) != 0, "another device's password does not work either"
    assert pub(env.settings, d0, s0, reading(103)) == 0  # the sentinel, sent last
    got = await Readings().until(env.settings, env.topics, 1, timeout=20)
    time.sleep(1.0)  # anything wrongly let through would have arrived before the sentinel; look again
    got = await Readings().until(env.settings, env.topics, 2, timeout=2)
    assert sorted(got.pairs) == [(d0, 103)]
    assert await read_all(env.settings, env.topics.deadletter) == []


MALFORMED: list[tuple[str, bytes, str]] = [
    ("not json", b"{not json", "not_json"),
    ("missing seq", b'{"ts": 1795290000, "temp_c": 3.5}', "missing_field"),
    ("wrong type", b'{"ts": 1795290000, "seq": "7", "temp_c": 3.5}', "wrong_type"),
    ("NaN", b'{"ts": 1795290000, "seq": 7, "temp_c": NaN}', "not_finite"),
    ("too hot", b'{"ts": 1795290000, "seq": 7, "temp_c": 120.0}', "out_of_range"),
    ("future", serde.dumps({"ts": time.time() + 3600, "seq": 7, "temp_c": 3.5}), "future_timestamp"),
    ("zoneless ts", b'{"ts": "2026-11-22T08:00:00", "seq": 7, "temp_c": 3.5}', "bad_timestamp"),
    ("batch too large", serde.dumps({"readings": [{"ts": 1795290000, "seq": i, "temp_c": 1} for i in range(1001)]}),
     "batch_too_large"),
]  # fmt: skip


async def test_malformed_payloads_are_dead_lettered_and_valid_ones_pass(env: IngestEnv, tmp_path: Path) -> None:
    port = free_port()
    env.bridge(LARDER_INGEST__BRIDGE_METRICS_PORT=str(port))
    dev, (_, secret) = next(iter(env.devices.items()))
    # An account the broker knows but the registry does not (e.g. removed from the site file).
    ghost = f"ghost-{dev}"
    register_in_broker(env.settings, {ghost: "ghost-secret-1"})
    seq = 0
    for _, payload, _ in MALFORMED:
        assert pub(env.settings, dev, secret, reading(seq)) == 0
        seq += 1
        assert pub(env.settings, dev, secret, payload) == 0
    # One bad reading inside a store-and-forward batch dead-letters that reading, not its batch.
    batch = [serde.loads(reading(s)) for s in (seq, seq + 1, seq + 2)]
    batch[1]["temp_c"] = "warm"
    assert pub(env.settings, dev, secret, serde.dumps({"readings": batch})) == 0
    assert pub(env.settings, ghost, "ghost-secret-1", reading(0)) == 0
    assert pub(env.settings, dev, secret, reading(seq + 3)) == 0

    expected = len(MALFORMED) + 2
    letters = await dead_letters(env.settings, env.topics, expected, timeout=20)
    assert [(d["reason_code"], d["device"], d["source"]) for d in letters[: len(MALFORMED)]] == [
        (code, dev, "mqtt") for _, _, code in MALFORMED
    ]
    for (_, payload, _), d in zip(MALFORMED, letters, strict=False):
        import base64

        assert base64.b64decode(d["payload_b64"]) == payload, "original bytes kept"
        assert d["reason"] and d["arrived_ms"] > 0 and d["mqtt_topic"] == f"larder/v1/devices/{dev}/readings"
    assert (letters[-2]["reason_code"], letters[-2]["index"]) == ("wrong_type", 1)
    assert (letters[-1]["reason_code"], letters[-1]["device"]) == ("unknown_device", ghost)
    assert len(await read_all(env.settings, env.topics.deadletter)) == expected, "no more, no fewer"

    got = await Readings().until(env.settings, env.topics, len(MALFORMED) + 3, timeout=20)
    assert sorted(got.pairs) == [(dev, s) for s in [*range(len(MALFORMED)), seq, seq + 2, seq + 3]]
    assert all(n == 1 for n in got.pairs.values())
    # Operators see the same counts, by reason, on /metrics.
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    reasons = Counter([code for _, _, code in MALFORMED] + ["wrong_type", "unknown_device"])
    for code, n in reasons.items():
        assert f'larder_ingest_deadlettered_total{{reason="{code}",source="mqtt"}} {n}.0' in metrics, code
    assert f'larder_ingest_accepted_total{{source="mqtt"}} {len(MALFORMED) + 3}.0' in metrics


async def test_devices_add_while_running_is_picked_up(env: IngestEnv) -> None:
    bridge = env.bridge()
    new = f"new-{next(iter(env.devices))}"
    out = subprocess.run(
        [LARDER, "devices", "add", new, "--site", "S2", "--asset", "b1"],
        env=env.env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    secret = out.stdout.strip()
    assert "# ingestion test site" in env.site_file.read_text(), "comments survive"
    assert secret not in bridge.log.read_text()
    # `devices add` registered the new device and nobody else's login changed (pipeline.stack.logins).
    deadline = time.monotonic() + 10
    while pub(env.settings, new, secret, reading(1)) != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    got = await Readings().until(env.settings, env.topics, 1, timeout=20)
    assert [(item["device"], item["site"], item["profile"]) for _, item in got.items] == [(new, "S2", "frozen")]
    old, (_, old_secret) = next(iter(env.devices.items()))
    assert pub(env.settings, old, old_secret, reading(1)) == 0, "a device registered elsewhere keeps its login"
    assert secret not in bridge.log.read_text(), "secrets never logged"


def test_cli_help_and_errors(live_stack: Settings, tmp_path: Path) -> None:
    for verb in (["bridge"], ["hooks"], ["devices", "add"], ["devices", "list"], ["devices", "rotate-secret"]):
        out = subprocess.run([LARDER, *verb, "--help"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "Usage" in out.stdout
    bad = tmp_path / "sites.yaml"
    bad.write_text("version: 1\nsites:\n  S1:\n    devices:\n      d1: { asset: nope, secret: 'x' }\n")
    out = subprocess.run([LARDER, "devices", "list", "--sites", str(bad)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert f"{bad}:5: sites.S1.devices.d1.secret" in out.stderr.replace("\n", "")
