"""`larder stack`: install on first use, start, health-check and stop the real local services.

Kafka (KRaft, Maven Central jars), InfluxDB 1.8.10 (built from the Go module proxy) and Mosquitto (apt), all
on 127.0.0.1, data and logs under ``settings.state_dir``, downloads and builds under ``settings.cache_dir``.
``up`` is idempotent: a healthy running service is left alone.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.kafkaadmin import SCRATCH_RUN, SCRATCH_TOPIC, delete_topics, ensure_topics, prefixed, run_of
from pipeline.settings import Settings
from pipeline.stack import influx, kafka, logins, mosquitto
from pipeline.stack.process import StackError, port_open, read_pid, stop_pid, tail, wait_for_service

Report = Callable[[str], None]

# Tests and benchmarks also write to InfluxDB databases named like their topic prefixes.
SCRATCH_DATABASE = re.compile(rf"^{SCRATCH_RUN}$")

__all__ = [
    "SCRATCH_DATABASE",
    "SCRATCH_TOPIC",
    "Pruned",
    "ServiceStatus",
    "StackError",
    "delete_topics",
    "down",
    "ensure_topics",
    "prefixed",
    "prune",
    "register_site_files",
    "run_of",
    "site_files",
    "status",
    "up",
]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    pid: int | None
    healthy: bool
    managed: bool
    log: str
    detail: str = ""


def _kafka_healthy(settings: Settings) -> bool:
    host, _, port = settings.kafka.bootstrap_servers.split(",")[0].rpartition(":")
    if not port_open(host, int(port)):
        return False
    return asyncio.run(_kafka_metadata(settings))


async def _kafka_metadata(settings: Settings) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        await admin.close()


def _node_healthy(settings: Settings, node: int) -> bool:
    return port_open(settings.kafka.host, settings.kafka.node_ports(node)[0])


def _mqtt_healthy(settings: Settings) -> bool:
    return port_open(settings.mqtt.host, settings.mqtt.port)


def status(settings: Settings) -> list[ServiceStatus]:
    k, i, m = settings.kafka, settings.influx, settings.mqtt
    if k.bootstrap is None and k.brokers > 1:
        # A cluster: one row per node (answering on its port), healthy when the cluster also answers metadata.
        cluster = _kafka_healthy(settings)
        brokers = [
            ServiceStatus(
                kafka.node_name(settings, n),
                f"{k.host}:{k.node_ports(n)[0]}",
                read_pid(kafka.paths(settings, n)["pid"]),
                cluster and _node_healthy(settings, n),
                True,
                str(kafka.paths(settings, n)["log"]),
            )
            for n in kafka.nodes(settings)
        ]
    else:
        brokers = [
            ServiceStatus(
                "kafka",
                k.bootstrap_servers,
                read_pid(kafka.paths(settings)["pid"]),
                _kafka_healthy(settings),
                k.bootstrap is None,
                str(kafka.paths(settings)["log"]),
            )
        ]
    return [
        *brokers,
        ServiceStatus(
            "influxdb",
            i.base_url,
            read_pid(influx.paths(settings)["pid"]),
            influx.healthy(settings),
            i.url is None,
            str(influx.paths(settings)["log"]),
        ),
        ServiceStatus(
            "mosquitto",
            f"mqtt://{m.host}:{m.port}",
            read_pid(mosquitto.paths(settings)["pid"]),
            _mqtt_healthy(settings),
            not m.external,
            str(mosquitto.paths(settings)["log"]),
        ),
    ]


def _report_packages() -> tuple[str, ...]:
    from pipeline.reports import tools

    return tools.PACKAGES


def _report_tools(settings: Settings) -> bool:
    from pipeline.reports import tools

    return tools.install(settings)


def site_files(paths: Sequence[Path]) -> list[Path]:
    """Site files named directly, and every ``*.yaml``/``*.yml``/``*.json`` in a folder named (sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml", ".json") and f.is_file())
        else:
            out.append(p)
    return out


def register_site_files(settings: Settings, paths: Sequence[Path], *, revoke: bool = False) -> logins.Change:
    """Register the devices of these site files with the broker (:func:`logins.sync_site_files`): adds and
    updates; devices gone from these files are revoked only with ``revoke``."""
    from pipeline import siteconfig

    files: dict[Path, Mapping[str, str]] = {}
    for path in site_files(paths):
        try:
            files[path] = siteconfig.load(path).device_secrets()
        except siteconfig.SiteConfigError as exc:
            raise StackError(str(exc)) from None
        except KeyError as exc:  # a secret_ref that does not resolve
            raise StackError(f"{path}: {exc.args[0] if exc.args else exc}") from None
    if not files:
        raise StackError(f"no site files in {', '.join(map(str, paths))}")
    return logins.sync_site_files(settings, files, revoke=revoke)


def up(settings: Settings, report: Report = print, *, create_topics: bool = True) -> list[ServiceStatus]:
    """Install what is missing, start what is not running, wait until all three answer."""
    for d in (settings.cache_dir, settings.data_dir, settings.log_dir, settings.conf_dir):
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    if not settings.mqtt.external:
        _step(report, "mosquitto", "installing from apt", lambda: mosquitto.install(settings))
    # The daily record's CJK font, pdftoppm and font subsetter (pipeline/reports/tools.py), from apt like Mosquitto.
    _step(report, "report tools", "installing " + ", ".join(_report_packages()), lambda: _report_tools(settings))
    if settings.kafka.bootstrap is None:
        _step(
            report,
            "kafka",
            f"fetching Kafka {settings.kafka.version} jars with Maven",
            lambda: kafka.install(settings),
        )
    if settings.influx.url is None:
        _step(
            report,
            "influxdb",
            f"building InfluxDB {settings.influx.version} with go install (~1 min)",
            lambda: influx.install(settings),
        )

    # Start all three first, then wait: Kafka's JVM start overlaps the others.
    if settings.kafka.bootstrap is None:
        for n in kafka.nodes(settings):
            if not _node_healthy(settings, n):
                _start_fresh(
                    settings,
                    kafka.node_name(settings, n),
                    kafka.paths(settings, n),
                    lambda n=n: kafka.start(settings, n),  # type: ignore[misc]
                    report,
                )
    if settings.influx.url is None and not influx.healthy(settings):
        _start_fresh(settings, "influxdb", influx.paths(settings), lambda: influx.start(settings), report)
    if not settings.mqtt.external:
        # Registrations are kept as they are (pipeline.stack.logins): `stack up` only makes sure the default
        # bridge instance has its login and the files are rendered; site files are registered by the caller.
        logins.register_bridges(settings, [settings.ingest.bridge_instance])
        logins.ensure_rendered(settings)
        pid = read_pid(mosquitto.paths(settings)["pid"])
        if _mqtt_healthy(settings) and pid and mosquitto.conf_outdated(settings):
            # A broker still on an older configuration may lack a protection (client ids bound to logins, the
            # packet limit): restart it. SIGTERM saves sessions and queued messages; devices reconnect.
            report("mosquitto: its configuration changed (larder upgraded); restarting it to apply it")
            stop_pid(pid, timeout=30)
            mosquitto.paths(settings)["pid"].unlink(missing_ok=True)
            _start_fresh(settings, "mosquitto", mosquitto.paths(settings), lambda: mosquitto.start(settings), report)
        elif _mqtt_healthy(settings) and pid:
            mosquitto.reload(settings)
        elif not _mqtt_healthy(settings):
            _start_fresh(settings, "mosquitto", mosquitto.paths(settings), lambda: mosquitto.start(settings), report)
        else:
            raise StackError(
                f"port {settings.mqtt.port} is taken by a Mosquitto that larder did not start; "
                "stop it (systemctl stop mosquitto) or set LARDER_MQTT__PORT"
            )

    # A broker with thousands of partitions recovers them for minutes after an unclean stop, logging as it
    # goes: wait while it makes progress rather than for a fixed time.
    if settings.kafka.bootstrap is None and settings.kafka.brokers > 1:
        for n in kafka.nodes(settings):
            _wait(
                report,
                kafka.node_name(settings, n),
                lambda n=n: _node_healthy(settings, n),  # type: ignore[misc]
                kafka.paths(settings, n),
                stall=120,
                cap=1200,
                progress=lambda n=n: kafka.progress(settings, n),  # type: ignore[misc]
            )
    _wait(
        report,
        "kafka",
        lambda: _kafka_healthy(settings),
        kafka.paths(settings),
        stall=120,
        cap=1200,
        progress=lambda: kafka.progress(settings),
    )
    _wait(report, "influxdb", lambda: influx.healthy(settings), influx.paths(settings), stall=60, cap=600)
    influx.bootstrap(settings)
    _wait(report, "mosquitto", lambda: _mqtt_healthy(settings), mosquitto.paths(settings), stall=15, cap=60)
    if create_topics:
        created = asyncio.run(ensure_topics(settings))
        if created:
            report(f"kafka: created topics {', '.join(created)}")
    report(f"stack up in {time.monotonic() - t0:.1f} s")
    return status(settings)


def _step(report: Report, name: str, what: str, action: Callable[[], bool]) -> None:
    t = time.monotonic()
    report(f"{name}: checking install")
    if action():
        report(f"{name}: {what} - done in {time.monotonic() - t:.1f} s")


def _start_fresh(settings: Settings, name: str, paths: dict, start: Callable[[], int], report: Report) -> None:  # type: ignore[type-arg]
    stale = read_pid(paths["pid"])
    if stale:
        report(f"{name}: pid {stale} is not answering; restarting it")
        stop_pid(stale)
    pid = start()
    report(f"{name}: started (pid {pid}), log {paths['log']}")


def _wait(
    report: Report,
    name: str,
    check: Callable[[], bool],
    paths: dict,  # type: ignore[type-arg]
    *,
    stall: float,
    cap: float,
    progress: Callable[[], str] | None = None,
) -> None:
    logs = [paths[k] for k in ("log", "out") if k in paths]
    why = wait_for_service(
        check,
        pid=read_pid(paths["pid"]),
        logs=logs,
        stall_timeout=stall,
        cap=cap,
        on_wait=lambda s: report(
            f"{name}: not answering yet after {s:.0f} s ({progress() if progress else 'starting'})"
        ),
    )
    if why is not None:
        tails = "\n".join(f"--- {p}:\n{tail(p)}" for p in logs if p.exists())
        raise StackError(f"{name} did not become healthy: {why}.\n{tails}")
    report(f"{name}: healthy")


def down(settings: Settings, report: Report = print) -> None:
    brokers = [(kafka.node_name(settings, n), kafka.paths(settings, n)) for n in kafka.nodes(settings)]
    for name, paths in (
        ("mosquitto", mosquitto.paths(settings)),
        *brokers,
        ("influxdb", influx.paths(settings)),
    ):
        pid = read_pid(paths["pid"])
        if pid is None:
            report(f"{name}: not running")
            continue
        stop_pid(pid, timeout=30)
        paths["pid"].unlink(missing_ok=True)
        report(f"{name}: stopped (pid {pid})")


@dataclass(frozen=True)
class Pruned:
    topics: list[str]
    databases: list[str]
    table_dirs: list[str]


def prune(settings: Settings, prefixes: list[str] | None = None, *, dry_run: bool = False) -> Pruned:
    """Delete what runs on scratch prefixes left behind: topics, workers' local table files and, on the managed
    InfluxDB, databases.

    ``prefixes`` names runs explicitly; without it every scratch name (``SCRATCH_TOPIC``/``SCRATCH_DATABASE``)
    goes. The pipeline's own prefix and database are refused either way.
    """
    if prefixes and settings.topic_prefix in prefixes:
        raise StackError(f"refusing to delete the pipeline's own topics (prefix {settings.topic_prefix!r})")
    if prefixes:
        matchers = [prefixed(p) for p in prefixes]

        def topic(name: str) -> bool:
            return any(m(name) for m in matchers)

        def database(name: str) -> bool:
            return name in prefixes
    else:

        def topic(name: str) -> bool:
            return SCRATCH_TOPIC.match(name) is not None

        def database(name: str) -> bool:
            return SCRATCH_DATABASE.match(name) is not None

    topics = asyncio.run(delete_topics(settings, topic, dry_run=dry_run))
    databases: list[str] = []
    if settings.influx.url is None:  # an external InfluxDB's databases are its operator's
        databases = sorted(d for d in influx.list_databases(settings) if d != settings.influx.database and database(d))
        for d in [] if dry_run else databases:
            influx.drop_database(settings, d)
    # A worker's RocksDB files are named after its app id, "<prefix>-worker" (pipeline.agents.faust.app): the
    # topic rule fits them (a benchmark's baseline worker is "<prefix>-base-worker").
    tables = settings.data_dir / "worker"
    table_dirs = sorted(d.name for d in (tables.iterdir() if tables.is_dir() else []) if topic(d.name))
    for d in [] if dry_run else table_dirs:
        shutil.rmtree(tables / d, ignore_errors=True)
    return Pruned(topics, databases, table_dirs)
