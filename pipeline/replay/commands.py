"""`larder record` and `larder replay` (docs/simulators.md), and the run display they share with `larder simulate`
and `larder demo` (:mod:`simulators.commands`)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.cliutil import console, fail, parse_duration, usage
from pipeline.replay.run import AlertWatch, RunResult
from pipeline.replay.score import Score
from pipeline.replay.send import SendStats
from pipeline.schemas import ms_to_iso
from pipeline.settings import Settings, load_settings
from pipeline.topics import Topics


def parse_speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text.rstrip("x"))
    except ValueError:
        raise usage(f"--speed must be a number (e.g. 60) or 'max', not {text!r}") from None
    if value <= 0:
        raise usage("--speed must be positive")
    return value


def parse_start(text: str | None, duration_s: float, clock: str) -> int | None:
    """Default: live clock -> now; otherwise the latest 00:00 UTC (08:00 in the sites' zone) from which the
    whole scenario lies in the past, so the bridge's future-timestamp check never refuses simulated data."""
    now = int(time.time() * 1000)
    if text in (None, ""):
        if clock == "live":
            return now // 1000 * 1000
        day = 86_400_000
        return (now - int(duration_s * 1000) - 60_000) // day * day
    if text == "now":
        return now // 1000 * 1000
    from pipeline.contracts.models import ts_to_ms

    try:
        return ts_to_ms(text)
    except ValueError as exc:
        raise usage(f"--start: {exc}") from None


class Display:
    """A live panel: progress through simulated time, readings sent / in Kafka, events, alerts."""

    def __init__(self, total_ms: int, title: str) -> None:
        self.total_ms = max(1, total_ms)
        self.progress = Progress(
            TextColumn(f"[bold]{title}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}% of simulated time"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task("run", total=self.total_ms)
        self.stats = SendStats()
        self.watch: AlertWatch | None = None
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)

    def _render(self) -> Group:
        s = self.stats
        t = Table.grid(padding=(0, 2))
        rate = s.readings_sent / s.wall_s if s.wall_s > 0 else 0.0
        t.add_row(
            f"readings sent [bold]{s.readings_sent:,}[/] ({rate:,.0f}/s)",
            f"in Kafka [bold]{s.readings_in_kafka:,}[/]",
            f"dead letters {s.dead_letters:,}",
            f"camera events [bold]{s.events_sent:,}[/]",
            f"ticks {s.ticks:,}",
            f"MQTT connections {s.connections}",
        )
        w = self.watch
        alerts = Table.grid(padding=(0, 2))
        if w is not None:
            alerts.add_row(f"alerts opened [bold yellow]{w.opened}[/]", f"resolved [bold green]{w.resolved}[/]")
            for a in w.latest[-4:]:
                colour = "red" if a.severity.value == "critical" else "yellow"
                alerts.add_row(f"  [{colour}]{a.rule}[/]", f"{a.subject}", f"opened {a.opened_at}")
        return Group(self.progress, t, alerts)

    def update(self, stats: SendStats) -> None:
        self.stats = stats
        self.progress.update(self.task, completed=min(stats.sim_ms, self.total_ms))
        self.live.update(self._render())

    def __enter__(self) -> Display:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.update(self.task, completed=self.total_ms if exc[0] is None else self.progress.tasks[0].completed)
        self.live.update(self._render())
        self.live.__exit__(*exc)


def print_summary(result: RunResult, title: str) -> None:
    s = result.stats
    rate = s.readings_sent / result.timings.get("send_s", s.wall_s or 1) if s.readings_sent else 0
    console.print(
        f"\n[bold]{title}[/]: sent {s.readings_sent:,} readings in {s.mqtt_messages:,} MQTT messages "
        f"({rate:,.0f} readings/s) and {s.events_sent:,} camera events in {s.hook_requests:,} signed requests; "
        f"{s.readings_in_kafka:,} readings reached Kafka, {s.dead_letters:,} dead letters, {s.ticks:,} clock ticks; "
        f"{sum(1 for a in result.alerts if a.state.value == 'open')} alerts opened. "
        f"Send {result.timings.get('send_s', 0):.1f} s, worker caught up {result.processed_wait_s:.1f} s later."
    )
    if result.score is not None:
        print_score(result.score)


def print_score(sc: Score) -> None:
    t = Table(title="alerts against the ground truth")
    for col in ("rule", "true", "detected", "false", "corroborating", "precision", "recall", "delay mean / max"):
        t.add_column(col, justify="left" if col == "rule" else "right")
    for name, r in sc.rules.items():
        delay = f"{r.mean_delay_s:.0f} s / {r.max_delay_s:.0f} s" if r.delays_s else "-"
        t.add_row(
            name,
            str(r.truths),
            str(r.detected),
            f"[red]{r.false_positives}[/]" if r.false_positives else "0",
            str(r.corroborating),
            f"{r.precision:.2f}",
            f"{r.recall:.2f}",
            delay,
        )
    console.print(t)
    for m in sc.misses[:10]:
        console.print(f"[red]missed[/] {m.rule} on {m.subject} ({m.site}) from {ms_to_iso(m.opened_at_ms)}")
    for a in sc.false_positives[:10]:
        console.print(f"[red]false alarm[/] {a.rule} on {a.subject} opened {a.opened_at}")
    verdict = "[green]meets the ground truth[/]" if sc.perfect else "[red]does not meet the ground truth[/]"
    console.print(f"result: {verdict}")


def run_and_show(
    settings: Settings,
    lines: Any,
    config: Any,
    config_path: Path,
    *,
    services: bool,
    clock: str,
    speed: float | None,
    tick_every: float,
    truth: Any,
    prefix: str | None,
    hooks_url: str | None,
    total_ms: int,
    title: str,
    extra: tuple[str, ...] = (),
) -> RunResult:
    from pipeline.replay.run import run_recording
    from pipeline.services import CORE
    from pipeline.stack import StackError

    display = Display(total_ms, title)
    try:
        with display:
            return run_recording(
                settings,
                lines,
                config,
                config_path,
                services=services,
                prefix=prefix,
                hooks_url=hooks_url,
                clock=clock,
                speed=speed,
                tick_every_s=tick_every,
                truth=truth,
                on_progress=display.update,
                report=lambda m: console.print(f"[cyan]>[/] {m}"),
                names=(*CORE, *extra),
                on_watch=lambda w: setattr(display, "watch", w),
            )
    except (StackError, RuntimeError, TimeoutError, OSError) as exc:
        raise fail(str(exc)) from None


SpeedOpt = Annotated[str, typer.Option("--speed", help="simulated seconds per wall second, or 'max'")]
TickOpt = Annotated[
    float, typer.Option("--tick-every", help="replay clock: tick the pipeline every this many simulated seconds")
]
ServicesOpt = Annotated[
    bool,
    typer.Option(
        "--services/--no-services",
        help="start bridge, hooks and worker for this run (fresh topics); --no-services uses running ones",
    ),
]
ClockOpt = Annotated[
    str,
    typer.Option("--clock", help="replay: send tick records (worker --clock replay); live: the worker's wall clock"),
]
PrefixOpt = Annotated[str | None, typer.Option("--topic-prefix", help="Kafka topic prefix (default: fresh per run)")]
HooksOpt = Annotated[str | None, typer.Option("--hooks-url", help="with --no-services: the running hook's base URL")]


def replay(
    file: Annotated[Path, typer.Argument(help="a contract-3 replay file (JSONL)")],
    speed: SpeedOpt = "max",
    truth: Annotated[
        Path | None, typer.Option("--truth", help="ground truth JSONL to score the alerts against")
    ] = None,
    sites: Annotated[
        Path | None,
        typer.Option("--sites", "-s", help="site file with the devices' secrets; default $LARDER_SITE_CONFIG"),
    ] = None,
    tick_every: TickOpt = 10.0,
    services: ServicesOpt = True,
    clock: ClockOpt = "replay",
    topic_prefix: PrefixOpt = None,
    hooks_url: HooksOpt = None,
    timeline: Annotated[Path | None, typer.Option("--timeline", help="write the timeline here, not to stdout")] = None,
) -> None:
    """Send a recording through the real path, advancing the pipeline's clock along it; print the alert timeline
    (JSONL, contract 4) and, given --truth, per-rule precision, recall and detection delay."""
    from pipeline import siteconfig
    from pipeline.contracts.replay import read_lines, read_truth
    from pipeline.replay.timeline import timeline_jsonl

    settings = load_settings(**({"site_config": sites} if sites else {}))
    try:
        config = siteconfig.load(settings.site_config)
        lines = list(read_lines(file))
        truth_list = read_truth(truth) if truth else None
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    if not lines:
        raise fail(f"{file} holds no replay lines")
    sp = parse_speed(speed)
    total = lines[-1].at_ms - lines[0].at_ms
    console.print(
        f"[cyan]>[/] {file}: {len(lines):,} lines over {total / 60000:.1f} min from {ms_to_iso(lines[0].at_ms)}"
    )
    result = run_and_show(
        settings,
        lines,
        config,
        settings.site_config,
        services=services,
        clock=clock,
        speed=sp,
        tick_every=tick_every,
        truth=truth_list,
        prefix=topic_prefix,
        hooks_url=hooks_url,
        total_ms=total,
        title=file.name,
    )
    data = timeline_jsonl(result.alerts)
    if timeline:
        timeline.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    print_summary(result, file.name)


def record(
    out: Annotated[Path, typer.Option("--out", "-o", help="the replay file to write (JSONL, contract 3)")],
    duration: Annotated[str | None, typer.Option("--duration", help="stop after this long (e.g. 10m)")] = None,
    topic_prefix: Annotated[
        str | None, typer.Option("--topic-prefix", help="where the hooks write (default $LARDER_TOPIC_PREFIX)")
    ] = None,
) -> None:
    """Capture what arrives (device publishes from MQTT; camera and rapid-test requests, accepted or refused, from
    Kafka) into a replay file until Ctrl-C or --duration."""
    from pipeline.replay.record import RECORDER_INSTANCE
    from pipeline.replay.record import record as do_record

    settings = load_settings(**({"topic_prefix": topic_prefix} if topic_prefix else {}))
    if not settings.mqtt.external:
        from pipeline.stack import logins

        logins.register_bridges(settings, [RECORDER_INSTANCE])  # a reader login of its own
    topics = Topics(settings.topic_prefix, settings.readings_partitions)
    try:
        limit = parse_duration(duration) if duration else None
    except ValueError as exc:
        raise usage(str(exc)) from None

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        if limit is not None:
            loop.call_later(limit, stop.set)
        last = [0.0]

        def progress(s: Any) -> None:
            if time.monotonic() - last[0] > 2:
                last[0] = time.monotonic()
                console.print(
                    f"[cyan]>[/] recorded {s.mqtt:,} device messages, {s.hooks:,} hook requests, "
                    f"{s.rapid_tests:,} rapid-test requests"
                )

        stats = await do_record(
            settings,
            topics,
            out,
            stop,
            ready=lambda: console.print(f"[cyan]>[/] recording to {out} (Ctrl-C to stop)"),
            on_progress=progress,
        )
        span = ((stats.last_ms or 0) - (stats.first_ms or 0)) / 1000
        console.print(
            f"[green]recorded[/] {stats.lines:,} lines ({stats.mqtt:,} device messages, {stats.hooks:,} hook "
            f"requests, {stats.rapid_tests:,} rapid-test requests) over {span:.0f} s into {out}"
        )

    try:
        asyncio.run(go())
    except (RuntimeError, OSError) as exc:
        raise fail(str(exc)) from None


def alert_table(result: RunResult) -> None:
    t = Table(title="alert timeline (event time)")
    for col in ("at", "state", "severity", "rule", "subject", "opened at"):
        t.add_column(col)
    for a in result.alerts:
        colour = {"open": "yellow", "resolved": "green"}.get(a.state.value, "white")
        t.add_row(
            ms_to_iso(a.at_ms)[11:19],
            f"[{colour}]{a.state.value}[/]",
            a.severity.value,
            a.rule,
            a.subject,
            a.opened_at[11:19],
        )
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command("record")(record)
    app.command("replay")(replay)
