"""A paho-mqtt client that reads its socket in large chunks and hands QoS 1 PUBLISHes over in batches.

paho 2.x reads one packet per ``select()`` wake-up (``loop_read`` handles ``len(_out_messages) +
len(_in_messages)`` packets, which is 1 for a QoS 1 subscriber that publishes nothing) and reads that packet
with one ``recv()`` for the command byte, one per remaining-length byte and one for the body: four or five
system calls per reading, most of the ~18 µs a message that makes paho the bridge's ceiling (STACK.md).

:class:`BufferedClient` changes only the I/O under paho's own packet parser: ``_sock_recv`` serves paho's
small reads from a 256 KiB buffer filled by one ``recv()``, and ``loop_read`` keeps parsing while whole
packets are already in memory, so one wake-up handles everything the kernel had. A partial packet left in the
buffer is completed by the next ``recv()`` (paho keeps its own partial-packet state), so ``select()`` is only
ever waited on when the buffer holds no complete packet.

With ``on_publishes`` set (MQTT 3.1.1, manual acks), the whole QoS 1 PUBLISHes already in the buffer skip
paho's per-packet path as well (its packet dict, ``MQTTMessage``, topic matcher and callback, ~10 µs a
message in py-spy, all of it holding the GIL the bridge's asyncio thread needs): they are decoded here, in one
tight loop, and delivered as one list per wake-up. That is the whole of what paho does with such a packet when
acks are manual: decode it, note the time bytes arrived (keepalive), call back; no reply is sent. Anything
else (CONNACK, SUBACK, PINGRESP, QoS 0/2, a malformed or partial packet) still goes through paho, in wire
order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

CHUNK = 256 * 1024

Publish = tuple[str, bytes, int, int, bool]
"""(topic, payload, mid, qos, dup), as the bridge keeps a received message until Kafka has it."""

_QOS1_PUBLISH = 0x32  # packet type PUBLISH (0x30) with QoS 1 (0x02); dup (0x08) and retain (0x01) masked out


class BufferedClient(mqtt.Client):
    def __init__(self, *args: Any, on_publishes: Callable[[list[Publish]], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        fast = on_publishes is not None and self._manual_ack and self._protocol != mqtt.MQTTv5
        # MQTT 5 PUBLISHes carry properties; auto-acked QoS 1 needs paho's PUBACK: both keep paho's path.
        self._on_publishes = on_publishes if fast else None

    def _sock_recv(self, bufsize: int) -> bytes:
        pos = self._rpos
        if pos >= len(self._rbuf):
            data = super()._sock_recv(CHUNK)  # raises BlockingIOError when the kernel has nothing
            if not data:
                return data  # peer closed: paho reports the connection lost
            self._rbuf, pos = data, 0
        chunk = self._rbuf[pos : pos + bufsize]
        self._rpos = pos + len(chunk)
        return chunk

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # Whole packets already read from the socket would otherwise wait for the next select(), which the
        # kernel no longer signals for them.
        while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._rpos < len(self._rbuf) and self._sock is not None:
            if self._on_publishes is not None and self._in_packet["command"] == 0:
                self._take_publishes(self._on_publishes)
                if self._rpos >= len(self._rbuf):
                    break
            rc = super().loop_read(1)
        return rc

    def _take_publishes(self, deliver: Callable[[list[Publish]], None]) -> None:
        """Decode the whole QoS 1 PUBLISHes at the head of the buffer; stop at anything else for paho."""
        buf, pos, end = self._rbuf, self._rpos, len(self._rbuf)
        out: list[Publish] = []
        while pos < end:
            cmd = buf[pos]
            if cmd & 0xF6 != _QOS1_PUBLISH:
                break
            i, length, mult = pos + 1, 0, 1
            while i < end and mult <= 128**3:
                byte = buf[i]
                i += 1
                length += (byte & 0x7F) * mult
                if not byte & 0x80:
                    break
                mult *= 128
            else:
                break  # incomplete (or over-long) remaining length: paho's reader deals with it
            stop = i + length
            if stop > end:
                break
            tlen = buf[i] << 8 | buf[i + 1] if length >= 2 else 0
            mid_at = i + 2 + tlen
            if tlen == 0 or mid_at + 2 > stop:
                break  # malformed: paho reports the protocol error
            try:
                topic = buf[i + 2 : mid_at].decode()
            except UnicodeDecodeError:
                break
            out.append((topic, buf[mid_at + 2 : stop], buf[mid_at] << 8 | buf[mid_at + 1], 1, bool(cmd & 0x08)))
            pos = stop
        if not out:
            return
        self._rpos = pos
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        with self._in_callback_mutex:
            deliver(out)

    def _sock_close(self) -> None:
        # Bytes of a dead connection must not be parsed as the start of the next one.
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()
