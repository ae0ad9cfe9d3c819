"""Helpers for the ingestion tests: a QoS 1 flood publisher and readers of the readings and dead-letter topics.

The site file of fresh devices, the real `larder bridge` / `larder hooks` processes and the Kafka readers are
:mod:`pipeline.testing`'s (re-exported here for the tests that take them from this module)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt

from pipeline import serde
from pipeline.settings import Settings
from pipeline.testing import LARDER as LARDER
from pipeline.testing import IngestEnv as IngestEnv
from pipeline.testing import Proc as Proc
from pipeline.testing import Readings as Readings
from pipeline.testing import clear_session as clear_session
from pipeline.testing import consume, device_payload
from pipeline.testing import free_port as free_port
from pipeline.testing import make_env as make_env
from pipeline.testing import register_in_broker as register_in_broker
from pipeline.topics import Topics


class Flood:
    """QoS 1 publishers, one paho client (thread) per device, persistent sessions so they survive a broker
    restart. ``sent`` counts PUBACKs from the broker."""

    def __init__(
        self, settings: Settings, devices: Iterable[tuple[str, str]], per_device: int, start_seq: int = 0
    ) -> None:
        self.settings = settings
        self.devices = list(devices)
        self.per_device = per_device
        self.start_seq = start_seq
        self.sent = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []

    @property
    def total(self) -> int:
        return len(self.devices) * self.per_device

    def start(self) -> Flood:
        for dev, secret in self.devices:
            t = threading.Thread(target=self._run, args=(dev, secret), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self, dev: str, secret: str) -> None:
        done = threading.Event()
        acked = 0

        def on_publish(client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
            nonlocal acked
            acked += 1
            with self._lock:
                self.sent += 1
            if acked == self.per_device:
                done.set()

        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{dev}-{uuid.uuid4().hex[:4]}", clean_session=False
        )
        c.username_pw_set(dev, secret)
        c.max_inflight_messages_set(500)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, 1)  # paho takes whole seconds
        c.on_publish = on_publish
        c.connect(self.settings.mqtt.host, self.settings.mqtt.port, keepalive=30)
        c.loop_start()
        topic = f"larder/v1/devices/{dev}/readings"
        ts = round(time.time(), 3)
        for seq in range(self.start_seq, self.start_seq + self.per_device):
            c.publish(topic, device_payload(seq, ts), qos=1)
        if not done.wait(180):
            self.errors.append(f"{dev}: only {acked} of {self.per_device} acknowledged by the broker")
        c.disconnect()
        c.loop_stop()

    def wait(self, timeout: float = 180) -> None:
        for t in self._threads:
            t.join(timeout)
        assert not self.errors, self.errors


async def dead_letters(settings: Settings, topics: Topics, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    await consume(
        settings, topics.deadletter, lambda r: got.append(serde.loads(r.value)), lambda: len(got) >= n, timeout
    )
    return got


def openssl_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The signature of a signed hook as a camera or instrument vendor's shell script would compute it."""
    out = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", secret],
        input=timestamp.encode() + b"." + body,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return "sha256=" + out.strip().rsplit(" ", 1)[-1]


def curl_signed(
    port: int,
    path: str,
    sender: tuple[str, str],
    timestamp: str,
    signature: str,
    body: bytes,
    content_type: str = "application/json",
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to a signed-hook route of `larder hooks` with the real `curl`; ``sender`` is the
    (header, id) pair, e.g. ``("X-Larder-Camera", "cam-1")``. Returns (HTTP status, JSON answer)."""
    header, sender_id = sender
    out = subprocess.run(
        [
            *("curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"),
            f"http://127.0.0.1:{port}{path}",
            *("-H", f"Content-Type: {content_type}", "-H", f"{header}: {sender_id}"),
            *("-H", f"X-Larder-Timestamp: {timestamp}", "-H", f"X-Larder-Signature: {signature}"),
            "--data-binary",
            "@-",
        ],
        input=body,
        capture_output=True,
        timeout=30,
    ).stdout.decode()
    text, _, code = out.rpartition("\n")
    return int(code), json.loads(text)
