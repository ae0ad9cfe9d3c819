"""The pure parts of the RabbitMQ MQTT tier (issue 26): topic mapping, cumulative acks, permissions.

The tier against real services (3-node cluster, MQTT devices, kill -9 of the queue leader) is measured by
``benchmarks/mqtt_tier.py``; forming a fresh cluster takes ~80 s here, over the budget of an integration test.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from pipeline.ingest.amqp_bridge import _ChannelAcks, mqtt_topic
from pipeline.ingest.bridge import device_of
from pipeline.stack import rabbitmq


def test_routing_keys_map_back_to_the_device_topic_even_with_dots_in_the_id() -> None:
    for device in ("dev-1", "dev.2", "a.b.c"):
        topic = mqtt_topic(rabbitmq.routing_key(device))
        assert topic == f"larder/v1/devices/{device}/readings"
        assert device_of(topic) == device


def test_other_routing_keys_stay_unmapped_so_the_bridge_dead_letters_them() -> None:
    for key in ("larder.v1.devices..readings", "larder.v1.other.dev-1.readings", "x"):
        assert device_of(mqtt_topic(key)) is None


def test_acks_go_out_only_up_to_the_first_unfinished_delivery() -> None:
    acks = _ChannelAcks(channel=None)  # type: ignore[arg-type]
    acks.done |= {2, 3}
    assert acks.advance() is None  # 1 is still with Kafka: acking 3 "multiple" would ack it too
    acks.done.add(1)
    assert acks.advance() == 3
    acks.done |= {5, 6}
    assert acks.advance() is None
    acks.done.add(4)
    assert acks.advance() == 6
    assert not acks.done


def _definitions() -> dict[str, Any]:
    return rabbitmq.definitions({"a": "secret-a1", "a.b": "secret-ab", "c": "secret-c1"}, "larder-bridge", "bpw")


def test_a_device_may_write_only_its_own_routing_key() -> None:
    perms = {p["user"]: re.compile(p["write"]) for p in _definitions()["topic_permissions"]}
    assert set(perms) == {"a", "a.b", "c"}
    assert perms["a"].search(rabbitmq.routing_key("a"))
    assert not perms["a"].search(rabbitmq.routing_key("c"))
    assert not perms["a"].search(rabbitmq.routing_key("a.b"))  # a prefix of another id
    assert perms["a.b"].search(rabbitmq.routing_key("a.b"))
    assert not perms["a.b"].search(rabbitmq.routing_key("aXb"))  # the dot is escaped, not "any character"


def test_devices_cannot_read_or_declare_and_the_bridge_can_only_consume() -> None:
    d = _definitions()
    by_user = {p["user"]: p for p in d["permissions"]}
    for dev in ("a", "a.b", "c"):
        assert by_user[dev]["configure"] == "^$" and by_user[dev]["read"] == "^$"
        assert re.search(by_user[dev]["write"], "amq.topic") and not re.search(by_user[dev]["write"], "amq.direct")
    bridge = by_user["larder-bridge"]
    assert bridge["configure"] == "^$" and bridge["write"] == "^$"
    assert re.search(bridge["read"], rabbitmq.QUEUE) and not re.search(bridge["read"], "other")


def test_the_readings_queue_is_a_replicated_quorum_queue_bound_for_every_device() -> None:
    d = _definitions()
    (queue,) = d["queues"]
    assert queue["arguments"]["x-queue-type"] == "quorum" and queue["durable"]
    (binding,) = d["bindings"]
    assert binding["source"] == "amq.topic" and binding["destination"] == rabbitmq.QUEUE
    # amq.topic semantics: '#' matches any number of words, so a dotted id is routed too.
    assert binding["routing_key"] == "larder.v1.devices.#"


def test_password_hash_is_rabbitmq_sha256_format() -> None:
    h = base64.b64decode(rabbitmq.hash_password("s3cret-pw", salt=b"\x01\x02\x03\x04"))
    assert h[:4] == b"\x01\x02\x03\x04"
    assert h[4:] == hashlib.sha256(b"\x01\x02\x03\x04" + b"s3cret-pw").digest()
    assert rabbitmq.hash_password("x") != rabbitmq.hash_password("x")  # salted
