"""A lean MQTT 3.1.1 QoS 1 load generator for many devices, each on its own authenticated connection.

Why not paho: contract 1 lets a device publish only as itself, so 100,000 simulated devices are 100,000 MQTT
connections. A paho client per device costs a thread-safe object, a socket pair and ~50 KB; this generator
keeps one asyncio stream per device (~5 KB) and speaks the four packets it needs (CONNECT/CONNACK,
PUBLISH/PUBACK). It is a benchmark tool, not part of the product: the product's device path is tested with
`mosquitto_pub` and paho.

Every publish is recorded (device, seq, send time) so the harness can compute publish -> webhook latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeline import serde


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id: str, username: str, password: str, *, clean: bool = True) -> bytes:
    flags = 0x80 | 0x40 | (0x02 if clean else 0)
    var = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", 0)  # keepalive 0: no PINGREQ needed
    payload = _str(client_id) + _str(username) + _str(password)
    body = var + payload
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: str, pid: int, payload: bytes) -> bytes:
    body = _str(topic) + struct.pack("!H", pid) + payload
    return b"\x32" + _varint(len(body)) + body


@dataclass
class Device:
    device_id: str
    secret: str
    seq: int = 0
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    next_pid: int = 1
    last_ts: float = 0.0
    unacked: dict[int, int] = field(default_factory=dict)  # pid -> seq


@dataclass
class LoadStats:
    connected: int = 0
    published: int = 0
    acked: int = 0
    refused: int = 0
    sent_at: dict[tuple[str, int], float] = field(default_factory=dict)


class LoadGenerator:
    """Connects ``devices`` to Mosquitto and publishes contract-1 readings at a total rate."""

    def __init__(self, host: str, port: int, devices: Sequence[tuple[str, str]], *, record_times: bool = True) -> None:
        self.host, self.port = host, port
        self.devices = [Device(d, s) for d, s in devices]
        self.stats = LoadStats()
        self.record_times = record_times
        self._readers: list[asyncio.Task[None]] = []

    async def connect(self, concurrency: int = 200, progress: Callable[[int], None] | None = None) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(dev: Device) -> None:
            async with sem:
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 16)
                writer.write(connect_packet(f"lg-{dev.device_id}", dev.device_id, dev.secret))
                await writer.drain()
                hdr = await reader.readexactly(4)
                if hdr[0] != 0x20 or hdr[3] != 0:
                    self.stats.refused += 1
                    writer.close()
                    raise ConnectionRefusedError(f"{dev.device_id}: CONNACK return code {hdr[3]}")
                dev.reader, dev.writer = reader, writer
                self.stats.connected += 1
                if progress and self.stats.connected % 1000 == 0:
                    progress(self.stats.connected)
                self._readers.append(asyncio.create_task(self._read_acks(dev)))

        await asyncio.gather(*(one(d) for d in self.devices))

    async def _read_acks(self, dev: Device) -> None:
        assert dev.reader is not None
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            while True:
                head = await dev.reader.readexactly(4)
                if head[0] & 0xF0 == 0x40:  # PUBACK: 0x40 0x02 pid
                    pid = struct.unpack("!H", head[2:4])[0]
                    if dev.unacked.pop(pid, None) is not None:
                        self.stats.acked += 1

    def publish(self, dev: Device, ts: float, temp_c: float, **extra: object) -> None:
        assert dev.writer is not None
        dev.seq += 1
        # A real logger never stamps two readings with the same millisecond; when a starved generator catches
        # up in a burst, keep each device's timestamps strictly increasing (InfluxDB would merge equal ones).
        ts = max(round(ts, 3), round(dev.last_ts + 0.001, 3))
        dev.last_ts = ts
        payload = serde.dumps({"ts": ts, "seq": dev.seq, "temp_c": temp_c, **extra})
        pid = dev.next_pid
        dev.next_pid = pid % 65535 + 1
        dev.unacked[pid] = dev.seq
        dev.writer.write(publish_packet(f"larder/v1/devices/{dev.device_id}/readings", pid, payload))
        self.stats.published += 1
        if self.record_times:
            self.stats.sent_at[(dev.device_id, dev.seq)] = time.time()

    async def run_rate(
        self,
        rate: float,
        duration_s: float,
        value: Callable[[Device, float], float] = lambda _d, _t: 4.0,
        tick_s: float = 0.01,
    ) -> None:
        """Publish ``rate`` readings/s in total, round-robin over devices, for ``duration_s``."""
        start = time.monotonic()
        sent, i, n = 0, 0, len(self.devices)
        while (elapsed := time.monotonic() - start) < duration_s:
            due = int(rate * elapsed) - sent
            now = time.time()
            for _ in range(due):
                dev = self.devices[i % n]
                i += 1
                self.publish(dev, now, value(dev, now))
            sent += max(due, 0)
            await asyncio.sleep(tick_s)

    async def wait_acked(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.stats.acked < self.stats.published and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.stats.acked >= self.stats.published

    async def close(self) -> None:
        for t in self._readers:
            t.cancel()
        for d in self.devices:
            if d.writer is not None:
                with contextlib.suppress(Exception):
                    d.writer.write(b"\xe0\x00")  # DISCONNECT
                    d.writer.close()
        await asyncio.sleep(0)
