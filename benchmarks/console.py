"""Console benchmark: page times over a large read model, and live-update latency from alert record to browser.

    python -m benchmarks.console [--sites 1000 --devices-per-site 10 --open 5000 --requests 200 --live 100]

Against the local stack (`larder stack up`), on a fresh topic prefix and InfluxDB database (both deleted at the
end): a site file of 1,000 sites in 50 stations and 5 districts with 10,000 devices; 5,000 open alerts, each with
a planned and a delivered notification, produced to Kafka; 3 h of readings of 200 alerted devices in InfluxDB;
then `larder console` is started as a process (its rebuild time is reported), logged in as an admin (all sites)
and as a station user (20 sites), and each page is fetched ``--requests`` times one after the other over HTTP
(aiohttp client, the time to the last byte). Live: ``--live`` alerts are produced one at a time while an
event-stream client is connected; latency = produce call start to the event's arrival.
Prints a markdown section for BENCHMARKS.md and writes the raw figures to ``benchmarks/console_result.json``
(committed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer

from benchmarks import quiet
from pipeline import serde, stack
from pipeline.console import users
from pipeline.schemas import Alert, AlertState, Delivery, Severity, alert_id, ms_to_iso
from pipeline.services import free_port, larder_argv
from pipeline.settings import Settings, load_settings
from pipeline.stack import influx
from pipeline.topics import Topics

PASSWORD = "bench-console-pw"
RULES = ["coldchain.high", "coldchain.low", "liveness.offline", "liveness.battery_low", "coldchain.door_open"]


def site_doc(n_sites: int, per_site: int) -> dict[str, Any]:
    sites = {}
    for s in range(n_sites):
        sid = f"B{s:04d}"
        sites[sid] = {
            "name": f"Site {s}",
            "station": f"ST{s // 20:02d}",
            "district": f"D{s // 200}",
            "assets": {"cr": {"profile": "chilled"}, "fz": {"profile": "frozen"}},
            "devices": {
                f"{sid}-d{d}": {"asset": "cr" if d % 2 else "fz", "secret": f"secret-{sid}-{d}"}
                for d in range(per_site)
            },
        }
    return {"version": 1, "sites": sites}


def bench_users(path: Path, station: str) -> Path:
    """The users file of the console benchmarks: ``admin`` (every site) and ``station`` (``station``'s sites)."""
    pw = users.hash_password(PASSWORD)
    users.save(
        path,
        users.UsersFile(
            users={
                "admin": users.User(role="admin", password_hash=pw),
                "station": users.User(role="station", stations=[station], password_hash=pw),
            }
        ),
    )
    return path


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def seed(settings: Settings, topics: Topics, doc: dict[str, Any], n_open: int, now: int) -> list[Alert]:
    rnd = random.Random(7)
    devices = [(sid, d) for sid, s in doc["sites"].items() for d in s["devices"]]
    chosen = rnd.sample(devices, n_open)
    alerts = []
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all", linger_ms=20)
    await producer.start()
    try:
        futs = []
        for i, (sid, dev) in enumerate(chosen):
            opened = now - rnd.randint(60, 48 * 3600) * 1000
            rule = RULES[i % len(RULES)]
            a = Alert(
                alert_id=alert_id(rule, dev, opened),
                rule=rule,
                severity=Severity.CRITICAL if i % 7 == 0 else Severity.WARNING,
                site=sid,
                subject=dev,
                state=AlertState.OPEN,
                opened_at=ms_to_iso(opened),
                at_ms=opened,
                evidence={"limit_c": 8.0, "breach_since": ms_to_iso(opened - 900_000)},
            )
            alerts.append(a)
            futs.append(await producer.send(topics.alerts, serde.dumps(a.model_dump(mode="json")), key=sid.encode()))
            planned = Delivery(
                kind="planned",
                message_id=f"m{i}",
                at_ms=opened + 1000,
                recipient="r",
                recipient_name="op",
                role="operator",
                site=sid,
                keys=[f"{a.alert_id}|0|r"],
                alert_ids=[a.alert_id],
                channels=["sms"],
            )
            done = planned.model_copy(update={"kind": "delivered", "channel": "sms", "at_ms": opened + 2000})
            for d in (planned, done):
                futs.append(
                    await producer.send(topics.deliveries, serde.dumps(d.model_dump(mode="json")), key=b"m%d" % i)
                )
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return alerts


def write_readings(settings: Settings, db: str, alerts: list[Alert], now: int) -> int:
    from pipeline.sinks.influx import InfluxWriter

    writer = InfluxWriter(settings, f"{db}/autogen")
    lines = []
    for a in alerts[:200]:
        for k in range(180):
            ts = now - (180 - k) * 60_000
            lines.append(f"reading,device={a.subject},site={a.site} temp_c={4.0 + (k > 120) * 6.0} {ts}")
    for i in range(0, len(lines), 5000):
        writer.write(lines[i : i + 5000], "ms")
    writer.close()
    return len(lines)


async def login(http: aiohttp.ClientSession, base: str, name: str) -> None:
    async with http.get(f"{base}/login") as r:
        text = await r.text()
    token = text.split('name="login_token" value="', 1)[1].split('"', 1)[0]
    form = {"login_token": token, "username": name, "password": PASSWORD, "next": "/"}
    async with http.post(f"{base}/login", data=form, allow_redirects=False) as r:
        assert r.status == 303, (r.status, await r.text())


async def timed(http: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with http.get(url) as r:
            await r.read()
            assert r.status == 200, (url, r.status)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def live_latency(settings: Settings, topics: Topics, base: str, n: int) -> list[float]:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        await login(http, base, "admin")
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
        await producer.start()
        sent: dict[str, float] = {}
        got: dict[str, float] = {}
        try:
            async with http.get(f"{base}/events", timeout=aiohttp.ClientTimeout(total=None)) as resp:

                async def reader() -> None:
                    async for raw in resp.content:
                        line = raw.decode()
                        if line.startswith("data: "):
                            aid = json.loads(line[6:])["alert_id"]
                            if aid in sent and aid not in got:
                                got[aid] = time.perf_counter()

                task = asyncio.create_task(reader())
                await asyncio.sleep(0.5)
                for i in range(n):
                    now = int(time.time() * 1000)
                    a = Alert(
                        alert_id=alert_id("coldchain.high", f"live-{i}", now),
                        rule="coldchain.high",
                        severity=Severity.WARNING,
                        site="B0000",
                        subject="B0000-d0",
                        state=AlertState.OPEN,
                        opened_at=ms_to_iso(now),
                        at_ms=now,
                    )
                    sent[a.alert_id] = time.perf_counter()
                    await producer.send_and_wait(topics.alerts, serde.dumps(a.model_dump(mode="json")), key=b"B0000")
                    deadline = time.perf_counter() + 10
                    while a.alert_id not in got and time.perf_counter() < deadline:
                        await asyncio.sleep(0.005)
                    await asyncio.sleep(0.05)
                task.cancel()
        finally:
            await producer.stop()
        return [(got[k] - sent[k]) * 1000 for k in sent if k in got]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    quiet.require_stack(settings)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    prefix = f"b{uuid.uuid4().hex[:8]}"
    topics = Topics(prefix=prefix, partitions=settings.readings_partitions)
    await stack.ensure_topics(settings, topics)
    db = prefix
    influx.create_database(settings, db)
    doc = site_doc(args.sites, args.devices_per_site)
    site_path = work / "sites.json"
    site_path.write_text(json.dumps(doc))
    users_path = bench_users(work / "users.yaml", "ST00")
    now = int(time.time() * 1000)
    result: dict[str, Any] = {"sites": args.sites, "devices": args.sites * args.devices_per_site, "open": args.open}
    console = None
    try:
        t0 = time.perf_counter()
        alerts = await seed(settings, topics, doc, args.open, now)
        result["seed_s"] = round(time.perf_counter() - t0, 2)
        result["readings_points"] = write_readings(settings, db, alerts, now)
        port = free_port()
        log = (work / "console.log").open("wb")
        env = {**os.environ, "LARDER_TOPIC_PREFIX": prefix, "LARDER_INFLUX__DATABASE": db}
        t0 = time.perf_counter()
        console = subprocess.Popen(
            [*larder_argv(), "console", "--sites", str(site_path), "--users", str(users_path), "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as probe:
            while True:
                try:
                    async with probe.get(f"{base}/healthz") as r:
                        if (await r.json())["status"] == "ok":
                            break
                except aiohttp.ClientError:
                    pass
                assert console.poll() is None, (work / "console.log").read_text()
                await asyncio.sleep(0.1)
        result["console_ready_s"] = round(time.perf_counter() - t0, 2)
        pages: dict[str, dict[str, float]] = {}
        for who in ("admin", "station"):
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                await login(http, base, who)
                visible = [a for a in alerts if who == "admin" or int(a.site[1:]) < 20]
                charted = {a.alert_id for a in alerts[:200]}
                target = next(a for a in visible if a.alert_id in charted) if who == "admin" else visible[0]
                urls = {
                    "overview": "/",
                    "queue": "/alerts",
                    "alert page": f"/alerts/{target.alert_id}",
                    "site page": f"/sites/{target.site}",
                    "api queue": "/api/v1/alerts",
                }
                for name, path in urls.items():
                    # The first request of each page is its cold one (e.g. every site card of the overview rendered;
                    # later ones re-render only the cards whose counts changed): reported apart as "first".
                    first = (await timed(http, base + path, 3))[0]
                    xs = await timed(http, base + path, args.requests)
                    pages[f"{who}: {name}"] = {
                        "p50": round(pct(xs, 50), 1),
                        "p95": round(pct(xs, 95), 1),
                        "max": round(max(xs), 1),
                        "first": round(first, 1),
                    }
        result["pages_ms"] = pages
        lat = await live_latency(settings, topics, base, args.live)
        result["live_ms"] = {
            "n": len(lat),
            "p50": round(pct(lat, 50), 1),
            "p95": round(pct(lat, 95), 1),
            "max": round(max(lat), 1),
            "mean": round(statistics.mean(lat), 1),
        }
    finally:
        if console is not None:
            console.terminate()
            console.wait(15)
        await stack.delete_topics(settings, stack.prefixed(prefix))
        influx.drop_database(settings, db)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--devices-per-site", type=int, default=10)
    ap.add_argument("--open", type=int, default=5000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--live", type=int, default=100)
    ap.add_argument("--workdir", default="/tmp/larder-bench-console")
    ap.add_argument("--out", default="benchmarks/console_result.json")  # committed: BENCHMARKS.md quotes it
    args = ap.parse_args()
    load_before = os.getloadavg()
    result = asyncio.run(main_async(args))
    # The machine is shared: page times stretch with the load of everything else on its two cores.
    result["load_avg_1m"] = {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    result["at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"## Console ({result['sites']:,} sites, {result['devices']:,} devices, {result['open']:,} open alerts)\n")
    print(
        f"console start (read model rebuilt from Kafka): {result['console_ready_s']} s; "
        f"1-min load average {result['load_avg_1m']['before']} before, {result['load_avg_1m']['after']} after\n"
    )
    print("| page | p50 ms | p95 ms | max ms | first (cold) ms |\n|---|---|---|---|---|")
    for k, v in result["pages_ms"].items():
        print(f"| {k} | {v['p50']} | {v['p95']} | {v['max']} | {v['first']} |")
    lv = result["live_ms"]
    print(
        f"\nlive update, alert record produced -> event at the client: p50 {lv['p50']} ms, p95 {lv['p95']} ms, "
        f"max {lv['max']} ms ({lv['n']} alerts)"
    )


if __name__ == "__main__":
    main()
