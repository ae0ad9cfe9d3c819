"""CLI verbs of ingestion: `larder devices add|list|rotate-secret`, `larder bridge`, `larder hooks`."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.settings import Settings, load_settings
from pipeline.siteconfig import SiteConfigError

if TYPE_CHECKING:
    from pipeline.ingest.bridge import Bridge

console = Console(stderr=True)
devices_app = typer.Typer(
    help="Register devices, cameras and rapid-test instruments in the site file and apply them to Mosquitto "
    "(no broker restart).",
    no_args_is_help=True,
)

SiteOpt = Annotated[
    Path | None,
    typer.Option("--sites", "-s", help="site configuration file (contract 5); default $LARDER_SITE_CONFIG"),
]


def _settings(sites: Path | None, **overrides: object) -> Settings:
    return load_settings(**({"site_config": sites} if sites else {}), **overrides)


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(1)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def _apply(settings: Settings, config: object) -> None:
    from pipeline.ingest.registry import apply_auth
    from pipeline.stack import StackError

    try:
        reloaded = apply_auth(settings, config)  # type: ignore[arg-type]
    except (StackError, OSError, KeyError) as exc:
        why = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise _fail(
            f"the site file is saved, but Mosquitto's password file was not updated: {why}. "
            "Fix that, then run `larder stack up` (it regenerates the file)."
        ) from None
    if reloaded:
        console.print("[cyan]>[/] Mosquitto password file and ACL regenerated and reloaded (SIGHUP)")
    else:
        console.print(
            "[yellow]![/] Mosquitto password file and ACL regenerated; Mosquitto is not running, they apply when "
            "it starts (`larder stack up`)"
        )


@devices_app.command("add")
def devices_add(
    ident: Annotated[
        str,
        typer.Argument(help="device, camera or instrument id (its MQTT username / X-Larder-Camera / -Instrument)"),
    ],
    site: Annotated[str, typer.Option("--site", help="site id the device, camera or instrument belongs to")],
    asset: Annotated[str | None, typer.Option("--asset", help="asset a device watches (for devices)")] = None,
    kitchen: Annotated[str | None, typer.Option("--kitchen", help="kitchen a camera watches (for cameras)")] = None,
    instrument: Annotated[
        str | None,
        typer.Option(
            "--instrument",
            help="a rapid-test instrument of this type (enzyme_inhibition, colloidal_gold, fluorescence, "
            "spectrophotometer, other): its X-Larder-Instrument id (contract 6)",
        ),
    ] = None,
    secret: Annotated[
        str | None, typer.Option("--secret", help="the secret to use; default: generate one and print it once")
    ] = None,
    sites: SiteOpt = None,
) -> None:
    """Add a device (--asset), a camera (--kitchen) or a rapid-test instrument (--instrument TYPE) to the site
    file, keeping its comments."""
    from pipeline.ingest import registry

    if sum(x is not None for x in (asset, kitchen, instrument)) != 1:
        raise _fail("give exactly one of --asset (a device), --kitchen (a camera) or --instrument TYPE")
    settings = _settings(sites)
    if asset is not None and ident == settings.mqtt.bridge_user:
        raise _fail(f"{ident!r} is the bridge's MQTT user name; choose another device id")
    value = secret or registry.new_secret()
    if len(value) < 8:
        raise _fail("--secret must be at least 8 characters")
    try:
        if asset is not None:
            config = registry.add_device(settings.site_config, site, ident, asset, value)
        elif kitchen is not None:
            config = registry.add_camera(settings.site_config, site, ident, kitchen, value)
        else:
            assert instrument is not None
            config = registry.add_instrument(settings.site_config, site, ident, instrument, value)
    except SiteConfigError as exc:
        raise _fail(str(exc)) from None
    kind = "device" if asset else ("camera" if kitchen else "instrument")
    console.print(f"[green]added[/] {kind} {ident} to site {site} in {settings.site_config}")
    if asset or instrument:  # MQTT users: devices, and instruments (contract 6 over MQTT)
        _apply(settings, config)
    if secret is None:
        typer.echo(value)  # stdout, once: the only time the generated secret is shown


@devices_app.command("list")
def devices_list(sites: SiteOpt = None) -> None:
    """List devices and cameras with their site, asset/kitchen and profile (never their secrets)."""
    from pipeline import siteconfig

    settings = _settings(sites)
    try:
        config = siteconfig.load(settings.site_config)
    except SiteConfigError as exc:
        raise _fail(str(exc)) from None
    table = Table(title=str(settings.site_config))
    for col in ("id", "kind", "site", "asset / kitchen", "profile", "secret"):
        table.add_column(col)
    for dev_id, site_id, dev in config.devices():
        profile = config.sites[site_id].assets[dev.asset].profile
        table.add_row(dev_id, "device", site_id, dev.asset, profile, "inline" if dev.secret else dev.secret_ref or "")
    for cam_id, site_id, cam in config.cameras():
        table.add_row(cam_id, "camera", site_id, cam.kitchen, "", "inline" if cam.secret else cam.secret_ref or "")
    for ins_id, site_id, ins in config.instruments():
        table.add_row(ins_id, "instrument", site_id, ins.type, "", "inline" if ins.secret else ins.secret_ref or "")
    Console().print(table)


@devices_app.command("rotate-secret")
def devices_rotate(
    ident: Annotated[str, typer.Argument(help="device or camera id")],
    secret: Annotated[str | None, typer.Option("--secret", help="the new secret; default: generate and print")] = None,
    sites: SiteOpt = None,
) -> None:
    """Give a device or camera a new secret; the old one stops working as soon as the broker reloads."""
    from pipeline.ingest import registry

    settings = _settings(sites)
    value = secret or registry.new_secret()
    if len(value) < 8:
        raise _fail("--secret must be at least 8 characters")
    try:
        config = registry.rotate_secret(settings.site_config, ident, value)
    except SiteConfigError as exc:
        raise _fail(str(exc)) from None
    console.print(f"[green]rotated[/] the secret of {ident} in {settings.site_config}")
    _apply(settings, config)
    if secret is None:
        typer.echo(value)


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
            help="shared subscription (several bridges split the load; default) or a plain one (one bridge)",
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

    _logging(verbose)
    settings = _settings(sites)
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
    except RuntimeError as exc:
        raise _fail(str(exc)) from None
    if not retire:
        return
    if not b.retired:
        raise _fail(
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

    _logging(verbose)
    settings = _settings(sites)
    console.print(
        f"[cyan]>[/] hooks on http://{host or settings.ingest.hooks_host}:{port or settings.ingest.hooks_port}"
        f" -> {settings.kafka.bootstrap_servers}, sites {settings.site_config}"
    )
    try:
        hooks_mod.serve(settings, host, port)
    except (RuntimeError, OSError) as exc:
        raise _fail(str(exc)) from None


def register(app: typer.Typer) -> None:
    app.add_typer(devices_app, name="devices")
    app.command("bridge")(bridge)
    app.command("hooks")(hooks)
