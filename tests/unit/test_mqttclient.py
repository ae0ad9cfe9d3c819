"""BufferedClient: paho's parser over chunked socket reads (pipeline/ingest/mqttclient.py)."""

from __future__ import annotations

import socket
import struct

import paho.mqtt.client as mqtt

from pipeline.ingest.mqttclient import BufferedClient


def publish(topic: str, payload: bytes, mid: int) -> bytes:
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + struct.pack("!H", mid) + payload
    assert len(body) < 128
    return bytes([0x32, len(body)]) + body


def client_on(sock: socket.socket, seen: list[tuple[str, bytes]]) -> BufferedClient:
    c = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id="t", manual_ack=True)
    c.on_message = lambda _c, _u, m: seen.append((m.topic, m.payload))
    sock.setblocking(False)
    c._sock = sock  # what connect() would have set; the parser is all we exercise here
    return c


def test_one_wakeup_handles_every_packet_the_kernel_had() -> None:
    """paho alone parses one packet per select() wake-up; the rest would sit in our buffer unsignalled."""
    a, b = socket.socketpair()
    seen: list[tuple[str, bytes]] = []
    c = client_on(a, seen)
    b.sendall(b"".join(publish(f"larder/v1/devices/d{i}/readings", b'{"seq": %d}' % i, i + 1) for i in range(50)))
    assert c.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert [t for t, _ in seen] == [f"larder/v1/devices/d{i}/readings" for i in range(50)]
    assert seen[49][1] == b'{"seq": 49}'


def test_a_packet_split_across_reads_is_completed_by_the_next_one() -> None:
    a, b = socket.socketpair()
    seen: list[tuple[str, bytes]] = []
    c = client_on(a, seen)
    first = publish("larder/v1/devices/x/readings", b"one", 1)
    second = publish("larder/v1/devices/y/readings", b"two", 2)
    wire = first + second
    b.sendall(wire[: len(first) + 3])  # the second packet's header and one byte of its body
    c.loop_read()
    assert seen == [("larder/v1/devices/x/readings", b"one")]
    b.sendall(wire[len(first) + 3 :])
    c.loop_read()
    assert seen[1] == ("larder/v1/devices/y/readings", b"two")


def test_closing_the_socket_discards_buffered_bytes() -> None:
    a, b = socket.socketpair()
    seen: list[tuple[str, bytes]] = []
    c = client_on(a, seen)
    b.sendall(publish("larder/v1/devices/x/readings", b"one", 1)[:5])
    c.loop_read()
    c._sock_close()
    assert c._rpos >= len(c._rbuf)
