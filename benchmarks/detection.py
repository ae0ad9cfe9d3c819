"""Detection stage benchmark: the same readings through the same production detectors, three ways.

1. **Faust** — `larder worker` (a subprocess, RocksDB store, states in changelogged tables) over the readings
   topic in record batches of 500 readings per partition, as the pipeline carries them;
2. **plain aiokafka** — a `getmany` loop over the same record batches, the same :class:`Runner`, states only in
   a dict (no changelog, no durability): the Python ceiling;
3. **quix-streams** — one reading per Kafka record (how its users feed it), ``sdf.update(..., stateful=True)``
   keeping each device's state (``state_to_bytes``) in its RocksDB state store with changelog.

Then the worker's memory per monitored device at 1k / 10k / 100k devices (tracemalloc of the runner's cache
and detectors, the worker's Python heap per device; the table bytes live in RocksDB on disk).

    python -m benchmarks.detection            # 500,000 readings of 10,000 devices (~3 min)
    python -m benchmarks.detection --quick    # 100,000 readings of 2,000 devices (< 1 min)

Needs the local stack (`larder stack up`). Prints a markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from benchmarks import quiet, resultfile
from pipeline import serde, testing
from pipeline.agents.core import BUSY_PARTS, Runner, settle_gc
from pipeline.agents.devices import device_concern
from pipeline.kafkaadmin import delete_topics, ensure_topics, prefixed
from pipeline.schemas import Reading
from pipeline.settings import Settings, load_settings
from pipeline.siteconfig import SiteConfig
from pipeline.topics import Topics

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_000
STEP_MS = 300_000
PER_RECORD = 500


def say(msg: str) -> None:
    print(f"> {msg}", file=sys.stderr, flush=True)


def site_doc(devices: list[str]) -> dict[str, Any]:
    """One site, every device on the chilled cold room ``cr-1``, reading every 5 min."""
    return testing.site_doc(devices, interval_s=STEP_MS // 1000)


def readings(devices: list[str], n: int, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` readings, round-robin over the devices every 5 min of event time; ~2% of device-steps breach."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    steps = -(-n // len(devices))
    breach = {(rng.randrange(len(devices)), rng.randrange(steps)) for _ in range(max(1, len(devices) * steps // 50))}
    for step in range(steps):
        for i, d in enumerate(devices):
            if len(out) == n:
                return out
            hot = any((i, s) in breach for s in range(step - 4, step + 1))
            r = Reading(
                device=d,
                site="S01",
                asset="cr-1",
                profile="chilled",
                seq=step,
                ts_ms=T0 + step * STEP_MS + i % 1000,
                temp_c=10.5 if hot else 4.0 + (i % 7) / 10,
                received_ms=T0 + step * STEP_MS,
            )
            out.append(r.model_dump(mode="json", exclude_none=True))
    return out


def record_batches(
    items: list[dict[str, Any]], partitions: int, per_record: int = PER_RECORD
) -> list[tuple[int, bytes, bytes]]:
    """Per partition, in order, records of up to ``per_record`` readings: (partition, key, value)."""
    return testing.batch_records(items, partitions, per_record=per_record)


async def produce(settings: Settings, topic: str, records: list[tuple[int | None, bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers, max_request_size=4 * 1024 * 1024, linger_ms=5
    )
    await producer.start()
    try:
        futs = [await producer.send(topic, value, key=key, partition=p) for p, key, value in records]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


def main_thread_cpu(ps: psutil.Process) -> float:
    """CPU seconds (user + system) of the process's main thread, the one that runs the agents."""
    return next((t.user_time + t.system_time for t in ps.threads() if t.id == ps.pid), 0.0)


# -- 1. Faust ------------------------------------------------------------------------------------------------


def metric(port: int, name: str) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return -1
    m = re.search(rf'^{name}\{{concern="devices"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else -1


async def run_faust(
    settings: Settings,
    topics: Topics,
    sites: Path,
    batches: list[tuple[int, bytes, bytes]],
    n: int,
    tmp: Path,
    profile: Path | None = None,
    *,
    produced: bool = False,
) -> dict[str, float]:
    port = 19000 + os.getpid() % 1000
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / "worker.log"
    env = {**os.environ, "LARDER_TOPIC_PREFIX": topics.prefix, "LARDER_READINGS_PARTITIONS": str(topics.partitions)}
    args = [sys.executable, "-m", "pipeline.cli", "worker", "--sites", str(sites), "--clock", "replay"]
    args += ["--data-dir", str(tmp / "faust"), "--metrics-port", str(port), "-l", "warn", "--busy-clock", "cpu"]
    if profile is not None:  # py-spy samples the whole worker; collapsed stacks, one line per stack
        spy = str(Path(sys.executable).parent / "py-spy")
        args = [spy, "record", "--nonblocking", "-r", "250", "-f", "raw", "-o", str(profile), "--", *args]
    # The records are in the topic before the worker starts, as for the plain loop: the worker's time is
    # then its own, not bounded by how fast this process produces (the two would also share the cores).
    if not produced:
        await produce(settings, topics.readings, [(p, k, v) for p, k, v in batches])
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        ps: psutil.Process | None = None
        rss0 = cpu0 = main0 = 0.0
        # From the last poll that saw nothing processed (CPU and RSS read there too) to the first poll that
        # saw everything: it can only overstate the worker's time, by up to one poll, and is never zero when
        # all of it fits between two polls.
        t_idle = time.perf_counter()
        while True:
            if ps is None:
                ps = psutil.Process(proc.pid)
                if profile is not None:  # py-spy's child is the worker
                    kids = ps.children()
                    ps = kids[0] if kids else None
            items = metric(port, "larder_worker_items_total")
            now = time.perf_counter()
            if items <= 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("worker processed nothing:\n" + log.read_text(errors="replace")[-3000:])
                t_idle = now
                if ps is not None:
                    rss0, cpu0 = ps.memory_info().rss, sum(ps.cpu_times()[:2])
                    main0 = main_thread_cpu(ps)
            if items >= n:
                break
            if proc.poll() is not None or time.monotonic() > deadline + 600:
                raise RuntimeError("worker stopped:\n" + log.read_text(errors="replace")[-3000:])
            # Each scrape costs the worker ~1 ms of CPU (it renders all its metrics): at a fixed 20 ms that was
            # ~6 % of its CPU in this measurement. Fast polls find the start; once it runs, the next poll is
            # timed to half the remaining work at the rate so far, so the end is still seen within ~10 ms.
            rate = items / (now - t_idle) if items > 0 else 0.0
            await asyncio.sleep(0.02 if rate <= 0 else min(0.5, max(0.01, (n - items) / rate / 2)))
        assert ps is not None
        cpu = sum(ps.cpu_times()[:2]) - cpu0
        main = main_thread_cpu(ps) - main0
        writes = metric(port, "larder_worker_table_writes_total")
        rss1 = ps.memory_info().rss
        # The worker's own split of its CPU (its main thread's, per record or batch): nothing counts before the
        # window above starts, as nothing was processed before it.
        busy = {part: metric(port, f"larder_worker_busy_{part}_seconds_total") for part in BUSY_PARTS}
        return {
            "rate": n / (now - t_idle),
            "seconds": now - t_idle,
            "cpu_s": cpu,
            "writes": writes,
            "rss_delta": rss1 - rss0,
            "main_thread_cpu_s": main,
            **{f"busy_{part}_s": value for part, value in busy.items()},
        }
    finally:
        # Under py-spy, stop the worker itself: py-spy writes its profile when its target exits.
        for child in psutil.Process(proc.pid).children() if profile is not None else []:
            child.terminate()
        if profile is None:
            proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def split_line(faust: dict[str, float], plain: dict[str, float], n: int) -> str:
    """Where each consumer's CPU a reading goes, by the worker's own busy counters and the plain loop's timing of
    the same ``Runner.on_record``, both by the main thread's CPU clock."""

    def us(seconds: float) -> str:
        return f"{seconds / n * 1e6:.1f}"

    parts = {part: faust.get(f"busy_{part}_s", -1.0) for part in BUSY_PARTS}
    if min(parts.values()) < 0 or "busy_detect_s" not in plain:
        return "- The worker's busy counters were not readable: no split of its time."
    main = faust.get("main_thread_cpu_s", faust["cpu_s"])
    rest = main - sum(parts.values())
    return (
        f"- Where the time goes, µs a reading (the same round): the detection stage itself (`Runner.on_record`: "
        f"decoding, dispatch, detectors) {us(parts['detect'])} in the worker, {us(plain['busy_detect_s'])} in the "
        f"plain loop; in the worker, encoding changed states {us(parts['encode'])}, writing them to RocksDB and "
        f"the changelog batch {us(parts['store'])}, encoding and handing over outputs {us(parts['outputs'])}, the "
        f"rest of its main thread (Faust's stream, the event loop, acks and commits) {us(rest)} and its other "
        f"threads (Faust's consumer thread, the metrics server) {us(faust['cpu_s'] - main)}; the "
        f"plain loop's rest (fetching) {us(plain['cpu_s'] - plain['busy_detect_s'])}. Both time their parts by the "
        "main thread's CPU clock (`--busy-clock cpu`)."
    )


# -- 2. plain aiokafka ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def worker_gc() -> Iterator[None]:
    """The collector settings ``larder worker`` runs with (:func:`settle_gc`), for the in-process consumers:
    like with like (this process also holds every generated reading, which the frozen heap leaves out)."""
    before = gc.get_threshold()
    settle_gc()
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


async def run_plain(settings: Settings, topic: str, cfg: SiteConfig, partitions: int, n: int) -> dict[str, float]:
    with worker_gc():
        return await _run_plain(settings, topic, cfg, partitions, n)


async def _run_plain(settings: Settings, topic: str, cfg: SiteConfig, partitions: int, n: int) -> dict[str, float]:
    # Timed by the main thread's CPU clock, as the worker's (``--busy-clock cpu``).
    runner: Runner[Any, Any] = Runner(
        device_concern(cfg), None, partitions, arrived_ms=lambda: 0, busy_clock=time.thread_time
    )
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=f"plain-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    t_first = c_first = 0.0
    try:
        while runner.stats.items < n:
            # Bounded batches: a whole fetch processed without yielding starves the consumer's heartbeat.
            t_fetch, c_fetch = time.perf_counter(), time.process_time()
            batch = await consumer.getmany(timeout_ms=500, max_records=100)
            if batch and not t_first:
                t_first, c_first = t_fetch, c_fetch  # before the fetch that brought data: never a zero interval
            for tp, msgs in batch.items():
                for m in msgs:
                    runner.on_record(m.value, tp.partition)
                    runner.flush()
        seconds = time.perf_counter() - t_first
        return {
            "rate": n / seconds,
            "seconds": seconds,
            "cpu_s": time.process_time() - c_first,
            "busy_detect_s": runner.stats.busy_detect_seconds,
        }
    finally:
        await consumer.stop()


# -- 3. quix-streams -----------------------------------------------------------------------------------------


def quix_app(
    settings: Settings, topic: str, name: str, tmp: Path, value_deserializer: Literal["json", "bytes"]
) -> tuple[Any, Any]:
    """A quix-streams app reading ``topic`` from the beginning in a fresh group, state under ``tmp / name``,
    and its dataframe."""
    import logging

    from quixstreams import Application

    app = Application(
        broker_address=settings.kafka.bootstrap_servers,
        consumer_group=f"{name}-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        state_dir=str(tmp / name),
        loglevel=logging.WARNING,
    )
    return app, app.dataframe(app.topic(topic, value_deserializer=value_deserializer, key_deserializer="str"))


def run_quix(settings: Settings, topic: str, cfg: SiteConfig, n: int, tmp: Path) -> dict[str, float]:
    concern = device_concern(cfg)
    detectors: dict[str, Any] = {}
    app, sdf = quix_app(settings, topic, "quix", tmp, "json")
    marks: list[float] = []

    def detect(value: dict[str, Any], state: Any) -> None:
        if not marks:
            marks.append(time.perf_counter())
        device = value["device"]
        det = detectors.get(device) or detectors.setdefault(device, concern.detector_for(device, value))
        raw = state.get("s")
        old = det.state_from_bytes(raw.encode()) if raw is not None else det.initial()
        new, _outs = det.on_reading_dict(old, value, value["ts_ms"])
        if new is not old:
            state.set("s", det.state_to_bytes(new).decode())

    sdf = sdf.update(detect, stateful=True)
    app.run(sdf, count=n, collect=False)
    seconds = time.perf_counter() - marks[0]
    return {"rate": n / seconds, "seconds": seconds}


def run_quix_batches(
    settings: Settings, topic: str, cfg: SiteConfig, n: int, records: int, tmp: Path
) -> dict[str, float]:
    """quix-streams over the record batches Faust gets (a quix user can read the batch envelope too).

    quix scopes state to the message key, and a batch's key is its first device; the batches are therefore
    produced to ``topic`` keyed by their partition (:func:`partition_keyed`), so each partition's devices
    share one state scope that survives from batch to batch, as they do in the Faust worker."""
    concern = device_concern(cfg)
    detectors: dict[str, Any] = {}
    app, sdf = quix_app(settings, topic, "quix-batches", tmp, "bytes")
    marks: list[float] = []

    def detect(value: bytes, state: Any) -> None:
        if not marks:
            marks.append(time.perf_counter())
        for item in serde.loads(value)["items"]:
            device = item["device"]
            det = detectors.get(device) or detectors.setdefault(device, concern.detector_for(device, item))
            raw = state.get(device)
            old = det.state_from_bytes(raw.encode()) if raw is not None else det.initial()
            new, _outs = det.on_reading_dict(old, item, item["ts_ms"])
            if new is not old:
                state.set(device, det.state_to_bytes(new).decode())

    sdf = sdf.update(detect, stateful=True)
    app.run(sdf, count=records, collect=False)
    seconds = time.perf_counter() - marks[0]
    return {"rate": n / seconds, "seconds": seconds}


def partition_keyed(batches: list[tuple[int, bytes, bytes]]) -> list[tuple[int | None, bytes, bytes]]:
    """The same record batches, keyed by their partition (see :func:`run_quix_batches`)."""
    return [(p, f"p{p}".encode(), value) for p, _key, value in batches]


# -- memory ----------------------------------------------------------------------------------------------------


def memory_per_device(count: int, readings_each: int = 3) -> float:
    """Python heap per device held by the worker: decoded state in the runner's cache plus its detector."""
    devices = [f"dev-{i:06d}" for i in range(count)]
    cfg = SiteConfig.model_validate(site_doc(devices))
    concern = device_concern(cfg)
    records = record_batches(readings(devices, count * readings_each), 4)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    runner: Runner[Any, Any] = Runner(concern, None, 4, arrived_ms=lambda: 0)
    for p, _key, value in records:
        runner.on_record(value, p)
        runner.flush()
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert runner.subjects() == count
    return used / count


def _rss_child(count: int, out: Any) -> None:
    import psutil as _psutil

    devices = [f"dev-{i:06d}" for i in range(count)]
    concern = device_concern(SiteConfig.model_validate(site_doc(devices)))
    records = record_batches(readings(devices, count * 3), 4)
    gc.collect()
    before = _psutil.Process().memory_info().rss
    runner: Runner[Any, Any] = Runner(concern, None, 4, arrived_ms=lambda: 0)
    for p, _key, value in records:
        runner.on_record(value, p)
        runner.flush()
    gc.collect()
    out.put((_psutil.Process().memory_info().rss - before) / count)


def rss_per_device(count: int) -> float:
    """Process RSS growth per device for the same work as :func:`memory_per_device`, in a fresh process (RSS of
    this one holds what earlier steps freed, and tracemalloc's own bookkeeping): includes allocator overhead."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_rss_child, args=(count, queue))
    proc.start()
    value = float(queue.get(timeout=600))
    proc.join()
    return value


# -- main ------------------------------------------------------------------------------------------------------


async def prepare(settings: Settings, topics: Topics, *extra: str) -> None:
    """The pipeline's topics under ``topics.prefix`` and the baselines' own (``extra``), same partitions."""
    await ensure_topics(settings, topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, topics.partitions, 1) for name in extra])
    finally:
        await admin.close()


def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    quiet.require_stack(settings)
    n, d = args.readings, args.devices
    topics = Topics(prefix=f"bench{uuid.uuid4().hex[:8]}", partitions=settings.readings_partitions)
    single = f"{topics.prefix}.single-readings.v1"
    batched = f"{topics.prefix}.partition-keyed-readings.v1"
    tmp = Path(tempfile.mkdtemp(prefix="larder-bench-"))
    t = time.perf_counter()

    def step(msg: str) -> None:
        say(f"[{time.perf_counter() - t:5.1f} s] {msg}")

    try:
        asyncio.run(prepare(settings, topics, single, batched))
        devices = [f"dev-{i:06d}" for i in range(d)]
        step(f"generating {n:,} readings of {d:,} devices")
        items = readings(devices, n)
        batches = record_batches(items, topics.partitions, args.per_record)
        sites = tmp / "sites.yaml"
        testing.write_site_file(sites, site_doc(devices))
        cfg = SiteConfig.model_validate(site_doc(devices))
        pairs: list[tuple[dict[str, float], dict[str, float]]] = []
        for i in range(args.rounds):
            # Each round a fresh readings topic (and so a fresh worker group and tables), the two consumers in
            # turn, which one first alternating: a round's ratio is measured in the same minute.
            ts = topics if i == 0 else Topics(prefix=f"{topics.prefix}-r{i}", partitions=topics.partitions)
            if i:
                asyncio.run(prepare(settings, ts))
            asyncio.run(produce(settings, ts.readings, [(p, k, v) for p, k, v in batches]))
            faust_i = plain_i = None
            for which in ("faust", "plain") if i % 2 == 0 else ("plain", "faust"):
                if which == "faust":
                    step(f"round {i + 1}/{args.rounds}: `larder worker` over {len(batches):,} record batches")
                    faust_i = asyncio.run(
                        run_faust(settings, ts, sites, batches, n, tmp / f"r{i}", args.profile, produced=True)
                    )
                else:
                    step(f"round {i + 1}/{args.rounds}: plain aiokafka loop over the same {len(batches):,} records")
                    plain_i = asyncio.run(run_plain(settings, ts.readings, cfg, ts.partitions, n))
            assert faust_i is not None and plain_i is not None
            pairs.append((faust_i, plain_i))
            step(f"round {i + 1}: CPU a reading, plain / Faust {plain_i['cpu_s'] / faust_i['cpu_s']:.0%}")
        # The round of the median CPU ratio stands for the run in the table; every round is in the result file.
        faust, plain = sorted(pairs, key=lambda fp: fp[1]["cpu_s"] / fp[0]["cpu_s"])[len(pairs) // 2]
        quix: dict[str, float] | None = None
        quix_batches: dict[str, float] | None = None
        if not args.skip_quix:
            step(f"producing the same {len(batches):,} record batches keyed by partition for quix-streams")
            asyncio.run(produce(settings, batched, partition_keyed(batches)))
            step("quix-streams over the record batches")
            quix_batches = run_quix_batches(settings, batched, cfg, n, len(batches), tmp)
            step(f"producing {n:,} single-reading records for quix-streams")
            singles: list[tuple[int | None, bytes, bytes]] = [
                (None, it["device"].encode(), serde.dumps(it)) for it in items
            ]
            asyncio.run(produce(settings, single, singles))
            step("quix-streams")
            quix = run_quix(settings, single, cfg, n, tmp)  # signal handlers: main thread only
        sizes = () if args.skip_memory else (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
        mem: dict[int, dict[str, float]] = {}
        for size in sizes:
            step(f"memory per device at {size:,} devices")
            mem[size] = {"heap": memory_per_device(size), "rss": rss_per_device(size)}
        step("done")
    finally:
        asyncio.run(delete_topics(settings, prefixed(topics.prefix)))
        shutil.rmtree(tmp, ignore_errors=True)

    lines = [
        "## Detection",
        "",
        f"`python -m benchmarks.detection{' --quick' if args.quick else ''}`: {n:,} readings of {d:,} devices "
        f"(chilled profile, production `DeviceDetector`), {topics.partitions} partitions, "
        + ("one run" if args.rounds == 1 else f"the round of the median CPU ratio of {args.rounds}")
        + f", {os.cpu_count()} cores.",
        "",
        "| consumer | input | readings/s | vs plain loop |",
        "|---|---|---|---|",
        f"| Faust `larder worker`, states in changelogged RocksDB tables | record batches of {args.per_record} | "
        f"{faust['rate']:,.0f} | {faust['rate'] / plain['rate']:.0%} |",
        f"| plain aiokafka `getmany` loop, states in a dict (no durability) | the same batches | "
        f"{plain['rate']:,.0f} | 100% |",
    ]
    if quix_batches:
        lines.append(
            f"| quix-streams, stateful `update` over the batch envelope, RocksDB state + changelog | the same "
            f"batches (keyed by partition) | {quix_batches['rate']:,.0f} | {quix_batches['rate'] / plain['rate']:.0%} |"
        )
    if quix:
        lines.append(
            f"| quix-streams, stateful `update`, RocksDB state + changelog | one reading per record | "
            f"{quix['rate']:,.0f} | {quix['rate'] / plain['rate']:.0%} |"
        )
    lines += [
        "",
        f"- Faust / quix-streams: {faust['rate'] / quix_batches['rate']:.1f}x on the same batches, "
        f"{faust['rate'] / quix['rate']:.1f}x against one reading per record."
        if quix and quix_batches
        else "- quix-streams skipped.",
        f"- Faust worker: {faust['writes']:,.0f} table writes (coalesced: one per changed device per flush "
        "interval, 2.8 s; at once for a device with an output) in "
        f"{faust['seconds']:.2f} s, {faust['cpu_s']:.2f} s CPU; (Faust time - plain time) / writes = "
        f"{(faust['seconds'] - plain['seconds']) / max(1, faust['writes']) * 1e6:.1f} µs per write, an upper "
        "bound of what a changelogged table write costs (it also holds Faust's per-record overhead).",
        f"- CPU a reading (user + system, all threads): Faust worker {faust['cpu_s'] / n * 1e6:.1f} µs, plain "
        f"loop {plain['cpu_s'] / n * 1e6:.1f} µs (plain / Faust {plain['cpu_s'] / faust['cpu_s']:.0%}); the "
        "rates above are wall-clock and share the machine with whatever else runs.",
        f"- Faust worker RSS growth while processing: {faust['rss_delta'] / d:,.0f} B per device "
        "(includes RocksDB memtables and Kafka buffers).",
    ]
    if args.rounds > 1:
        ratios = sorted(p["cpu_s"] / f["cpu_s"] for f, p in pairs)
        each = [
            f"{p['cpu_s'] / f['cpu_s']:.0%} ({f['cpu_s'] / n * 1e6:.1f} / {p['cpu_s'] / n * 1e6:.1f} µs)"
            for f, p in pairs
        ]
        lines.append(
            f"- {args.rounds} rounds, plain / Faust CPU a reading (Faust / plain µs): {', '.join(each)}; "
            f"median {ratios[len(ratios) // 2]:.0%}, worst {ratios[0]:.0%}."
        )
    lines.append(split_line(faust, plain, n))
    if mem:
        lines.append(
            "- Worker memory per monitored device (decoded state in the cache + its detector): Python heap "
            "(tracemalloc) / process RSS growth (a fresh process each) at "
            + ", ".join(f"{size:,} devices: {b['heap']:,.0f} B / {b['rss']:,.0f} B" for size, b in mem.items())
            + "."
        )
    print("\n".join(lines))
    result = {
        "command": " ".join(["python -m benchmarks.detection", *sys.argv[1:]]),
        "readings": n,
        "devices": d,
        "partitions": topics.partitions,
        "per_record": args.per_record,
        "cpus": os.cpu_count(),
        "faust": faust,
        "plain": plain,
        "rounds": [{"faust": f, "plain": p} for f, p in pairs],
        "quix_batches": quix_batches,
        "quix_single": quix,
        "memory_per_device": mem,
    }
    path = resultfile.save("detection", result)
    print(f"\nresults: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100,000 readings of 2,000 devices (< 1 min)")
    parser.add_argument("--readings", type=int, default=500_000)
    parser.add_argument(
        "--per-record",
        type=int,
        default=PER_RECORD,
        help="readings a record batch (1: the per-message path, one reading a message as in the end to end bench)",
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--skip-quix", action="store_true")
    parser.add_argument(
        "--rounds", type=int, default=1, help="Faust and the plain loop this many times each, in turn (default 1)"
    )
    parser.add_argument("--skip-memory", action="store_true", help="leave out the memory-per-device measures")
    parser.add_argument("--profile", type=Path, help="run the Faust worker under py-spy; collapsed stacks to FILE")
    args = parser.parse_args()
    if args.quick:
        args.readings, args.devices = 100_000, 2_000
    run(args)


if __name__ == "__main__":
    main()
