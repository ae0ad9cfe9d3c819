"""The MQTT edge against the real Mosquitto 2.0.11 and Kafka (issue 27): one device's credential must not hurt
anyone else's data, and nothing revokes devices silently. One test per finding of the issue; each failed on the
code before it (reasons in the docstrings)."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from pipeline.settings import Settings
from pipeline.siteconfig import write_site_file
from pipeline.stack import logins
from pipeline.testing import LARDER, IngestEnv, device_payload, ingest_site_doc, register_in_broker
from tests.integration.ingest_support import Flood, Readings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class Client:
    """A paho client that records what it receives and whether its connection was ever lost."""

    def __init__(self, settings: Settings, user: str, password: str, client_id: str = "", clean: bool = True) -> None:
        self.received: list[str] = []
        self.granted: list[Any] = []
        self.lost = threading.Event()
        self.connected = threading.Event()
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"c-{uuid.uuid4().hex[:6]}", clean_session=clean
        )
        self.c.username_pw_set(user, password)
        self.c.on_message = lambda c, u, m: self.received.append(m.topic)
        self.c.on_connect = lambda c, u, f, rc, p: self.connected.set() if not rc.is_failure else None
        self.c.on_disconnect = lambda c, u, f, rc, p: self.lost.set()
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.granted.extend(rcs)
        self.c.connect(settings.mqtt.host, settings.mqtt.port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(5), f"{user} could not log in"

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _flood(env: IngestEnv, devices: list[tuple[str, str]], per_device: int) -> Flood:
    return Flood(env.settings, devices, per_device).start()


async def test_a_device_subscribing_anywhere_receives_nothing_and_takes_nothing(env: IngestEnv) -> None:
    """Finding 1. Before: the bridge's default shared group was ``larder``; a device subscribed to
    ``$share/larder/...`` took its turn of every reading (the broker dropped it, as the device may not read
    it): half the flood never reached Kafka. Now the group is a secret and shared mode opt-in; Mosquitto
    2.0.11's acl_file grants every SUBACK (it does not check SUBSCRIBE) but delivers a device nothing."""
    env.bridge(LARDER_INGEST__BRIDGE_SHARED="true", LARDER_INGEST__BRIDGE_GROUP="")  # shared, secret group
    (thief, (_, thief_secret)), *others = list(env.devices.items())
    spy = Client(env.settings, thief, thief_secret)
    filters = [
        "$share/larder/larder/v1/devices/+/readings",  # the old default group
        f"$share/{env.group}/larder/v1/devices/+/readings",
        "larder/v1/devices/+/readings",
        "#",
        "$SYS/#",
    ]
    spy.c.subscribe([(f, 1) for f in filters])
    time.sleep(0.5)
    per_device = 1_000
    _flood(env, [(d, s) for d, (_, s) in others], per_device).wait()
    got = await Readings().until(env.settings, env.topics, len(others) * per_device, timeout=30)
    time.sleep(0.5)
    spy.close()
    assert spy.received == [], f"a device received {len(spy.received)} messages, e.g. {spy.received[:3]}"
    want = {(d, s) for d, _ in others for s in range(per_device)}
    assert want <= set(got.pairs), f"{len(want - set(got.pairs))} readings lost to a device's subscription"
    print(f"SUBACK codes granted by Mosquitto 2.0.11 (acl_file does not check SUBSCRIBE): {spy.granted}")


async def test_a_device_cannot_take_over_the_bridge_session(env: IngestEnv) -> None:
    """Finding 2. Before: a device logging in with client id ``larder-bridge-1`` closed the bridge's connection
    and took its session (250 readings lost). Now the broker makes every client id its user name, and each
    bridge instance is a user of its own: the device's login cannot touch the bridge's session."""
    instance = f"own-{env.group}"
    bridge = env.bridge(instance=instance)
    (thief, (_, thief_secret)), *others = list(env.devices.items())
    per_device = 2_000
    flood = _flood(env, [(d, s) for d, (_, s) in others], per_device)
    user, _ = env.settings.mqtt.bridge_login(instance)
    ids = (user, f"larder-bridge-{instance}", "larder-bridge-1")
    intruders = [Client(env.settings, thief, thief_secret, client_id=cid) for cid in ids]
    flood.wait()
    got = await Readings().until(env.settings, env.topics, len(others) * per_device, timeout=30)
    for c in intruders:
        c.close()
    want = {(d, s) for d, _ in others for s in range(per_device)}
    assert want <= set(got.pairs), f"{len(want - set(got.pairs))} readings lost"
    log = bridge.log.read_text()
    assert "connection lost" not in log, log[-2000:]
    assert log.count("connected to mqtt") == 1


def _stack_up(env: IngestEnv, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [LARDER, "stack", "up", *args]
    return subprocess.run(argv, env=env.env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


async def test_stack_up_keeps_registrations_and_shrinks_only_when_told(env: IngestEnv, tmp_path: Path) -> None:
    """Finding 3. Before: ``stack up`` without ``--sites`` rewrote the password file with the bridge alone, and
    ``stack up --sites other.yaml`` with that file's devices alone: every other device was kicked and refused."""
    dev, (_, secret) = next(iter(env.devices.items()))
    device = Client(env.settings, dev, secret, clean=False)
    try:
        plain = _stack_up(env)
        assert plain.returncode == 0, plain.stderr
        # Another site file, registered next to the first one's devices.
        other = tmp_path / "other"
        other.mkdir()
        newcomer = (f"o-{uuid.uuid4().hex[:8]}", ("a1", f"secret-{uuid.uuid4().hex[:12]}"))
        write_site_file(other / "sites.yaml", ingest_site_doc(dict([newcomer]), {}))
        grown = _stack_up(env, "--sites", str(other))
        assert grown.returncode == 0, grown.stderr
        assert "1 devices added" in " ".join(grown.stderr.split()), grown.stderr
        probe = Client(env.settings, newcomer[0], newcomer[1][1])
        probe.close()
        # The newcomer leaves that file: without --yes its login stays and the command says so.
        write_site_file(other / "sites.yaml", ingest_site_doc({}, {}))
        kept = _stack_up(env, "--sites", str(other))
        said = " ".join(kept.stderr.split())
        assert kept.returncode == 0 and newcomer[0] in said and "--yes" in said, kept.stderr
        assert newcomer[0] in logins.registered(env.settings)[0]
        revoked = _stack_up(env, "--sites", str(other), "--yes")
        assert revoked.returncode == 0 and f"revoked {newcomer[0]}" in " ".join(revoked.stderr.split())
        assert newcomer[0] not in logins.registered(env.settings)[0]
        # Through all of it the first device stayed connected and is still accepted.
        assert not device.lost.is_set(), "a registered device was disconnected"
        topic = f"larder/v1/devices/{dev}/readings"
        published = device.c.publish(topic, device_payload(0), qos=1)
        published.wait_for_publish(5)  # returns at the broker's PUBACK, or quietly after 5 s
        assert published.is_published(), "the broker did not acknowledge the registered device's reading"
    finally:
        device.close()
    assert dev in logins.registered(env.settings)[0]


@pytest.mark.parametrize("verb", ["bridge", "hooks"])
def test_a_service_exits_at_start_on_a_broken_site_file(env: IngestEnv, tmp_path: Path, verb: str) -> None:
    """Finding 5. Before: the bridge started with zero devices ("keeping the previous one" when there was none)
    and would have dead-lettered every reading as unknown_device."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nsites:\n  S1:\n    assets:\n      a1: { profile: chilled }\n    devices:\n"
                      "      d1: { asset: a9, secret: 'long-enough-secret' }\n")  # fmt: skip
    environ = env.env(LARDER_SITE_CONFIG=str(broken))
    out = subprocess.run([LARDER, verb, "--port", "0"] if verb == "hooks" else [LARDER, verb, "--instance", "x"],
                         env=environ, capture_output=True, text=True, timeout=30)  # fmt: skip
    said = " ".join(out.stderr.split()) + out.stdout
    assert out.returncode == 1, said
    assert re.search(rf"{re.escape(str(broken))}:\d+: sites\.S1: .*'a9'", said), said
    assert "Traceback" not in said
    if verb == "bridge":  # the same load path for both; one process start less in CI
        missing = subprocess.run([LARDER, verb], env=env.env(LARDER_SITE_CONFIG=str(tmp_path / "nope.yaml")),
                                 capture_output=True, text=True, timeout=30)  # fmt: skip
        assert missing.returncode == 1 and "no such site configuration file" in " ".join(missing.stderr.split())


def test_register_adds_only(live_stack: Settings) -> None:
    """`larder replay`, tests and `devices add` register through one authority that never drops anyone."""
    a = {f"ra-{uuid.uuid4().hex[:8]}": "secret-aaaaaaaa"}
    b = {f"rb-{uuid.uuid4().hex[:8]}": "secret-bbbbbbbb"}
    register_in_broker(live_stack, a)
    register_in_broker(live_stack, b)
    known = logins.registered(live_stack)[0]
    assert set(a) | set(b) <= set(known)


def _pub(settings: Settings, user: str, password: str, payload: bytes) -> subprocess.CompletedProcess[bytes]:
    """The real mosquitto_pub, QoS 1: exit 0 means the broker acknowledged the message."""
    argv = ["mosquitto_pub", "-h", settings.mqtt.host, "-p", str(settings.mqtt.port), "-u", user, "-P", password]
    argv += ["-q", "1", "-t", f"larder/v1/devices/{user}/readings", "-s"]
    return subprocess.run(argv, input=payload, capture_output=True, timeout=20)


HOSTILE: list[tuple[str, bytes, str]] = [
    ("ts -1", b'{"ts": -1, "seq": 1, "temp_c": 3}', "bad_timestamp"),
    ("utf-8 BOM", b'\xef\xbb\xbf{"ts": 1795290000, "seq": 2, "temp_c": 3}', "not_json"),
    ("encoded surrogate", b'{"ts": 1795290000, "seq": 3, "temp_c": 3, "x": "\xed\xa0\x80"}', "not_json"),
    ("escaped lone surrogate", b'{"ts": 1795290000, "seq": 4, "temp_c": NaN, "x": "\\ud800"}', "not_json"),
    ("nested 200,000 deep", b"[" * 200_000 + b"]" * 200_000, "too_deep"),
    ("600 KiB", b'{"ts": 1795290000, "seq": 6, "temp_c": 3, "x": "' + b"y" * 600 * 1024 + b'"}', "too_large"),
]


async def test_hostile_payloads_are_dead_lettered_with_their_reason_and_no_traceback(env: IngestEnv) -> None:
    """Finding 6. Before: ts -1 was stored at 1969, BOM and surrogates accepted, deep nesting dead-lettered as
    ``invalid`` with a RecursionError traceback in the log, and a 600 KiB message made Mosquitto disconnect
    the device (mosquitto_pub failed; the device sent it again for ever)."""
    import base64

    from pipeline.schemas import MAX_MESSAGE_BYTES
    from pipeline.testing import read_all
    from tests.integration.ingest_support import dead_letters

    bridge = env.bridge()
    dev, (_, secret) = next(iter(env.devices.items()))
    for name, payload, _ in HOSTILE:
        out = _pub(env.settings, dev, secret, payload)
        assert out.returncode == 0, f"{name}: the broker did not take it: {out.stderr.decode()}"
    assert _pub(env.settings, dev, secret, device_payload(99)).returncode == 0
    letters = await dead_letters(env.settings, env.topics, len(HOSTILE), timeout=30)
    assert [d["reason_code"] for d in letters] == [code for _, _, code in HOSTILE]
    for (name, payload, _), d in zip(HOSTILE, letters, strict=True):
        assert base64.b64decode(d["payload_b64"]) == payload[:MAX_MESSAGE_BYTES], name
    got = await Readings().until(env.settings, env.topics, 1, timeout=20)
    assert list(got.pairs) == [(dev, 99)], "only the good reading is in"
    assert len(await read_all(env.settings, env.topics.deadletter)) == len(HOSTILE)
    log = bridge.log.read_text()
    assert "Traceback" not in log and "RecursionError" not in log, log[-3000:]


def test_hooks_require_application_json(env: IngestEnv) -> None:
    """Finding 6. Before: a correctly signed body sent as text/plain was accepted (202)."""
    from pipeline.ingest.hooks import sign
    from pipeline.testing import free_port

    port = free_port()
    env.hooks(port)
    camera, (_, secret) = next(iter(env.cameras.items()))
    body = b'{"event_id": "e1", "ts": "2026-11-22T11:30:05Z", "type": "stove_on"}'
    ts = str(int(time.time()))

    def post(content_type: str) -> tuple[int, str]:
        argv = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", "--data-binary", "@-"]
        argv += ["-H", f"Content-Type: {content_type}", "-H", f"X-Larder-Camera: {camera}"]
        argv += ["-H", f"X-Larder-Timestamp: {ts}", "-H", f"X-Larder-Signature: {sign(secret.encode(), ts, body)}"]
        out = subprocess.run([*argv, f"http://127.0.0.1:{port}/v1/kitchen/events"], input=body,
                             capture_output=True, timeout=30).stdout.decode()  # fmt: skip
        text, _, code = out.rpartition("\n")
        return int(code), text

    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        code, text = post(content_type)
        assert code == 415 and "unsupported_media_type" in text, (content_type, code, text)
    assert post("application/json; charset=utf-8")[0] == 202
