"""Each service of the local stack is the real thing and reachable from Python the way Larder uses it."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable

import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from influxdb_client import InfluxDBClient, Point
from influxdb_client.client.write_api import SYNCHRONOUS

from pipeline.settings import Settings
from pipeline.stack import logins
from pipeline.topics import Topics
from tests.conftest import MqttCredentials

pytestmark = pytest.mark.integration


async def test_kafka_produce_and_consume(live_stack: Settings, topics: Topics) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=live_stack.kafka.bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        sent = [await producer.send_and_wait(topics.readings, f"v{i}".encode(), key=b"dev-1") for i in range(10)]
    finally:
        await producer.stop()
    assert len({md.partition for md in sent}) == 1, "one key, one partition"
    consumer = AIOKafkaConsumer(
        topics.readings,
        bootstrap_servers=live_stack.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=f"g-{uuid.uuid4().hex[:6]}",
    )
    await consumer.start()
    try:
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < 10 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    assert got == [f"v{i}".encode() for i in range(10)]


def test_influx_v2_write_and_flux_query(live_stack: Settings, influx_bucket: str) -> None:
    i = live_stack.influx
    with InfluxDBClient(url=i.base_url, token=i.token_value(), org=i.org) as client:
        assert client.health().status == "pass"
        client.write_api(write_options=SYNCHRONOUS).write(
            influx_bucket,
            record=[
                Point("reading").tag("device", "dev-1").field("temp_c", 3.5).time(1_700_000_000_000_000_000),
                Point("reading").tag("device", "dev-1").field("temp_c", 4.5).time(1_700_000_001_000_000_000),
            ],
        )
        tables = client.query_api().query(
            f'from(bucket: "{influx_bucket}") |> range(start: 2023-01-01T00:00:00Z) '
            '|> filter(fn: (r) => r._measurement == "reading") |> mean()'
        )
    values = [rec.get_value() for t in tables for rec in t.records]
    assert values == [4.0]


def test_influx_refuses_a_wrong_token(live_stack: Settings, influx_bucket: str) -> None:
    from influxdb_client.rest import ApiException

    with (
        InfluxDBClient(url=live_stack.influx.base_url, token="larder:wrong", org="-") as client,
        pytest.raises(ApiException) as err,
    ):
        client.write_api(write_options=SYNCHRONOUS).write(influx_bucket, record="reading temp_c=1")
    assert err.value.status == 401


def _subscribe(settings: Settings, topic: str) -> tuple[mqtt.Client, list[tuple[str, bytes | bytearray]]]:
    got: list[tuple[str, bytes | bytearray]] = []
    ready = threading.Event()
    instance = f"smoke-{uuid.uuid4().hex[:6]}"
    logins.register_bridges(settings, [instance])  # a bridge instance's login: the one kind that may read
    user, password = settings.mqtt.bridge_login(instance)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user)
    c.username_pw_set(user, password)
    c.on_message = lambda _c, _u, msg: got.append((msg.topic, msg.payload))
    c.on_subscribe = lambda *_a: ready.set()
    c.on_connect = lambda cl, *_a: cl.subscribe(topic, qos=1)
    c.connect(settings.mqtt.host, settings.mqtt.port)
    c.loop_start()
    assert ready.wait(5), "bridge user could not subscribe"
    return c, got


def _pub(settings: Settings, user: str, password: str, topic: str, payload: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            settings.mqtt.host,
            "-p",
            str(settings.mqtt.port),
            "-u",
            user,
            "-P",
            password,
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
            "-i",
            f"pub-{uuid.uuid4().hex[:6]}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )


def test_device_publishes_with_mosquitto_pub_and_bridge_receives(
    live_stack: Settings, mqtt_devices: Callable[[int], list[MqttCredentials]]
) -> None:
    (dev,) = mqtt_devices(1)
    topic = f"larder/v1/devices/{dev.username}/readings"
    client, got = _subscribe(live_stack, topic)
    try:
        r = _pub(live_stack, dev.username, dev.password, topic, '{"ts": 1, "seq": 1, "temp_c": 3.4}')
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    assert got == [(topic, b'{"ts": 1, "seq": 1, "temp_c": 3.4}')]


def test_impersonation_and_wrong_password_are_refused(
    live_stack: Settings, mqtt_devices: Callable[[int], list[MqttCredentials]]
) -> None:
    a, b = mqtt_devices(2)
    b_topic = f"larder/v1/devices/{b.username}/readings"
    client, got = _subscribe(live_stack, "larder/v1/devices/+/readings")
    try:
        # A publishes on B's topic: MQTT 3.1.1 gives no error, the broker silently drops it (ACL).
        assert _pub(live_stack, a.username, a.password, b_topic, '{"forged": true}').returncode == 0
        wrong = _pub(live_stack, b.username, "not-the-secret", b_topic, '{"forged": true}')
        # A control message from B itself proves the subscription works and orders after the forgeries.
        assert _pub(live_stack, b.username, b.password, b_topic, '{"genuine": true}').returncode == 0
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        client.loop_stop()
        client.disconnect()
    assert wrong.returncode != 0 and "not authorised" in (wrong.stderr + wrong.stdout).lower()
    assert got == [(b_topic, b'{"genuine": true}')]
