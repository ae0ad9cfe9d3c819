"""Ingestion benchmark: the same QoS 1 flood drained by mosquitto_sub, a bare paho subscriber and `larder bridge`.

    python -m benchmarks.ingest [--n 200000] [--devices 8]

Needs a running stack (`larder stack up`; honour LARDER_* like every command). For each subscriber, two runs:
*backlog* (the subscriber's persistent session exists, it is away while the whole flood is published, then it
drains the queue) and *live* (connected while the flood is published). Rates are messages over the time from
the first to the last message the subscriber handled: mosquitto_sub and paho print their receipt times; for the
bridge it is the Kafka timestamps of the first and last records, so it includes validation, enrichment, the
produce and Kafka's acks=all acknowledgement. One and two bridge instances (shared subscription). Then hook
requests/s with batches of 1 and 100 events, and the per-reading validation cost (fast path vs pydantic).
Prints a Markdown section for BENCHMARKS.md (## Ingestion).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks import quiet, resultfile
from pipeline import serde, stack
from pipeline.contracts import records
from pipeline.ingest.hooks import sign
from pipeline.settings import Settings, load_settings
from pipeline.stack import logins
from pipeline.testing import IngestEnv, clear_session, consume, free_port, make_env
from pipeline.topics import Topics

TOPIC = "larder/v1/devices/+/readings"
ROOT = Path(__file__).resolve().parents[1]

PAHO_SUB = textwrap.dedent(
    """
    import json, sys, time
    import paho.mqtt.client as mqtt
    host, port, user, pw, cid, n, mode = sys.argv[1:8]
    buffered = sys.argv[9:] == ["buffered"]
    n = int(n); seen = 0; first = last = 0.0
    def count(c, k):
        global seen, first, last
        if seen == 0: first = time.time()
        seen += k
        if seen >= n:
            last = time.time(); c.disconnect()
    def on_message(c, u, m):
        if buffered: c.ack(m.mid, 1)
        count(c, 1)
    if buffered:
        # The bridge's MQTT client: chunked reads, QoS 1 PUBLISHes handed over per socket read, one PUBACK
        # write per batch; nothing else (no validation, no Kafka).
        from pipeline.ingest.bridge import ack_many
        from pipeline.ingest.mqttclient import BufferedClient
        def on_publishes(batch):
            ack_many(c, [mid for _t, _p, mid, _q, _d in batch])
            count(c, len(batch))
        c = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False,
                           manual_ack=True, on_publishes=on_publishes)
    else:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
    c.username_pw_set(user, pw)
    c.on_message = on_message
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(sys.argv[8], 1)
    c.connect(host, int(port))
    if mode == "register":
        c.loop_start(); time.sleep(0.5); c.disconnect(); c.loop_stop(); sys.exit(0)
    print("ready", flush=True)
    c.loop_forever()
    print(json.dumps({"first": first, "last": last, "n": seen}), flush=True)
    """
)


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GB RAM, {system}, Python {platform.python_version()}"


class Bench:
    def __init__(self, settings: Settings, env: IngestEnv, n: int) -> None:
        self.settings, self.env, self.n = settings, env, n
        self.workdir = env.workdir
        self.devices = list(env.devices.items())
        self.per_device = n // len(self.devices)
        self.n = self.per_device * len(self.devices)
        self.seq0 = 0
        # The subscribers log in as a bridge instance of their own (the broker binds client id to user).
        self.sub_instance = f"bench-sub-{uuid.uuid4().hex[:6]}"
        logins.register_bridges(settings, [self.sub_instance])
        self.sub_user, self.bridge_pw = settings.mqtt.bridge_login(self.sub_instance)

    # -- the flood: mosquitto_pub -l, one process per device (each under 50,000 lines: see STACK.md) -----------

    def publish(self) -> float:
        """Publish the whole flood; returns when every publisher exited. Returns the publish wall time."""
        procs = []
        ts = round(time.time(), 3)
        t0 = time.perf_counter()
        for dev, (_, secret) in self.devices:
            path = self.workdir / f"flood-{dev}.txt"
            with path.open("wb") as f:
                for seq in range(self.seq0, self.seq0 + self.per_device):
                    f.write(serde.dumps({"ts": ts, "seq": seq, "temp_c": 3.5, "humidity": 60.0, "battery": 0.8}))
                    f.write(b"\n")
            argv = ["mosquitto_pub", "-h", self.settings.mqtt.host, "-p", str(self.settings.mqtt.port)]
            argv += ["-u", dev, "-P", secret, "-q", "1", "-t", f"larder/v1/devices/{dev}/readings", "-l"]
            procs.append(subprocess.Popen(argv, stdin=path.open("rb")))
        for p in procs:
            assert p.wait(600) == 0
        self.seq0 += self.per_device
        return time.perf_counter() - t0

    # -- subscribers -------------------------------------------------------------------------------------------

    def mosquitto_sub(self, live: bool) -> float:
        cid = self.sub_user
        base = ["mosquitto_sub", "-h", self.settings.mqtt.host, "-p", str(self.settings.mqtt.port)]
        base += ["-u", self.sub_user, "-P", self.bridge_pw, "-q", "1", "-t", TOPIC, "-c", "-i", cid]
        try:
            if not live:
                subprocess.run([*base, "-E"], check=True, timeout=30)
                self.publish()
            out = self.workdir / f"{cid}.out"
            with out.open("wb") as f:
                proc = subprocess.Popen([*base, "-C", str(self.n), "-F", "%U"], stdout=f)
                if live:
                    time.sleep(0.5)
                    self.publish()
                assert proc.wait(600) == 0
            lines = out.read_bytes().split()
            return (len(lines) - 1) / (float(lines[-1]) - float(lines[0]))
        finally:
            clear_session(self.settings, self.sub_instance)

    def paho_sub(self, live: bool, buffered: bool = False) -> float:
        cid = self.sub_user
        m = self.settings.mqtt
        argv = [sys.executable, "-c", PAHO_SUB, m.host, str(m.port), self.sub_user, self.bridge_pw, cid, str(self.n)]
        try:
            if not live:
                subprocess.run([*argv, "register", TOPIC], check=True, timeout=30, cwd=ROOT)
                self.publish()
            run = [*argv, "run", TOPIC, *(["buffered"] if buffered else [])]
            proc = subprocess.Popen(run, stdout=subprocess.PIPE, text=True, cwd=ROOT)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            if live:
                time.sleep(0.5)
                self.publish()
            result = serde.loads(proc.stdout.read().strip().splitlines()[-1])
            proc.wait(60)
            return (result["n"] - 1) / (result["last"] - result["first"])
        finally:
            clear_session(self.settings, self.sub_instance)

    def bridge(self, live: bool, instances: int) -> float:
        topics = Topics(prefix=f"b{uuid.uuid4().hex[:8]}", partitions=self.settings.readings_partitions)
        asyncio.run(stack.ensure_topics(self.settings, topics))
        self.env.topics = topics
        self.env.group = f"g{uuid.uuid4().hex[:8]}"
        shared = "true" if instances > 1 else "false"  # several instances split the load only when shared
        procs = [
            self.env.bridge(instance=f"bench-{self.env.group}-{i}", LARDER_INGEST__BRIDGE_SHARED=shared)
            for i in range(instances)
        ]
        try:
            if not live:
                for p in procs:
                    p.stop()
                self.publish()
                for p in procs:
                    p.start()
            else:
                self.publish()
            stamps: list[int] = []
            count = [0]

            def on(record: Any) -> None:
                count[0] += len(records.batch_items(record.value, "readings"))
                stamps.append(record.timestamp)

            asyncio.run(consume(self.settings, topics.readings, on, lambda: count[0] >= self.n, timeout=600))
            assert count[0] >= self.n, f"bridge delivered {count[0]} of {self.n}"
            return self.n / ((max(stamps) - min(stamps)) / 1000)
        finally:
            for p in procs:
                p.stop()
            for p in procs:
                clear_session(self.settings, p.instance)
            self.env.procs.clear()
            asyncio.run(stack.delete_topics(self.settings, stack.prefixed(topics.prefix)))


async def hook_rate(port: int, camera: str, secret: bytes, batch: int, seconds: float = 5.0) -> float:
    import aiohttp

    done = 0
    stop_at = time.monotonic() + seconds
    counter = [0]

    async def worker(w: int) -> None:
        nonlocal done
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < stop_at:
                counter[0] += 1
                k = counter[0]
                events = [
                    {"event_id": f"{w}-{k}-{i}", "ts": time.time() - 1, "type": "person_count", "count": 1}
                    for i in range(batch)
                ]
                body = serde.dumps(events[0] if batch == 1 else {"events": events})
                ts = str(int(time.time()))
                headers = {
                    "Content-Type": "application/json",
                    "X-Larder-Camera": camera,
                    "X-Larder-Timestamp": ts,
                    "X-Larder-Signature": sign(secret, ts, body),
                }
                async with session.post(f"http://127.0.0.1:{port}/v1/kitchen/events", data=body, headers=headers) as r:
                    assert r.status == 202, await r.text()
                done += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(16)))
    return done / (time.monotonic() - t0)


def validation_cost() -> tuple[float, float]:
    from pipeline.ingest.validate import validate_device_payload, validate_device_payload_reference

    payload = serde.dumps(
        {"ts": "2026-11-22T08:00:00Z", "seq": 17, "temp_c": 3.4, "humidity": 61.0, "battery": 0.82, "door_open": False}
    )
    base = {"device": "d", "site": "S", "asset": "a", "profile": "chilled", "received_ms": 0}
    now = int(time.time() * 1000)
    out = []
    for impl in (validate_device_payload, validate_device_payload_reference):
        n = 50_000
        t0 = time.perf_counter()
        for _ in range(n):
            impl(payload, base, now, 300_000)
        out.append((time.perf_counter() - t0) / n * 1e6)
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="readings per flood")
    ap.add_argument("--devices", type=int, default=8, help="publishing devices (one mosquitto_pub each)")
    args = ap.parse_args()
    # Each subscriber's persistent session is dropped in a finally block: left behind, it queues every later
    # reading (up to Mosquitto's per-client limit, hundreds of MB) and its autosaves stall the broker.
    quiet.unwind_on_sigterm()
    if args.n / args.devices > 50_000:
        ap.error("at most 50,000 lines per mosquitto_pub (STACK.md); raise --devices")
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: run `larder stack up` first")
    settings = load_settings()
    quiet.require_stack(settings)
    noise = quiet.check(settings)

    with tempfile.TemporaryDirectory(prefix="larder-bench-") as tmp:
        topics = Topics(prefix=f"b{uuid.uuid4().hex[:8]}", partitions=settings.readings_partitions)
        env = make_env(settings, topics, Path(tmp), n_devices=args.devices, n_cameras=1)
        b = Bench(settings, env, args.n)
        rows: list[tuple[str, float, float]] = []
        steps = [
            ("mosquitto_sub", b.mosquitto_sub),
            ("bare paho subscriber (callback API v2, auto ack)", b.paho_sub),
            (
                "paho with the bridge's MQTT client (`BufferedClient`), no validation, no Kafka",
                lambda live: b.paho_sub(live, buffered=True),
            ),
            ("larder bridge, 1 instance", lambda live: b.bridge(live, 1)),
            ("larder bridge, 2 instances (shared subscription)", lambda live: b.bridge(live, 2)),
        ]
        for name, fn in steps:
            backlog = fn(False)
            print(f"> {name}: backlog {backlog:,.0f}/s", file=sys.stderr, flush=True)
            live = fn(True)
            print(f"> {name}: live {live:,.0f}/s", file=sys.stderr, flush=True)
            rows.append((name, backlog, live))
        logins.revoke_bridges(settings, [b.sub_instance])  # the subscribers' login goes with their sessions

        port = free_port()
        cam, (_, secret) = next(iter(env.cameras.items()))
        topics = Topics(prefix=f"b{uuid.uuid4().hex[:8]}", partitions=settings.readings_partitions)
        asyncio.run(stack.ensure_topics(settings, topics))
        env.topics = topics
        hooks = env.hooks(port)
        try:
            hook1 = asyncio.run(hook_rate(port, cam, secret.encode(), 1))
            hook100 = asyncio.run(hook_rate(port, cam, secret.encode(), 100))
        finally:
            hooks.stop()
            asyncio.run(stack.delete_topics(settings, stack.prefixed(topics.prefix)))
        fast_us, ref_us = validation_cost()

    ms_live, paho_backlog, buffered_backlog = rows[0][2], rows[1][1], rows[2][1]
    bridge_backlog, bridge_live = rows[3][1], rows[3][2]
    print("## Ingestion\n")
    print(f"Machine: {machine()}. Flood: {b.n:,} QoS 1 readings (~110 bytes) from {args.devices} `mosquitto_pub -l`.")
    print("Rates are readings/s from the first to the last one handled; bridge = in Kafka (acks=all).\n")
    print("| subscriber | backlog drain /s | live flood /s |")
    print("|---|---|---|")
    for name, backlog, live in rows:
        print(f"| {name} | {backlog:,.0f} | {live:,.0f} |")
    print()
    print(
        f"- bridge / bare paho, backlog: **{bridge_backlog / paho_backlog:.0%}** (goal >= 80%); "
        f"bridge / mosquitto_sub, live: **{bridge_live / ms_live:.0%}** (goal >= 70%). The bridge's own cost over "
        f"its MQTT client: bridge / the bridge's MQTT client alone, backlog: "
        f"**{bridge_backlog / buffered_backlog:.0%}**."
    )
    print(f"- two bridges / one, backlog: {rows[4][1] / bridge_backlog:.2f}x; live: {rows[4][2] / bridge_live:.2f}x.")
    print(f"- hooks (16 concurrent clients, signed, 202 after acks=all): {hook1:,.0f} requests/s with 1 event, ")
    print(f"  {hook100:,.0f} requests/s with 100 events ({hook100 * 100:,.0f} events/s).")
    print(f"- validation per reading: fast path {fast_us:.1f} µs, pydantic reference {ref_us:.1f} µs.")
    for w in noise:
        print(f"- NOT A QUIET RUN: {w}")
    result = {
        "command": "python -m benchmarks.ingest " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "readings": b.n,
        "publishers": args.devices,
        "rows": [{"subscriber": name, "backlog_per_s": round(bl), "live_per_s": round(lv)} for name, bl, lv in rows],
        "hooks_requests_per_s": {"1_event": round(hook1), "100_events": round(hook100)},
        "validation_us": {"fast": round(fast_us, 2), "pydantic": round(ref_us, 2)},
        "not_quiet": noise,
        "load_avg_at_report": [round(x, 2) for x in os.getloadavg()],
    }
    path = resultfile.save("ingest", result)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
