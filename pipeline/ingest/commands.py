"""CLI verbs of ingestion: `larder bridge`, `larder hooks` (`larder devices` is :mod:`pipeline.devices`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.cliutil import SiteOpt, console, fail, settings_for, setup_logging
from pipeline.siteconfig import SiteConfigError

if TYPE_CHECKING:
    from pipeline.ingest.bridge import Bridge


def bridge(
    sites: SiteOpt = None,
    instance: Annotated[
        str | None, typer.Option("--instance", help="this bridge's id (MQTT client id); each instance its own")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Prometheus /metrics port; 0 turns it off")
    ] = None,
    shared: Annotated[
        bool | None,
        typer.Option(
            "--shared/--exclusive",
            help="shared subscription (several bridges split the load; a broker restart can lose readings, "
            "docs/ingest.md) or a plain one (one bridge; the default)",
        ),
    ] = None,
    retire: Annotated[
        bool,
        typer.Option(
            "--retire",
            help="retire this instance for good: forward what its session has queued, then drop the session "
            "(other instances keep running; see docs/ingest.md)",
        ),
    ] = False,
    idle: Annotated[
        float, typer.Option("--idle", min=0.5, help="with --retire: seconds without a message that mean drained")
    ] = 3.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the MQTT -> Kafka bridge (contract 1) until Ctrl-C; SIGHUP re-reads the site file.

    With --retire, the instance unsubscribes, forwards its queued readings to Kafka, drops its persistent
    session on the broker and exits: scale down without leaving a queue that collects readings forever."""
    from pipeline.ingest import bridge as bridge_mod

    setup_logging(verbose)
    settings = settings_for(sites)
    update = {
        k: v
        for k, v in (("bridge_metrics_port", metrics_port), ("bridge_instance", instance), ("bridge_shared", shared))
        if v is not None
    }
    if update:
        settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(update=update)})

    def progress(b: Bridge) -> None:
        console.print(
            f"[cyan]>[/] accepted {b.accepted:,} readings, dead-lettered {b.dead_lettered:,}, in flight {b.inflight:,}"
        )

    name = settings.ingest.bridge_instance
    console.print(
        f"[cyan]>[/] bridge {name}{' (retiring)' if retire else ''}: mqtt://{settings.mqtt.host}:{settings.mqtt.port}"
        f" -> {settings.kafka.bootstrap_servers} (topics {settings.topic_prefix}.*), sites {settings.site_config}"
    )
    try:
        b = asyncio.run(bridge_mod.serve(settings, on_progress=progress, retire=retire, idle_s=idle))
    except SiteConfigError as exc:
        raise fail(f"the site file cannot be used, nothing started:\n{exc}") from None
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    if not retire:
        return
    if not b.retired:
        raise fail(
            f"interrupted: bridge {name} forwarded {b.accepted:,} readings and dead-lettered {b.dead_lettered:,}; "
            "its session is kept with whatever is still queued. Run `larder bridge --retire` again to finish."
        )
    if not b.session_present:
        console.print(
            f"[yellow]![/] the broker had no session for bridge {name} (client id {b.client_id}): nothing to retire"
        )
    console.print(
        f"[green]✓[/] bridge {name} retired: {b.accepted:,} queued readings forwarded to Kafka, "
        f"{b.dead_lettered:,} dead-lettered; its session is dropped, the broker queues nothing more for it"
    )


def hooks(
    sites: SiteOpt = None,
    host: Annotated[str | None, typer.Option("--host", help="listen address; default 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option("--port", help="listen port; default $LARDER_INGEST__HOOKS_PORT")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve the signed camera hook (contract 2), the signed rapid-test hook (contract 6, POST /v1/rapid-tests)
    and /metrics until Ctrl-C."""
    from pipeline.ingest import hooks as hooks_mod

    setup_logging(verbose)
    settings = settings_for(sites)
    console.print(
        f"[cyan]>[/] hooks on http://{host or settings.ingest.hooks_host}:{port or settings.ingest.hooks_port}"
        f" -> {settings.kafka.bootstrap_servers}, sites {settings.site_config}"
    )
    try:
        hooks_mod.serve(settings, host, port)
    except SiteConfigError as exc:
        raise fail(f"the site file cannot be used, nothing started:\n{exc}") from None
    except (RuntimeError, OSError) as exc:
        raise fail(str(exc)) from None


def register(app: typer.Typer) -> None:
    app.command("bridge")(bridge)
    app.command("hooks")(hooks)
