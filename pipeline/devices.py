"""`larder devices add|list|rotate-secret|revoke|add-bridge|logins`: the site file and the broker's logins.

The site file is edited by :mod:`pipeline.siteedit` (the one writer); the broker's logins by
:mod:`pipeline.stack.logins` (the one authority). Adding or rotating changes only the device named: no other
device's login is touched.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from pipeline.cliutil import SiteOpt, console, fail, settings_for, usage
from pipeline.settings import Settings
from pipeline.siteconfig import SiteConfig, SiteConfigError
from pipeline.terminal import make_console

devices_app = typer.Typer(
    help="Register devices, cameras and bridge instances: the site file and the broker's logins (no restart).",
    no_args_is_help=True,
)


def _register(settings: Settings, config: SiteConfig, device: str) -> None:
    """Give one device of the (already saved) site file its broker login; nobody else's changes."""
    from pipeline.stack import StackError, logins

    if settings.mqtt.external:
        console.print("[yellow]![/] the broker is external: give it this device's login (`stack render-mosquitto`)")
        return
    try:
        secret = next(dev.resolve_secret() for d, _, dev in config.devices() if d == device)
        change = logins.register_devices(settings, {device: secret}, source=str(settings.site_config.resolve()))
    except (StackError, OSError, KeyError) as exc:
        why = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise fail(
            f"the site file is saved, but the broker's logins were not updated: {why}. "
            f"Fix that, then run `larder stack up --sites {settings.site_config}`."
        ) from None
    where = "reloaded (SIGHUP)" if change.reloaded else "Mosquitto is not running; applies when it starts"
    console.print(f"[cyan]>[/] broker login for {device} registered ({change.total} devices in all); {where}")


@devices_app.command("add")
def devices_add(
    ident: Annotated[str, typer.Argument(help="device or camera id (its MQTT username / X-Larder-Camera)")],
    site: Annotated[str, typer.Option("--site", help="site id the device or camera belongs to")],
    asset: Annotated[str | None, typer.Option("--asset", help="asset a device watches (for devices)")] = None,
    kitchen: Annotated[str | None, typer.Option("--kitchen", help="kitchen a camera watches (for cameras)")] = None,
    secret: Annotated[
        str | None, typer.Option("--secret", help="the secret to use; default: generate one and print it once")
    ] = None,
    sites: SiteOpt = None,
) -> None:
    """Add a device (--asset) or a camera (--kitchen) to the site file, keeping its comments."""
    from pipeline import siteedit

    if (asset is None) == (kitchen is None):
        raise usage("give exactly one of --asset (a device) or --kitchen (a camera)")
    settings = settings_for(sites)
    prefix = settings.mqtt.bridge_user
    if asset is not None and (ident == prefix or ident.startswith(f"{prefix}-")):
        raise fail(f"{ident!r}: {prefix} and names starting with {prefix}- are the bridge's MQTT users")
    value = secret or siteedit.new_secret()
    if len(value) < 8:
        raise usage("--secret must be at least 8 characters")
    try:
        if asset is not None:
            config = siteedit.add_device(settings.site_config, site, ident, asset, value)
        else:
            assert kitchen is not None
            config = siteedit.add_camera(settings.site_config, site, ident, kitchen, value)
    except SiteConfigError as exc:
        raise fail(str(exc)) from None
    kind = "device" if asset else "camera"
    console.print(f"[green]added[/] {kind} {ident} to site {site} in {settings.site_config}")
    if asset:
        _register(settings, config, ident)
    if secret is None:
        typer.echo(value)  # stdout, once: the only time the generated secret is shown


@devices_app.command("list")
def devices_list(sites: SiteOpt = None) -> None:
    """List devices and cameras with their site, asset/kitchen and profile (never their secrets)."""
    from pipeline import siteconfig

    settings = settings_for(sites)
    try:
        config = siteconfig.load(settings.site_config)
    except SiteConfigError as exc:
        raise fail(str(exc)) from None
    table = Table(title=str(settings.site_config))
    for col in ("id", "kind", "site", "asset / kitchen", "profile", "secret"):
        table.add_column(col)
    for dev_id, site_id, dev in config.devices():
        profile = config.sites[site_id].assets[dev.asset].profile
        table.add_row(dev_id, "device", site_id, dev.asset, profile, "inline" if dev.secret else dev.secret_ref or "")
    for cam_id, site_id, cam in config.cameras():
        table.add_row(cam_id, "camera", site_id, cam.kitchen, "", "inline" if cam.secret else cam.secret_ref or "")
    make_console().print(table)


@devices_app.command("rotate-secret")
def devices_rotate(
    ident: Annotated[str, typer.Argument(help="device or camera id")],
    secret: Annotated[str | None, typer.Option("--secret", help="the new secret; default: generate and print")] = None,
    sites: SiteOpt = None,
) -> None:
    """Give a device or camera a new secret; the old one stops working as soon as the broker reloads."""
    from pipeline import siteedit

    settings = settings_for(sites)
    value = secret or siteedit.new_secret()
    if len(value) < 8:
        raise usage("--secret must be at least 8 characters")
    try:
        config = siteedit.rotate_secret(settings.site_config, ident, value)
    except SiteConfigError as exc:
        raise fail(str(exc)) from None
    console.print(f"[green]rotated[/] the secret of {ident} in {settings.site_config}")
    if ident in config.device_secrets():
        _register(settings, config, ident)
    if secret is None:
        typer.echo(value)


@devices_app.command("revoke")
def devices_revoke(
    idents: Annotated[list[str], typer.Argument(help="device ids whose broker login goes")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Revoke devices' broker logins (they are refused at their next connect). The site file is not changed:
    remove them there too, or the next `larder stack up --sites` registers them again."""
    from pipeline.stack import logins

    settings = settings_for()
    known, _ = logins.registered(settings)
    missing = [i for i in idents if i not in known]
    if missing:
        raise fail(f"not registered: {', '.join(missing)}")
    console.print(f"revoking the broker logins of: {', '.join(idents)}")
    if not yes and not typer.confirm("revoke them?", default=False):
        raise fail("nothing revoked")
    change = logins.revoke_devices(settings, idents)
    console.print(f"[green]revoked[/] {len(change.revoked)}; {change.total} devices keep their logins")


@devices_app.command("add-bridge")
def devices_add_bridge(
    instances: Annotated[list[str], typer.Argument(help="bridge instance names (`larder bridge --instance`)")],
) -> None:
    """Give bridge instances their own broker logins (`stack up` registers the default instance only)."""
    from pipeline.stack import StackError, logins

    settings = settings_for()
    try:
        change = logins.register_bridges(settings, instances)
    except StackError as exc:
        raise fail(str(exc)) from None
    for name in instances:
        console.print(f"[green]bridge[/] {name}: MQTT user {settings.mqtt.bridge_login(name)[0]}")
    if not change.reloaded:
        console.print("[yellow]![/] Mosquitto is not running; the logins apply when it starts")


@devices_app.command("logins")
def devices_logins() -> None:
    """List who may log in to the broker: devices (with the site file they came from) and bridge instances."""
    from pipeline.stack import logins

    settings = settings_for()
    devices, bridges = logins.registered(settings)
    table = Table(title="broker logins")
    table.add_column("login")
    table.add_column("kind")
    table.add_column("registered from")
    for name in bridges:
        table.add_row(settings.mqtt.bridge_login(name)[0], "bridge", f"instance {name}")
    for dev, source in sorted(devices.items()):
        table.add_row(dev, "device", source)
    make_console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(devices_app, name="devices")
