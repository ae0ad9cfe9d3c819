"""A paho-mqtt client that reads its socket in large chunks.

paho 2.x reads one packet per ``select()`` wake-up (``loop_read`` handles ``len(_out_messages) +
len(_in_messages)`` packets, which is 1 for a QoS 1 subscriber that publishes nothing) and reads that packet
with one ``recv()`` for the command byte, one per remaining-length byte and one for the body: four or five
system calls per reading, most of the ~18 µs a message that makes paho the bridge's ceiling (STACK.md).

:class:`BufferedClient` changes only the I/O under paho's own packet parser: ``_sock_recv`` serves paho's
small reads from a 256 KiB buffer filled by one ``recv()``, and ``loop_read`` keeps parsing while whole
packets are already in memory, so one wake-up handles everything the kernel had. Parsing, QoS handling,
callbacks and reconnects are paho's. A partial packet left in the buffer is completed by the next ``recv()``
(paho keeps its own partial-packet state), so ``select()`` is only ever waited on when the buffer holds no
complete packet.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt

CHUNK = 256 * 1024


class BufferedClient(mqtt.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0

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
            rc = super().loop_read(1)
        return rc

    def _sock_close(self) -> None:
        # Bytes of a dead connection must not be parsed as the start of the next one.
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()
