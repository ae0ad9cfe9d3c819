"""What every `larder` command shares: the console, how an error ends a command, the exit codes, common options.

Exit codes (documented in the README):

* ``0``: done;
* ``1``: an error the user can fix in what the command was pointed at: a site file or recording that does not
  load, a service that cannot be reached or did not start, a refused operation;
* ``2``: usage: an option or argument is wrong (Typer/Click use 2 for unknown options too).

Errors go to standard error as one ``error: ...`` line, never as a traceback; output meant for pipes (timelines,
JSON) goes to standard output.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Coroutine
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.settings import Settings, load_settings
from pipeline.terminal import make_console

if TYPE_CHECKING:
    import faust

#: Messages, progress and errors: standard error, so standard output stays clean for pipes; as wide as a log
#: needs off a terminal (:mod:`pipeline.terminal`).
console = make_console(stderr=True)


class ExitCode(IntEnum):
    OK = 0
    USER_ERROR = 1
    USAGE = 2


def fail(message: str, code: ExitCode = ExitCode.USER_ERROR) -> typer.Exit:
    """Print ``error: message`` and return the exit to raise: ``raise fail("...") from None``."""
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(int(code))


def usage(message: str) -> typer.Exit:
    """A wrong option or argument value (exit code 2, as Click gives for an unknown option)."""
    return fail(message, ExitCode.USAGE)


SiteOpt = Annotated[
    Path | None,
    typer.Option("--sites", "-s", help="site configuration file (contract 5); default $LARDER_SITE_CONFIG"),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]


def faust_options(
    store: str, data_dir: Path | None, commit_interval: float, session_timeout: float, heartbeat_interval: float
) -> dict[str, Any]:
    """The Faust worker options `larder worker` and `larder grade worker` share, as keyword arguments of their
    options records; a ``--store`` other than rocksdb or memory is a usage error."""
    if store not in ("rocksdb", "memory"):
        raise usage("--store must be rocksdb or memory")
    return {
        "store": store,
        "data_dir": data_dir,
        "commit_interval_s": commit_interval,
        "session_timeout_s": session_timeout,
        "heartbeat_interval_s": heartbeat_interval,
    }


def settings_for(sites: Path | None = None, **overrides: object) -> Settings:
    """Settings from the environment, with ``--sites`` when given: read here, at the edge, and passed down."""
    return load_settings(**({"site_config": sites} if sites else {}), **overrides)


def setup_logging(verbose: bool, quiet: tuple[str, ...] = ("aiokafka",)) -> None:
    """Log lines with time and source; the chatty client libraries in ``quiet`` only from warnings up."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


def parse_duration(text: str | float) -> float:
    """``90``, ``"90s"``, ``"15m"``, ``"6h"``, ``"7d"`` -> seconds."""
    if isinstance(text, int | float):
        return float(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 6h, 7d)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def ensure_worker_topics(settings: Settings, ensure: Coroutine[Any, Any, list[str]]) -> None:
    """Run ``ensure`` (a topic-creating coroutine) before a Faust worker starts: an agent whose topic is missing
    may never subscribe. It runs on a loop of its own, closed after; Faust gets a fresh current loop. Prints the
    topics created; an unreachable Kafka is one ``error:`` line."""
    loop = asyncio.new_event_loop()
    try:
        created = loop.run_until_complete(ensure)
    except Exception as exc:
        raise fail(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}") from None
    finally:
        loop.close()
    if created:
        console.print(f"[cyan]>[/] created topics {', '.join(created)}")
    asyncio.set_event_loop(asyncio.new_event_loop())


def faust_worker(app: faust.App, log_level: str) -> faust.Worker:
    """A quiet Faust worker for ``app`` at ``log_level`` (crit/error/warn/info/debug; Larder's own loggers too)."""
    import faust

    logging.getLogger("pipeline").setLevel(log_level.upper().replace("WARN", "WARNING").replace("CRIT", "CRITICAL"))
    fworker = faust.Worker(app, loglevel=log_level, quiet=True)
    # Faust's progress spinner sets the *root* logger to DEBUG (its handler spins on every record), so every
    # aiokafka/faust debug call builds a LogRecord: ~10% of the worker's CPU under load (py-spy). No spinner.
    fworker.spinner = None
    return fworker
