"""`larder grade ...`: the grading worker, grades, rollups, overrides, history and a small JSON endpoint."""

from __future__ import annotations

import asyncio
import csv
import io
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from pipeline import serde
from pipeline.cliutil import SiteOpt, console, ensure_worker_topics, fail, faust_options, faust_worker, usage
from pipeline.grading.evidence import Override, iso_ms
from pipeline.grading.score import DEFAULT_WEIGHTS, SiteGrade, Weights
from pipeline.grading.topics import GradingTopics
from pipeline.schemas import ms_to_iso
from pipeline.settings import Settings, load_settings
from pipeline.siteconfig import SiteConfig, SiteConfigError
from pipeline.siteconfig import load as load_sites
from pipeline.terminal import make_console
from pipeline.topics import Topics

grade_app = typer.Typer(
    help="Risk grade per site (A-D, explained) and the station / district rollups (docs/grading.md).",
    no_args_is_help=True,
)

AsOfOpt = Annotated[
    str | None,
    typer.Option("--as-of", help="RFC 3339 instant (e.g. 2026-11-30T16:00:00Z); default: the latest event seen"),
]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="json, csv or table")]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="JSON file overriding the weights and caps")]


def register(app: typer.Typer) -> None:
    app.add_typer(grade_app, name="grade")


def _context(sites: Path | None) -> tuple[Settings, GradingTopics, SiteConfig]:
    settings = load_settings(**({"site_config": sites} if sites else {}))
    try:
        cfg = load_sites(settings.site_config)
    except SiteConfigError as exc:
        raise fail(str(exc)) from None
    return settings, GradingTopics(Topics(settings.topic_prefix, settings.readings_partitions)), cfg


def _weights(path: Path | None) -> Weights:
    if path is None:
        return DEFAULT_WEIGHTS
    try:
        return Weights.model_validate(serde.loads(path.read_bytes()))
    except (OSError, serde.JSONDecodeError, ValidationError) as exc:
        raise usage(f"{path}: not a usable weights file: {exc}") from None


def _as_of(value: str | None, latest: int) -> int:
    if value is None:
        if latest == 0:
            raise fail("no evidence yet (is `larder grade worker` running?); give --as-of to grade static parts")
        return latest
    try:
        return iso_ms(value)
    except ValueError:
        raise usage(f"--as-of {value!r} is not an RFC 3339 time") from None


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except RuntimeError as exc:  # a missing topic: say so instead of a traceback
        raise fail(str(exc)) from None
    except Exception as exc:
        raise fail(f"cannot read from Kafka: {exc!r}") from None


def _emit(rows: list[dict[str, Any]], fmt: str, columns: list[str] | None = None) -> None:
    if fmt == "json":
        sys.stdout.write(serde.dumps_readable(rows).decode())
    elif fmt == "csv":
        cols = columns or sorted({k for r in rows for k in r})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
    else:
        raise usage(f"--format must be json, csv or table, not {fmt!r}")


def _grade_row(g: SiteGrade) -> dict[str, Any]:
    return {
        "site": g.site,
        "station": g.station,
        "district": g.district,
        "as_of": ms_to_iso(g.as_of_ms),
        "grade": g.grade,
        "computed": g.computed,
        "points": g.points,
        "static": g.static_points,
        "dynamic": g.dynamic_points,
        "override": f"{g.override.grade} by {g.override.by}: {g.override.reason}" if g.override else "",
        "rapid_tests_failed": _quantity(g, "rapid_tests"),
        "rapid_tests_confirmed": _quantity(g, "rapid_confirmed"),
        "top_factors": "; ".join(f"{c.factor} {c.points:g} ({' '.join(c.alert_ids)})" for c in g.top),
    }


def _quantity(g: SiteGrade, factor: str) -> int:
    """A counted factor's quantity (0 when the grade has no such factor, e.g. one made with older weights)."""
    return int(next((c.quantity for c in g.factors if c.factor == factor), 0))


@grade_app.command("worker")
def worker(
    sites: SiteOpt = None,
    log_level: Annotated[str, typer.Option("--log-level", "-l", help="crit, error, warn, info or debug")] = "warn",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="local table files")] = None,
    store: Annotated[str, typer.Option("--store", help="rocksdb (default) or memory")] = "rocksdb",
    weights: WeightsOpt = None,
    commit_interval: Annotated[float, typer.Option("--commit-interval", help="offset commit period, s")] = 2.8,
    session_timeout: Annotated[
        float, typer.Option("--session-timeout", help="seconds before a dead worker's partitions move")
    ] = 30.0,
    heartbeat_interval: Annotated[float, typer.Option("--heartbeat-interval", help="seconds")] = 3.0,
    metrics_port: Annotated[
        int, typer.Option("--metrics-port", help="serve Prometheus metrics on 127.0.0.1:PORT (0: off)")
    ] = 0,
) -> None:
    """Fold the alerts and grade-overrides topics into per-site evidence (a Faust table) and publish daily grades."""

    from pipeline.grading.app import GradingOptions, make_app
    from pipeline.grading.store import ensure_topics

    common = faust_options(store, data_dir, commit_interval, session_timeout, heartbeat_interval)
    settings, gt, cfg = _context(sites)
    w = _weights(weights)
    ensure_worker_topics(settings, ensure_topics(settings, gt))
    gapp = make_app(settings, gt, cfg, GradingOptions(**common), w)
    console.print(f"[cyan]>[/] grading worker {gapp.app.conf.id} on {settings.kafka.bootstrap_servers}")
    if metrics_port:
        from pipeline.grading.metrics import serve

        serve(gapp, metrics_port)
    fworker = faust_worker(gapp.app, log_level)
    fworker.execute_from_commandline()


@grade_app.command("show")
def show(
    site: Annotated[list[str] | None, typer.Argument(help="site ids (default: every site of the site file)")] = None,
    sites: SiteOpt = None,
    as_of: AsOfOpt = None,
    fmt: FormatOpt = "table",
    weights: WeightsOpt = None,
) -> None:
    """Each site's grade as of an instant: points, computed and effective grade, override, top factors with
    the alert ids behind them (json: every contribution)."""
    from pipeline.grading import store

    settings, gt, cfg = _context(sites)
    unknown = [s for s in site or [] if s not in cfg.sites]
    if unknown:
        raise usage(f"not in the site file: {', '.join(unknown)}")
    if fmt not in ("json", "csv", "table"):
        raise usage(f"--format must be json, csv or table, not {fmt!r}")
    w = _weights(weights)  # refused before anything is read
    states = _run(store.read_states(settings, gt))
    at = _as_of(as_of, store.latest_event_ms(states))
    result = store.grades(states, cfg, at, site or None, w)
    if fmt == "json":
        _emit([g.model_dump(mode="json") for g in result], "json")
    elif fmt == "csv":
        _emit([_grade_row(g) for g in result], "csv", list(_grade_row(result[0]).keys()) if result else ["site"])
    elif fmt == "table":
        from rich.table import Table

        table = Table(title=f"risk grades as of {ms_to_iso(at)}")
        cols = ("site", "station", "grade", "computed", "points", "static", "dynamic", "rapid tests", "top factors")
        for col in cols:
            table.add_column(col)
        for g in result:
            row = _grade_row(g)
            table.add_row(
                g.site,
                g.station,
                g.grade + (" (override)" if g.override else ""),
                g.computed,
                f"{g.points:g}",
                f"{g.static_points:g}",
                f"{g.dynamic_points:g}",
                f"{row['rapid_tests_failed']} failed, {row['rapid_tests_confirmed']} lab-confirmed",
                row["top_factors"],
            )
        make_console().print(table)
    else:
        raise usage(f"--format must be json, csv or table, not {fmt!r}")


@grade_app.command("rollup")
def rollup_cmd(
    level: Annotated[str, typer.Option("--level", help="station or district")] = "station",
    period: Annotated[str, typer.Option("--period", help="day, week (7 days) or month (30 days)")] = "day",
    sites: SiteOpt = None,
    as_of: AsOfOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="json or csv")] = "json",
    weights: WeightsOpt = None,
) -> None:
    """Coverage, online share, open alerts by severity x age, time to ack / resolve (median, p90), escalations
    to station / district, confirmed share of camera alerts, grade mix and the C/D sites, per station or district."""
    from pipeline.grading import rollup, store

    if level not in ("station", "district"):
        raise usage("--level must be station or district")
    if period not in rollup.PERIOD_MS:
        raise usage("--period must be day, week or month")
    if fmt not in ("json", "csv"):
        raise usage(f"--format must be json or csv, not {fmt!r}")
    settings, gt, cfg = _context(sites)
    w = _weights(weights)
    states = _run(store.read_states(settings, gt))
    at = _as_of(as_of, store.latest_event_ms(states))
    groups = rollup.rollup(states, cfg, at, period, level, w)  # type: ignore[arg-type]
    if fmt == "csv":
        rows = rollup.to_csv_rows(groups)
        cols = list(rollup.CSV_COLUMNS) + sorted({k for r in rows for k in r if k.startswith("open_")})
        _emit(rows, "csv", cols)
    else:
        _emit(groups, fmt)


@grade_app.command("override")
def override(
    site: Annotated[str, typer.Argument(help="site id")],
    reason: Annotated[str, typer.Option("--reason", help="why (kept in the audit trail; required)")],
    by: Annotated[str, typer.Option("--by", help="who decides (a station user)")],
    grade: Annotated[str | None, typer.Option("--grade", help="A, B, C or D")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove the override: the computed grade applies")] = False,
    role: Annotated[str, typer.Option("--role", help="station, district or admin")] = "station",
    sites: SiteOpt = None,
) -> None:
    """Override a site's grade with a reason (an audited record on the grade-overrides topic)."""
    from pipeline.grading import store

    if (grade is None) == (not clear):
        raise usage("give --grade A|B|C|D or --clear")
    settings, gt, cfg = _context(sites)
    if site not in cfg.sites:
        raise usage(f"site {site!r} is not in the site file")
    try:
        record = Override.model_validate(
            {"site": site, "grade": grade, "reason": reason, "by": by, "role": role, "at_ms": int(time.time() * 1000)}
        )
    except ValidationError as exc:
        raise usage("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    _run(store.ensure_topics(settings, gt))
    _run(store.publish_override(settings, gt, record))
    sys.stdout.write(record.model_dump_json() + "\n")


@grade_app.command("audit")
def audit(
    site: Annotated[str | None, typer.Argument(help="site id (default: all)")] = None,
    sites: SiteOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="json or csv")] = "json",
) -> None:
    """Every override ever recorded (who, when, grade, reason), oldest first."""
    from pipeline.grading import store

    settings, gt, _ = _context(sites)
    found = _run(store.read_overrides(settings, gt, site))
    rows = [{**o.model_dump(), "at": ms_to_iso(o.at_ms)} for o in found]
    _emit(rows, fmt, ["site", "at", "grade", "by", "role", "reason", "at_ms"])


@grade_app.command("history")
def history(
    site: Annotated[str, typer.Argument(help="site id")],
    sites: SiteOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="json or csv")] = "json",
) -> None:
    """The site's daily grade records (as of each local midnight), oldest first."""
    from pipeline.grading import store

    settings, gt, _ = _context(sites)
    rows = _run(store.read_history(settings, gt, site))
    if fmt == "csv":
        rows = [{k: r[k] for k in ("site", "as_of_ms", "grade", "computed", "points")} for r in rows]
    _emit(rows, fmt)


@grade_app.command("serve")
def serve(
    sites: SiteOpt = None,
    port: Annotated[int, typer.Option("--port", help="listen on 127.0.0.1:PORT")] = 8495,
    refresh_s: Annotated[float, typer.Option("--refresh", help="re-read the states at most this often, s")] = 5.0,
    weights: WeightsOpt = None,
) -> None:
    """A small read-only JSON endpoint: GET /v1/grades[?as_of=], /v1/grades/{site}, /v1/rollup?level=&period=."""
    from aiohttp import web

    from pipeline.grading.http import make_web_app

    settings, gt, cfg = _context(sites)
    web.run_app(
        make_web_app(settings, gt, cfg, _weights(weights), refresh_s),
        host="127.0.0.1",
        port=port,
        print=lambda m: console.print(f"[cyan]>[/] {m}"),
    )
