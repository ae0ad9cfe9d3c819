"""`larder worker`: run the Faust detection agents (devices: cold chain + liveness; kitchens)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.agents.core import Concern, settle_gc
from pipeline.cliutil import console, ensure_worker_topics, fail, faust_options, faust_worker, usage
from pipeline.settings import Settings, load_settings
from pipeline.topics import Topics

DEFAULT_CONCERNS = (
    "pipeline.agents.devices:concerns,pipeline.agents.kitchen:concerns,pipeline.agents.rapidtests:concerns"
)
LOG_LEVELS = ("crit", "error", "warn", "info", "debug")


def load_concerns(spec: str, settings: Settings) -> list[Concern[Any, Any]]:
    """``module:function`` entries, comma separated; each function takes the settings and returns concerns."""
    found: list[Concern[Any, Any]] = []
    for entry in filter(None, (s.strip() for s in spec.split(","))):
        module_name, _, attr = entry.partition(":")
        if not attr:
            raise ValueError(f"--concerns entry {entry!r} is not module:function")
        factory = getattr(importlib.import_module(module_name), attr)
        found.extend(factory(settings))
    names = [c.name for c in found]
    if len(set(names)) != len(names):
        raise ValueError(f"two concerns share a name: {names}")
    return found


def worker(
    sites: Annotated[
        Path | None, typer.Option("--sites", "-s", help="site configuration file; default $LARDER_SITE_CONFIG")
    ] = None,
    clock: Annotated[
        str,
        typer.Option(
            "--clock",
            help="live: timers follow the wall clock (the worker publishes 1 s ticks); "
            "replay: timers follow the tick records `larder replay` writes",
        ),
    ] = "live",
    log_level: Annotated[str, typer.Option("--log-level", "-l", help=f"one of {', '.join(LOG_LEVELS)}")] = "warn",
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="local table files (RocksDB); default <state dir>/data/worker/<app id>"),
    ] = None,
    store: Annotated[str, typer.Option("--store", help="rocksdb (default) or memory")] = "rocksdb",
    tick_interval: Annotated[
        float,
        typer.Option("--tick-interval", envvar="LARDER_WORKER_TICK_INTERVAL", help="live clock period, seconds"),
    ] = 1.0,
    commit_interval: Annotated[float, typer.Option("--commit-interval", help="offset commit period, s")] = 2.8,
    session_timeout: Annotated[
        float,
        typer.Option("--session-timeout", help="seconds before a dead worker's partitions move (Kafka's min: 6)"),
    ] = 6.0,
    heartbeat_interval: Annotated[float, typer.Option("--heartbeat-interval", help="seconds")] = 1.5,
    standby_replicas: Annotated[
        int,
        typer.Option(
            "--standby-replicas",
            envvar="LARDER_WORKER_STANDBY_REPLICAS",
            min=0,
            help="warm copies of each table partition that other workers of the group keep from its changelog: "
            "a failed worker's partitions resume without a restore, but each copy costs about twice the CPU of "
            "the worker's own processing (BENCHMARKS.md); 0: restored from the changelog on failover",
        ),
    ] = 0,
    metrics_port: Annotated[
        int,
        typer.Option(
            "--metrics-port",
            envvar="LARDER_WORKER_METRICS_PORT",
            help="serve Prometheus metrics on 127.0.0.1:PORT (0: off)",
        ),
    ] = 0,
    busy_clock: Annotated[
        str,
        typer.Option(
            "--busy-clock",
            help="what the larder_worker_busy_*_seconds metrics measure: wall (the time of each part, ~80 ns a "
            "record; includes waits for the consumer thread's turn with the interpreter) or cpu (the main thread's "
            "CPU time, exact, ~1 µs a record: for profiling)",
        ),
    ] = "wall",
    concerns: Annotated[
        str, typer.Option("--concerns", help="module:function list building the detectors", hidden=True)
    ] = DEFAULT_CONCERNS,
) -> None:
    """Run the detection agents until interrupted (Ctrl-C / SIGTERM stop cleanly; state is in Kafka)."""

    from pipeline.agents.faust.app import ClockMode, WorkerOptions, make_app

    if clock not in ("live", "replay"):
        raise usage(f"--clock must be live or replay, not {clock!r}")
    if log_level not in LOG_LEVELS:
        raise usage(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    if busy_clock not in ("wall", "cpu"):
        raise usage(f"--busy-clock must be wall or cpu, not {busy_clock!r}")
    common = faust_options(store, data_dir, commit_interval, session_timeout, heartbeat_interval)
    settings = load_settings(**({"site_config": sites} if sites else {}))
    topics = Topics(settings.topic_prefix, settings.readings_partitions)
    try:
        found = load_concerns(concerns, settings)
    except Exception as exc:  # a site file or rule error: say which, don't dump a trace
        raise fail(f"cannot build the detectors: {exc}") from None
    mode: ClockMode = "live" if clock == "live" else "replay"
    options = WorkerOptions(
        clock=mode,
        tick_interval_s=tick_interval,
        standby_replicas=standby_replicas,
        busy_clock="cpu" if busy_clock == "cpu" else "wall",
        **common,
    )
    # Topics must exist before the agents subscribe (an agent whose topic is missing may never subscribe).
    from pipeline.kafkaadmin import ensure_topics

    ensure_worker_topics(settings, ensure_topics(settings, topics))
    wapp = make_app(settings, topics, found, options, announce=lambda line: console.print(f"[cyan]>[/] {line}"))
    console.print(
        f"[cyan]>[/] worker {wapp.app.conf.id}: {', '.join(c.name for c in found)} on "
        f"{settings.kafka.bootstrap_servers}, clock {mode}, store {store}"
    )
    if metrics_port:
        from pipeline.agents.metrics import serve

        serve(wapp, metrics_port)
    fworker = faust_worker(wapp.app, log_level)
    settle_gc()
    fworker.execute_from_commandline()
