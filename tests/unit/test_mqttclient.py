"""BufferedClient: paho's parser over chunked socket reads (pipeline/ingest/mqttclient.py)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from pipeline.ingest.mqttclient import BufferedClient, Publish


def publish(topic: str, payload: bytes, mid: int, *, dup: bool = False) -> bytes:
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + struct.pack("!H", mid) + payload
    return bytes([0x3A if dup else 0x32]) + remaining_length(len(body)) + body


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def client_on(sock: socket.socket, seen: list[tuple[str, bytes | bytearray]]) -> BufferedClient:
    c = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id="t", manual_ack=True)
    c.on_message = lambda _c, _u, m: seen.append((m.topic, m.payload))
    sock.setblocking(False)
    c._sock = sock  # what connect() would have set; the parser is all we exercise here
    return c


def test_one_wakeup_handles_every_packet_the_kernel_had() -> None:
    """paho alone parses one packet per select() wake-up; the rest would sit in our buffer unsignalled."""
    a, b = socket.socketpair()
    seen: list[tuple[str, bytes | bytearray]] = []
    c = client_on(a, seen)
    b.sendall(b"".join(publish(f"larder/v1/devices/d{i}/readings", b'{"seq": %d}' % i, i + 1) for i in range(50)))
    assert c.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert [t for t, _ in seen] == [f"larder/v1/devices/d{i}/readings" for i in range(50)]
    assert seen[49][1] == b'{"seq": 49}'


def test_a_packet_split_across_reads_is_completed_by_the_next_one() -> None:
    a, b = socket.socketpair()
    seen: list[tuple[str, bytes | bytearray]] = []
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
    seen: list[tuple[str, bytes | bytearray]] = []
    c = client_on(a, seen)
    b.sendall(publish("larder/v1/devices/x/readings", b"one", 1)[:5])
    c.loop_read()
    c._sock_close()
    assert c._rpos >= len(c._rbuf)


class Recorder:
    """What a client delivered, in delivery order: paho's own callback and the batches."""

    def __init__(self) -> None:
        self.paho: list[tuple[str, bytes | bytearray]] = []
        self.batches: list[list[Publish]] = []
        self.order: list[str] = []

    def on_message(self, _c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        self.paho.append((m.topic, m.payload))
        self.order.append(m.topic)

    def on_publishes(self, batch: list[Publish]) -> None:
        self.batches.append(batch)
        self.order += [t for t, *_ in batch]


def batched_client(sock: socket.socket, rec: Recorder) -> BufferedClient:
    c = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id="t", manual_ack=True, on_publishes=rec.on_publishes)
    c.on_message = rec.on_message
    sock.setblocking(False)
    c._sock = sock
    return c


@pytest.fixture
def wire() -> Iterator[tuple[socket.socket, Recorder, BufferedClient]]:
    """The broker's end of a socket pair, and a batching client on the other end with its recorder."""
    a, b = socket.socketpair()
    rec = Recorder()
    yield b, rec, batched_client(a, rec)
    a.close()
    b.close()


def test_publishes_in_one_read_are_handed_over_as_one_batch(
    wire: tuple[socket.socket, Recorder, BufferedClient],
) -> None:
    b, rec, c = wire
    b.sendall(b"".join(publish(f"larder/v1/devices/d{i}/readings", b'{"seq": %d}' % i, i + 1) for i in range(50)))
    assert c.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    # paho parses the packet that starts the read; the other 49 come in one list, in wire order.
    assert len(rec.paho) == 1 and len(rec.batches) == 1 and len(rec.batches[0]) == 49
    assert rec.batches[0][0] == ("larder/v1/devices/d1/readings", b'{"seq": 1}', 2, 1, False)
    assert rec.order == [f"larder/v1/devices/d{i}/readings" for i in range(50)]


def test_batched_decoding_matches_paho_for_long_payloads_and_dup_flags(
    wire: tuple[socket.socket, Recorder, BufferedClient],
) -> None:
    b, rec, c = wire
    big = b"x" * 20_000  # a three-byte remaining length
    b.sendall(publish("t/first", b"1", 1) + publish("t/big", big, 65535, dup=True) + publish("t/\u00e9", b"", 3))
    c.loop_read()
    assert rec.batches == [[("t/big", big, 65535, 1, True), ("t/\u00e9", b"", 3, 1, False)]]


def test_other_packets_go_through_paho_in_wire_order(wire: tuple[socket.socket, Recorder, BufferedClient]) -> None:
    b, rec, c = wire
    qos0 = b"\x30" + remaining_length(2 + 4 + 4) + struct.pack("!H", 4) + b"t/q0" + b"zero"
    b.sendall(publish("t/a", b"a", 1) + publish("t/b", b"b", 2) + qos0 + publish("t/c", b"c", 3))
    c.loop_read()
    assert rec.order == ["t/a", "t/b", "t/q0", "t/c"]
    assert rec.paho == [("t/a", b"a"), ("t/q0", b"zero")]


def test_a_publish_split_across_reads_is_left_to_paho(wire: tuple[socket.socket, Recorder, BufferedClient]) -> None:
    b, rec, c = wire
    stream = b"".join(publish(f"t/{i}", b"p%d" % i, i + 1) for i in range(4))
    cut = len(stream) - 3
    b.sendall(stream[:cut])
    c.loop_read()
    assert rec.order == ["t/0", "t/1", "t/2"]
    b.sendall(stream[cut:])
    c.loop_read()
    assert rec.order == ["t/0", "t/1", "t/2", "t/3"]
    assert rec.paho == [("t/0", b"p0"), ("t/3", b"p3")]


def test_a_malformed_publish_is_paho_s_protocol_error(wire: tuple[socket.socket, Recorder, BufferedClient]) -> None:
    b, rec, c = wire
    empty_topic = b"\x32\x04" + struct.pack("!H", 0) + struct.pack("!H", 7)
    b.sendall(publish("t/a", b"a", 1) + empty_topic)
    assert c.loop_read() != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert rec.order == ["t/a"] and rec.batches == []


def test_mqtt5_and_auto_ack_clients_keep_paho_s_path() -> None:
    v5 = BufferedClient(
        mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True, on_publishes=lambda b: None
    )
    auto = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id="t", on_publishes=lambda b: None)
    assert v5._on_publishes is None and auto._on_publishes is None
