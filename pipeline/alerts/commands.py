"""CLI verbs of alert delivery: `larder notifier`, `larder sink`, `larder api`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cliutil import SiteOpt, VerboseOpt, console, fail, setup_logging
from pipeline.settings import Settings, load_settings
from pipeline.siteconfig import SiteConfig, SiteConfigError
from pipeline.topics import Topics

#: Client libraries whose INFO lines would drown the services' own.
QUIET = ("aiokafka", "httpx")


def _load(sites: Path | None) -> tuple[Settings, SiteConfig, Topics]:
    from pipeline import siteconfig

    settings = load_settings(**({"site_config": sites} if sites else {}))
    try:
        config = siteconfig.load(settings.site_config)
    except SiteConfigError as exc:
        raise fail(str(exc)) from None
    return settings, config, Topics(prefix=settings.topic_prefix, partitions=settings.readings_partitions)


def _until_signal(main: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, main.set)


def notifier(sites: SiteOpt = None, verbose: VerboseOpt = False) -> None:
    """Route, escalate and deliver alerts (SMS, webhooks, DingTalk, WeCom) until each is acknowledged.

    Rebuilds its state from the alerts, acks and deliveries topics on start; run one per topic prefix.
    """
    from pipeline.alerts.notifier import Notifier

    setup_logging(verbose, QUIET)
    settings, config, topics = _load(sites)
    try:
        service = Notifier(settings, topics, config, on_event=lambda m: console.print(f"[cyan]>[/] {m}"))
    except ValueError as exc:
        raise fail(str(exc)) from None

    async def main() -> None:
        stop = asyncio.Event()
        _until_signal(stop)
        await service.run(stop)

    console.print(f"[cyan]>[/] notifier on {settings.kafka.bootstrap_servers}, prefix {topics.prefix}")
    asyncio.run(main())


def sink(
    bucket: Annotated[str | None, typer.Option("--bucket", help="InfluxDB bucket; default <database>/<rp>")] = None,
    group: Annotated[str, typer.Option("--group", help="Kafka consumer group")] = "larder-sink",
    verbose: VerboseOpt = False,
) -> None:
    """Write readings, alert transitions, annotations and deliveries to InfluxDB (offsets after InfluxDB acks)."""
    from pipeline.sinks.influx import InfluxSink, SinkStats

    setup_logging(verbose, QUIET)
    settings = load_settings()
    topics = Topics(prefix=settings.topic_prefix, partitions=settings.readings_partitions)

    def progress(s: SinkStats) -> None:
        console.print(
            f"[cyan]>[/] {s.points:,} points from {s.records:,} records, {s.retries} retries, {s.skipped} skipped"
        )

    async def main() -> None:
        stop = asyncio.Event()
        _until_signal(stop)
        stats = await InfluxSink(settings, topics, bucket=bucket, group_id=group, progress=progress).run(stop)
        progress(stats)

    console.print(f"[cyan]>[/] sink {settings.kafka.bootstrap_servers} -> {settings.influx.base_url}")
    asyncio.run(main())


def api(
    sites: SiteOpt = None,
    host: Annotated[str | None, typer.Option("--host", help="default notify.api_host")] = None,
    port: Annotated[int | None, typer.Option("--port", help="default notify.api_port")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve ack links (mobile page), POST /v1/alerts/{id}/ack and the SMS reply webhook."""
    from aiohttp import web

    from pipeline.alerts.api import AckApi, RedactingAccessLog
    from pipeline.alerts.notifier import routing_config

    setup_logging(verbose, QUIET)
    settings, config, topics = _load(sites)
    n = settings.notify
    service = AckApi(settings, topics, routing_config(settings, config))
    console.print(f"[cyan]>[/] ack API on http://{host or n.api_host}:{port or n.api_port} (links: {n.public_url})")
    web.run_app(
        service.app(),
        host=host or n.api_host,
        port=port or n.api_port,
        print=None,
        access_log_class=RedactingAccessLog,
    )


def register(app: typer.Typer) -> None:
    app.command("notifier")(notifier)
    app.command("sink")(sink)
    app.command("api")(api)
