"""`larder simulate` and `larder demo`: generate a scenario and drive it through the real pipeline (docs/simulators.md).

The display, the run and the scoring are `larder replay`'s (:mod:`pipeline.replay.commands`); what these two add
is the generator, so they live with the simulators and ``pipeline.replay`` never imports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cliutil import console, fail, parse_duration, usage
from pipeline.contracts.models import ms_to_iso
from pipeline.contracts.replay import write_lines, write_truth
from pipeline.replay.commands import (
    ClockOpt,
    HooksOpt,
    PrefixOpt,
    ServicesOpt,
    SpeedOpt,
    TickOpt,
    alert_table,
    parse_speed,
    parse_start,
    print_summary,
    run_and_show,
)
from pipeline.replay.run import RunResult, fresh_prefix
from pipeline.replay.timeline import timeline_jsonl
from pipeline.settings import Settings, load_settings
from pipeline.siteconfig import write_site_file
from simulators.core import GENERATED_HEADER, Scenario
from simulators.scenarios import LIBRARY, build


def simulate(
    scenario: Annotated[str, typer.Option("--scenario", help="a library scenario name or a scenario YAML file")],
    sites: Annotated[int | None, typer.Option("--sites", help="number of simulated sites")] = None,
    speed: SpeedOpt = "max",
    duration: Annotated[str | None, typer.Option("--duration", help="simulated time, e.g. 90m, 6h, 7d")] = None,
    seed: Annotated[int, typer.Option("--seed", help="same seed, same readings, secrets and truth")] = 1,
    start: Annotated[str | None, typer.Option("--start", help="simulated start (RFC 3339 or 'now')")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="folder for sites.yaml, the lines sent, truth, timeline")
    ] = None,
    tick_every: TickOpt = 10.0,
    services: ServicesOpt = True,
    clock: ClockOpt = "replay",
    topic_prefix: PrefixOpt = None,
    hooks_url: HooksOpt = None,
    check: Annotated[bool, typer.Option("--check", help="exit 1 unless the alerts meet the ground truth")] = False,
) -> None:
    """Simulate sites and drive the real device path (MQTT with device credentials, signed hooks); show
    progress, then compare the alerts with the simulator's ground truth."""

    if clock not in ("replay", "live"):
        raise usage("--clock must be replay or live")
    sp = parse_speed(speed)
    if clock == "live" and sp != 1.0:
        raise usage("--clock live follows the wall clock: use --speed 1 (or the replay clock for other speeds)")
    settings = load_settings()
    try:
        dur = parse_duration(duration) if duration else None
        default_dur = LIBRARY[scenario].default_duration_s if scenario in LIBRARY else 6 * 3600
        t0 = parse_start(start, dur or default_dur, clock)
        sc = build(scenario, seed=seed, sites=sites, start_ms=t0, duration_s=dur)
    except ValueError as exc:
        raise usage(str(exc)) from None
    prefix = topic_prefix or (fresh_prefix() if services else settings.topic_prefix)
    folder = out or settings.state_dir / "sim" / prefix
    n = _write_files(folder, sc)
    console.print(
        f"[cyan]>[/] {sc.name}: {sc.description}\n[cyan]>[/] {len(sc.config.sites)} sites, "
        f"{sum(1 for _ in sc.config.devices())} loggers, {sum(1 for _ in sc.config.cameras())} cameras, {n:,} "
        f"messages over {(sc.end_ms - sc.start_ms) / 3_600_000:.1f} h from {ms_to_iso(sc.start_ms)}; "
        f"{len(sc.truth)} true alerts; files in {folder}"
    )
    if not services:
        console.print(f"[cyan]>[/] using running services: they must load {folder / 'sites.yaml'}")
    result = _run(
        settings,
        sc,
        folder,
        prefix,
        services=services,
        clock=clock,
        speed=sp,
        tick_every=tick_every,
        hooks_url=hooks_url,
    )
    print_summary(result, sc.name)
    console.print(f"[cyan]>[/] timeline: {folder / 'timeline.jsonl'}")
    if check and result.score is not None and not result.score.perfect:
        raise typer.Exit(1)


def demo(
    speed: Annotated[str, typer.Option("--speed", help="simulated seconds per wall second")] = "120",
    scenario: Annotated[str, typer.Option("--scenario", help="which scenario to show")] = "demo",
) -> None:
    """The quick start: bring up the local stack, start the pipeline, run a simulated site for a few minutes at
    high speed with a live view of readings and alerts, then a summary against the ground truth."""
    from pipeline import stack

    settings = load_settings()
    console.print("[bold]Larder demo[/]: local stack, then the pipeline, then a simulated site.")
    try:
        stack.up(settings, report=lambda m: console.print(f"[cyan]>[/] {m}"))
    except stack.StackError as exc:
        raise fail(str(exc)) from None
    if scenario not in LIBRARY:
        raise usage(f"unknown scenario {scenario!r}; choose one of {', '.join(LIBRARY)}")
    t0 = parse_start(None, LIBRARY[scenario].default_duration_s, "replay")
    sc = build(scenario, start_ms=t0)
    prefix = fresh_prefix("demo")
    folder = settings.state_dir / "sim" / prefix
    _write_files(folder, sc)
    console.print(f"[cyan]>[/] {sc.description}")
    # The demo shows the whole pipeline: the sink and the notifier too.
    result = _run(settings, sc, folder, prefix, speed=parse_speed(speed), title="demo", extra=("sink", "notifier"))
    alert_table(result)
    print_summary(result, "demo")
    console.print(
        f"[cyan]>[/] files: {folder} (sites.yaml, sent.jsonl, truth.jsonl, timeline.jsonl); replay it with\n"
        f"    larder replay {folder / 'sent.jsonl'} --sites {folder / 'sites.yaml'} --truth {folder / 'truth.jsonl'}"
    )


def _write_files(folder: Path, sc: Scenario) -> int:
    """The scenario's site file, ground truth and the lines to send, in ``folder``; returns the line count."""
    folder.mkdir(parents=True, exist_ok=True)
    write_site_file(folder / "sites.yaml", sc.config_doc, header=GENERATED_HEADER)
    write_truth(folder / "truth.jsonl", sc.truth)
    return write_lines(folder / "sent.jsonl", sc.iter_lines())


def _run(
    settings: Settings,
    sc: Scenario,
    folder: Path,
    prefix: str,
    *,
    speed: float | None,
    services: bool = True,
    clock: str = "replay",
    tick_every: float = 10.0,
    hooks_url: str | None = None,
    title: str | None = None,
    extra: tuple[str, ...] = (),
) -> RunResult:
    """Send the scenario through the pipeline (the run display of `larder replay`); the alert timeline is
    written to ``folder/timeline.jsonl``."""
    result = run_and_show(
        settings,
        sc.iter_lines(),
        sc.config,
        folder / "sites.yaml",
        services=services,
        clock=clock,
        speed=speed,
        tick_every=tick_every,
        truth=sc.truth,
        prefix=prefix,
        hooks_url=hooks_url,
        total_ms=sc.end_ms - sc.start_ms,
        title=title or sc.name,
        extra=extra,
    )
    (folder / "timeline.jsonl").write_bytes(timeline_jsonl(result.alerts))
    return result


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
    app.command("demo")(demo)
