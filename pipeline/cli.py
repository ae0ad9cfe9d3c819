"""The `larder` command. Settings are read here, at the edge, and passed down."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline import devices as _devices_commands
from pipeline.agents.commands import worker as _worker_command
from pipeline.alerts import commands as _alerts_commands
from pipeline.cliutil import SiteOpt, console, fail, settings_for
from pipeline.console import commands as _console_commands
from pipeline.grading import commands as _grading_commands
from pipeline.ingest import commands as _ingest_commands
from pipeline.replay import commands as _replay_commands
from pipeline.reports import commands as _report_commands
from pipeline.terminal import make_console
from simulators import commands as _simulator_commands

app = typer.Typer(
    help="Larder: food-safety sensor pipeline (MQTT/hooks -> Kafka -> Faust detectors -> alerts, InfluxDB).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
stack_app = typer.Typer(
    help="Install, start, check and stop the local stack (Kafka, InfluxDB, Mosquitto).", no_args_is_help=True
)
app.add_typer(stack_app, name="stack")
_ingest_commands.register(app)  # larder bridge, larder hooks
_devices_commands.register(app)  # larder devices ...
_alerts_commands.register(app)  # larder notifier, larder sink, larder api
_simulator_commands.register(app)  # larder simulate, larder demo
_replay_commands.register(app)  # larder record, larder replay
app.command("worker")(_worker_command)  # larder worker: the Faust detection agents
_console_commands.register(app)  # larder console, larder users ...
_report_commands.register(app)  # larder report daily | verify | sign | unsigned | serve | retention
_grading_commands.register(app)  # larder grade worker|show|rollup|override|audit|history|serve


@stack_app.command("up")
def stack_up(
    sites: Annotated[
        list[Path] | None,
        typer.Option(
            "--sites",
            "-s",
            help="register the devices of this site file, or of every *.yaml/*.yml/*.json in this folder, with "
            "the broker (repeatable). Without it the broker's registrations stay as they are.",
        ),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="revoke devices that were registered from these files and left them"),
    ] = False,
    brokers: Annotated[
        int | None,
        typer.Option(
            "--brokers",
            min=1,
            max=5,
            help="Kafka KRaft nodes on loopback (3: replication factor 3, min.insync.replicas 2); "
            "remembered by later commands; default 1 or what the last `up` used",
        ),
    ] = None,
) -> None:
    """Install what is missing (cached), start Kafka, InfluxDB and Mosquitto, wait until healthy.

    Registration only grows unless you confirm: devices registered earlier from a site file given here and gone
    from it now are listed, and revoked only with --yes (or when you answer yes). Devices registered from other
    files, `larder devices add` or `larder replay` are never touched."""
    from pipeline import siteconfig, stack

    if brokers is not None:
        os.environ["LARDER_KAFKA__BROKERS"] = str(brokers)  # read at the edge, like every LARDER_ setting
    settings = settings_for()

    def report(m: str) -> None:
        console.print(f"[cyan]>[/] {m}")

    try:
        for f in stack.site_files(sites or []):
            siteconfig.load(f)  # a broken site file fails before anything starts
        statuses = stack.up(settings, report=report)
        if sites and not settings.mqtt.external:
            change = stack.register_site_files(settings, sites)
            if change.stale:
                console.print(
                    f"[yellow]![/] {len(change.stale)} device(s) registered from these site files are no longer in "
                    "them:\n" + "\n".join(f"    {d}  ({src})" for d, src in change.stale.items())
                )
                if yes or (sys.stdin.isatty() and typer.confirm("revoke their broker logins?", default=False)):
                    change_r = stack.register_site_files(settings, sites, revoke=True)
                    console.print(f"[green]revoked[/] {', '.join(change_r.revoked)}")
                    change.revoked = change_r.revoked
                else:
                    console.print("[yellow]![/] kept their logins; run again with --yes to revoke them")
            report(
                f"mosquitto: {len(change.added)} devices added, {len(change.updated)} secrets changed, "
                f"{len(change.revoked)} revoked; {change.total} devices registered in all"
            )
    except siteconfig.SiteConfigError as exc:
        raise fail(f"the site file cannot be used, nothing registered:\n{exc}") from None
    except stack.StackError as exc:
        raise fail(str(exc)) from None
    _print_status(statuses)


@stack_app.command("down")
def stack_down() -> None:
    """Stop the services `stack up` started; leaves no process behind. Data is kept."""
    from pipeline import stack

    stack.down(settings_for(), report=lambda m: console.print(f"[cyan]>[/] {m}"))


@stack_app.command("status")
def stack_status() -> None:
    """Show each service's health, address, pid and log. Exit code 1 if any is unhealthy."""
    from pipeline import stack

    statuses = stack.status(settings_for())
    _print_status(statuses)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


@stack_app.command(
    "prune",
    help=(
        "Delete the Kafka topics, InfluxDB databases and workers' table files that tests, benchmarks and "
        "simulations left behind.\n\n"
        "Each of those runs on a prefix of its own and deletes it when it ends; an interrupted one leaves it "
        "behind, and thousands of partitions make the broker's start after an unclean stop take minutes. "
        "Without --prefix only scratch names go (t + 10 hex, b/bench + hex, sim/live/demo + 8 hex); the "
        "pipeline's own topics and database are never touched."
    ),
)
def stack_prune(
    prefix: Annotated[
        list[str] | None,
        typer.Option("--prefix", "-p", help="delete this run's topics, database and table files instead (repeatable)"),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="only list what would be deleted")] = False,
) -> None:
    from pipeline import stack

    try:
        pruned = stack.prune(settings_for(), prefix, dry_run=dry_run)
    except stack.StackError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # a broker error is the answer the user needs, not a traceback
        raise fail(f"could not list or delete: {exc!r}") from None
    runs = sorted({stack.run_of(n) for n in pruned.topics})
    verb = "would delete" if dry_run else "deleted"
    console.print(
        f"{verb} {len(pruned.topics)} topics of {len(runs)} runs, {len(pruned.databases)} InfluxDB databases "
        f"and {len(pruned.table_dirs)} workers' table folders"
    )
    names = sorted(set(runs) | set(pruned.databases) | {d.removesuffix("-worker") for d in pruned.table_dirs})
    if names:
        more = f" and {len(names) - 30} more" if len(names) > 30 else ""
        console.print(f"runs: {', '.join(names[:30])}{more}")


@stack_app.command("logs")
def stack_logs(
    service: Annotated[str, typer.Argument(help="kafka (kafka-1 ... kafka-N in a cluster), influxdb or mosquitto")],
    lines: Annotated[int, typer.Option("-n", help="lines to show")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
) -> None:
    """Print the end of a service's log."""
    from pipeline import stack

    logs = {s.name: s.log for s in stack.status(settings_for())}
    if service not in logs:
        raise fail(f"unknown service {service!r}; choose one of {', '.join(logs)}")
    path = logs[service]
    if not os.path.exists(path):
        raise fail(f"no log yet at {path}")
    subprocess.run(["tail", f"-n{lines}", *(["-F"] if follow else []), path], check=False)


@stack_app.command("render-mosquitto")
def stack_render_mosquitto(
    out: Annotated[Path, typer.Option(help="folder for mosquitto.conf, passwd and acl")],
    data: Annotated[Path, typer.Option(help="the broker's persistence folder, as the broker sees it")],
    sites: SiteOpt = None,
    bridge: Annotated[
        list[str] | None,
        typer.Option(
            "--bridge", help="bridge instance to give a login (repeatable); default $LARDER_INGEST__BRIDGE_INSTANCE"
        ),
    ] = None,
) -> None:
    """Write Mosquitto's config, password file and ACL for a broker run elsewhere (deploy/compose.yaml)."""
    from pipeline import siteconfig
    from pipeline.stack import mosquitto

    settings = settings_for(sites)
    try:
        devices = siteconfig.load(settings.site_config).device_secrets()
    except siteconfig.SiteConfigError as exc:
        raise fail(str(exc)) from None
    except KeyError as exc:  # a secret_ref that does not resolve: its message names it
        raise fail(f"{settings.site_config}: {exc.args[0] if exc.args else exc}") from None
    mosquitto.render_for_container(settings, devices, out, data, bridge or [])
    n = len(bridge or [None])
    console.print(f"wrote {out}/mosquitto.conf, passwd ({len(devices)} devices + {n} bridge instance(s)) and acl")


def _print_status(statuses: list) -> None:  # type: ignore[type-arg]
    table = Table(title="larder stack")
    for col in ("service", "health", "address", "pid", "log"):
        table.add_column(col)
    for s in statuses:
        health = "[green]healthy[/]" if s.healthy else "[red]down[/]"
        table.add_row(s.name, health, s.address, str(s.pid or ("external" if not s.managed else "-")), s.log)
    make_console().print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
