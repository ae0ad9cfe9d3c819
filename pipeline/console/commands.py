"""CLI verbs: ``larder console`` (serve the web console) and ``larder users add/passwd/remove/list``."""

from __future__ import annotations

import getpass
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.cliutil import SiteOpt
from pipeline.settings import load_settings

if TYPE_CHECKING:
    from pipeline.console.users import UsersFile

console = Console(stderr=True)
users_app = typer.Typer(
    help="Console users (users file next to the site file, argon2 hashes): add, passwd, remove, list.",
    no_args_is_help=True,
)

UsersOpt = Annotated[
    Path | None,
    typer.Option("--users", "-u", help="users file; default users.yaml next to the site file ($LARDER_CONSOLE_USERS)"),
]


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(1)


def _paths(sites: Path | None, users_file: Path | None) -> tuple[Path, Path]:
    from pipeline.console import users

    settings = load_settings(**({"site_config": sites} if sites else {}))
    return settings.site_config, users_file or users.default_path(settings.site_config)


def _load_users(path: Path) -> UsersFile:
    """The users file, or exit 1 saying what is wrong with it."""
    from pipeline.console import users

    try:
        return users.load(path)
    except users.UsersFileError as exc:
        raise _fail(str(exc)) from None


def _password(stdin: bool) -> str:
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise _fail("the two passwords differ")
    return first


def serve(
    sites: SiteOpt = None,
    users_file: UsersOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="address to listen on (TLS in front in production)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", envvar="LARDER_CONSOLE_PORT", help="port")] = 8500,
    bucket: Annotated[str | None, typer.Option("--bucket", help="InfluxDB bucket of the readings")] = None,
    secure_cookies: Annotated[
        bool, typer.Option("--secure-cookies", help="mark cookies Secure (served over HTTPS, e.g. behind a proxy)")
    ] = False,
    trust_proxy: Annotated[
        bool, typer.Option("--trust-proxy", help="take the client address from X-Forwarded-For (behind a proxy only)")
    ] = False,
    grades_refresh: Annotated[
        float,
        typer.Option(
            "--grades-refresh",
            help="seconds between re-reads of the grading worker's evidence for the grades page (0: no grades)",
        ),
    ] = 300.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    """Serve the supervisors' web console: overview, live alert queue, alert pages with actions, sites, devices,
    risk grades and the station / district rollups.

    Reads the alert topics from the start on launch (read model), then follows them live. Users come from the
    users file (`larder users add`); every action is audited to Kafka and InfluxDB.
    """
    from aiohttp import web

    from pipeline import siteconfig
    from pipeline.console import users
    from pipeline.console.app import Console as ConsoleApp
    from pipeline.topics import Topics

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    settings = load_settings(**({"site_config": sites} if sites else {}))
    try:
        config = siteconfig.load(settings.site_config)
    except siteconfig.SiteConfigError as exc:
        raise _fail(str(exc)) from None
    path = users_file or users.default_path(settings.site_config)
    loaded = _load_users(path)
    if not loaded.users:
        console.print(f"[yellow]warning:[/] no users in {path}; add one with `larder users add NAME --role admin`")
    topics = Topics(prefix=settings.topic_prefix, partitions=settings.readings_partitions)
    app = ConsoleApp(
        settings,
        topics,
        config,
        path,
        bucket=bucket,
        secure_cookies=secure_cookies,
        trust_proxy=trust_proxy,
        grades_refresh_s=grades_refresh,
    )
    console.print(f"[cyan]>[/] console on http://{host}:{port} (users {path}, prefix {topics.prefix})")
    web.run_app(app.app(), host=host, port=port, print=None, access_log=None)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="login name")],
    role: Annotated[str, typer.Option("--role", "-r", help="operator, site_manager, station, district or admin")],
    site: Annotated[list[str] | None, typer.Option("--site", help="operator/site_manager: a site id (repeat)")] = None,
    station: Annotated[list[str] | None, typer.Option("--station", help="station: a station name (repeat)")] = None,
    district: Annotated[list[str] | None, typer.Option("--district", help="district: a district name (repeat)")] = None,
    display: Annotated[str, typer.Option("--name", help="display name")] = "",
    officer: Annotated[
        bool,
        typer.Option(
            "--food-safety-officer",
            help="operator/site_manager: the sites' food-safety officer (食品安全员), who signs off daily records",
        ),
    ] = False,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
    sites: SiteOpt = None,
    users_file: UsersOpt = None,
) -> None:
    """Add a user (or replace one), asking for the password; it is stored as an argon2id hash."""
    from pydantic import ValidationError

    from pipeline import siteconfig
    from pipeline.console import users

    site_path, path = _paths(sites, users_file)
    current = _load_users(path)
    try:
        pw = users.hash_password(_password(password_stdin))
        user = users.User.model_validate(
            {
                "role": role,
                "name": display,
                "password_hash": pw,
                "sites": site or [],
                "stations": station or [],
                "districts": district or [],
                "food_safety_officer": officer,
            }
        )
        import re

        if not re.match(users.USERNAME_PATTERN, name):
            raise users.UsersFileError(f"user name must match {users.USERNAME_PATTERN}")
    except users.UsersFileError as exc:
        raise _fail(str(exc)) from None
    except ValidationError as exc:
        raise _fail("; ".join(f"{'.'.join(map(str, e['loc'])) or 'user'}: {e['msg']}" for e in exc.errors())) from None
    try:
        for warning in users.check_scope_names(user, siteconfig.load(site_path)):
            console.print(f"[yellow]warning:[/] {warning}")
    except (siteconfig.SiteConfigError, FileNotFoundError) as exc:
        console.print(f"[yellow]warning:[/] scope not checked against the site file: {exc}")
    current.users[name] = user
    users.save(path, current)
    console.print(f"{name} ({role}) saved in {path}")


@users_app.command("passwd")
def users_passwd(
    name: Annotated[str, typer.Argument(help="login name")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
    sites: SiteOpt = None,
    users_file: UsersOpt = None,
) -> None:
    """Set a user's password."""
    from pipeline.console import users

    _, path = _paths(sites, users_file)
    current = _load_users(path)
    if name not in current.users:
        raise _fail(f"no user {name!r} in {path}")
    try:
        pw = users.hash_password(_password(password_stdin))
    except users.UsersFileError as exc:
        raise _fail(str(exc)) from None
    current.users[name] = current.users[name].model_copy(update={"password_hash": pw})
    users.save(path, current)
    console.print(f"password of {name} changed")


@users_app.command("remove")
def users_remove(
    name: Annotated[str, typer.Argument(help="login name")], sites: SiteOpt = None, users_file: UsersOpt = None
) -> None:
    """Remove a user; their sessions stop working at their next request."""
    from pipeline.console import users

    _, path = _paths(sites, users_file)
    current = _load_users(path)
    if current.users.pop(name, None) is None:
        raise _fail(f"no user {name!r} in {path}")
    users.save(path, current)
    console.print(f"{name} removed")


@users_app.command("list")
def users_list(sites: SiteOpt = None, users_file: UsersOpt = None) -> None:
    """List users with role and scope (never the hashes)."""
    from pipeline import siteconfig

    site_path, path = _paths(sites, users_file)
    current = _load_users(path)
    try:
        config = siteconfig.load(site_path)
    except siteconfig.SiteConfigError as exc:
        raise _fail(str(exc)) from None
    table = Table(title=str(path))
    for col in ("user", "role", "scope", "sites seen"):
        table.add_column(col)
    for name, u in sorted(current.users.items()):
        scope = ", ".join(u.sites or u.stations or u.districts) or "all"
        role = u.role + (" · food-safety officer" if u.food_safety_officer else "")
        table.add_row(name, role, scope, str(len(u.scope(config))))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("console")(serve)
    app.add_typer(users_app, name="users")
