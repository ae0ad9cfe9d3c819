"""The `larder` command. Settings are read here, at the edge, and passed down."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline.agents.commands import worker as _worker_command
from pipeline.alerts import commands as _alerts_commands
from pipeline.grading import commands as _grading_commands
from pipeline.ingest import commands as _ingest_commands
from pipeline.replay import commands as _replay_commands
from pipeline.settings import Settings, load_settings
from pipeline.terminal import make_console

console = make_console(stderr=True)
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
_ingest_commands.register(app)  # larder devices ..., larder bridge, larder hooks
_alerts_commands.register(app)  # larder notifier, larder sink, larder api
_replay_commands.register(app)  # larder simulate, larder record, larder replay, larder demo
app.command("worker")(_worker_command)  # larder worker: the Faust detection agents
_grading_commands.register(app)  # larder grade worker|show|rollup|override|audit|history|serve

SiteOpt = Annotated[
    Path | None,
    typer.Option("--sites", "-s", help="site configuration file (contract 5); default $LARDER_SITE_CONFIG"),
]


def settings_for(sites: Path | None = None) -> Settings:
    return load_settings(**({"site_config": sites} if sites else {}))


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@stack_app.command("up")
def stack_up(
    sites: SiteOpt = None,
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
    """Install what is missing (cached), start Kafka, InfluxDB and Mosquitto, wait until healthy."""
    from pipeline import stack

    if brokers is not None:
        os.environ["LARDER_KAFKA__BROKERS"] = str(brokers)  # read at the edge, like every LARDER_ setting
    settings = settings_for(sites)
    try:
        statuses = stack.up(settings, report=lambda m: console.print(f"[cyan]>[/] {m}"))
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
) -> None:
    """Write Mosquitto's config, password file and ACL for a broker run elsewhere (deploy/compose.yaml)."""
    from pipeline import siteconfig
    from pipeline.stack import mosquitto

    settings = settings_for(sites)
    try:
        devices = siteconfig.load(settings.site_config).device_secrets()
    except siteconfig.SiteConfigError as exc:
        raise fail(str(exc)) from None
    mosquitto.render_for_container(settings, devices, out, data)
    console.print(f"wrote {out}/mosquitto.conf, passwd ({len(devices)} devices + bridge) and acl")


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
