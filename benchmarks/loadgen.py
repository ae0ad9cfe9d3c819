"""A lean MQTT 3.1.1 QoS 1 load generator for many devices, each on its own authenticated connection.

Why not paho: contract 1 lets a device publish only as itself, so 100,000 simulated devices are 100,000 MQTT
connections. A paho client per device costs a thread-safe object, a socket pair and ~50 KB; this generator
keeps one asyncio protocol per device (a few KB) and speaks the four packets it needs (CONNECT/CONNACK,
PUBLISH/PUBACK). It is a benchmark tool, not part of the product: the product's device path is tested with
`mosquitto_pub` and paho.

Every publish is recorded (device, seq, send time) so the harness can compute publish -> webhook latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import serde
from pipeline.stack.golang import go_binary, go_env


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
class LoadStats:
    connected: int = 0
    published: int = 0
    acked: int = 0
    refused: int = 0
    sent_at: dict[tuple[str, int], float] = field(default_factory=dict)


class _Connection(asyncio.Protocol):
    """One device's MQTT connection. A protocol, not a stream: PUBACKs are parsed in ``data_received``, with no
    reader task and no future per acknowledgement (the generator shares the 2 cores with the pipeline)."""

    def __init__(self, device: Device, stats: LoadStats) -> None:
        self.device, self.stats = device, stats
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        i, n = 0, len(buf)
        unacked = self.device.unacked
        # Mosquitto sends this client only CONNACK (0x20 0x02 flags rc) and PUBACK (0x40 0x02 pid), 4 bytes each.
        while n - i >= 4:
            kind = buf[i]
            if kind == 0x40:
                if unacked.pop((buf[i + 2] << 8) | buf[i + 3], None) is not None:
                    self.stats.acked += 1
            elif kind == 0x20 and not self.connack.done():
                self.connack.set_result(buf[i + 3])
            i += 4
        self._buf = buf[i:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connack.done():
            self.connack.set_exception(exc or ConnectionError("connection closed before CONNACK"))


@dataclass
class Device:
    device_id: str
    secret: str
    seq: int = 0
    conn: _Connection | None = None
    next_pid: int = 1
    last_ts: float = 0.0
    unacked: dict[int, int] = field(default_factory=dict)  # pid -> seq


class LoadGenerator:
    """Connects ``devices`` to Mosquitto and publishes contract-1 readings at a total rate."""

    def __init__(self, host: str, port: int, devices: Sequence[tuple[str, str]], *, record_times: bool = True) -> None:
        self.host, self.port = host, port
        self.devices = [Device(d, s) for d, s in devices]
        self.stats = LoadStats()
        self.record_times = record_times

    async def connect(self, concurrency: int = 200, progress: Callable[[int], None] | None = None) -> None:
        sem = asyncio.Semaphore(concurrency)
        loop = asyncio.get_running_loop()

        async def one(dev: Device) -> None:
            async with sem:
                _, conn = await loop.create_connection(lambda: _Connection(dev, self.stats), self.host, self.port)
                assert conn.transport is not None
                conn.transport.write(connect_packet(f"lg-{dev.device_id}", dev.device_id, dev.secret))
                rc = await conn.connack
                if rc != 0:
                    self.stats.refused += 1
                    conn.transport.close()
                    raise ConnectionRefusedError(f"{dev.device_id}: CONNACK return code {rc}")
                dev.conn = conn
                self.stats.connected += 1
                if progress and self.stats.connected % 1000 == 0:
                    progress(self.stats.connected)

        await asyncio.gather(*(one(d) for d in self.devices))

    def publish(self, dev: Device, ts: float, temp_c: float, **extra: object) -> None:
        assert dev.conn is not None and dev.conn.transport is not None
        dev.seq += 1
        # A real logger never stamps two readings with the same millisecond; when a starved generator catches
        # up in a burst, keep each device's timestamps strictly increasing (InfluxDB would merge equal ones).
        ts = max(round(ts, 3), round(dev.last_ts + 0.001, 3))
        dev.last_ts = ts
        payload = serde.dumps({"ts": ts, "seq": dev.seq, "temp_c": temp_c, **extra})
        pid = dev.next_pid
        dev.next_pid = pid % 65535 + 1
        dev.unacked[pid] = dev.seq
        dev.conn.transport.write(publish_packet(f"larder/v1/devices/{dev.device_id}/readings", pid, payload))
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
        for d in self.devices:
            if d.conn is not None and d.conn.transport is not None:
                with contextlib.suppress(Exception):
                    d.conn.transport.write(b"\xe0\x00")  # DISCONNECT
                    d.conn.transport.close()
        await asyncio.sleep(0)


# -- the compiled generator ----------------------------------------------------------------------------------

GO_SOURCE = Path(__file__).parent / "loadgen_go"


def build_compiled(cache_dir: Path) -> Path:
    """Build ``loadgen_go`` once per source version into the cache (a few seconds; needs Go, as the stack does)."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(GO_SOURCE.glob("*.go")))).hexdigest()[:12]
    exe = cache_dir / "loadgen" / digest / "loadgen"
    if exe.exists():
        return exe
    env = {**os.environ, **go_env(cache_dir)}
    subprocess.run([go_binary(), "build", "-o", str(exe), "."], cwd=GO_SOURCE, env=env, check=True)
    return exe


class CompiledLoadGenerator:
    """:class:`LoadGenerator`'s interface for the throughput phases, driving ``loadgen_go`` (the same packets,
    constant in-range readings, no per-reading send times) in a subprocess: Python's generator costs ~21 µs
    of CPU a reading on the pipeline's own two cores, the compiled one a few."""

    def __init__(self, exe: Path, host: str, port: int, devices: Sequence[tuple[str, str]]) -> None:
        self.exe, self.addr, self.devices = exe, f"{host}:{port}", devices
        self.stats = LoadStats()
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lines: asyncio.Queue[str] = asyncio.Queue()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def connect(self, progress: Callable[[int], None] | None = None) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            str(self.exe), self.addr, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"".join(f"{d} {s}\n".encode() for d, s in self.devices) + b"\n")
        await self.proc.stdin.drain()
        self._reader = asyncio.create_task(self._read())
        line = await self._lines.get()
        if not line.startswith("connected"):
            raise ConnectionError(f"loadgen_go: {line or 'exited'}")
        self.stats.connected = int(line.split()[1])
        if progress:
            progress(self.stats.connected)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode().strip()
            if line.startswith("stats "):
                _, published, acked = line.split()
                self.stats.published, self.stats.acked = int(published), int(acked)
            else:
                await self._lines.put(line)
        await self._lines.put("")

    async def run_rate(
        self, rate: float, duration_s: float, value: object = None, tick_s: float = 0.01, batch: int = 1
    ) -> None:
        """``batch`` > 1: each message is a store-and-forward upload of that many readings (contract 1)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"rate {rate} {duration_s} {batch}\n".encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self._lines.get(), duration_s + 60)
        if line != "done":
            raise RuntimeError(f"loadgen_go: {line or 'exited'}")

    async def wait_acked(self, timeout: float) -> bool:
        assert self.proc is not None and self.proc.stdin is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.proc.stdin.write(b"stats\n")
            await self.proc.stdin.drain()
            await asyncio.sleep(0.1)
            if self.stats.acked >= self.stats.published:
                return True
        return False

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None and self.proc.stdin is not None:
            self.proc.stdin.write(b"quit\n")
            with contextlib.suppress(ConnectionError):
                await self.proc.stdin.drain()
        await self.proc.wait()
        if self._reader is not None:
            await self._reader
