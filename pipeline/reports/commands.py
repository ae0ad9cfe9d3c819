"""`larder report ...`: make, verify and sign daily temperature records; the generator service; retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cliutil import SiteOpt
from pipeline.settings import Settings, load_settings
from pipeline.terminal import make_console

console = make_console(stderr=True)
out_console = make_console()

app = typer.Typer(
    help="Daily temperature records per site (PDF + CSV, hash-chained, signed by the food-safety officer).",
    no_args_is_help=True,
)

SiteId = Annotated[str, typer.Option("--site", help="site id, as in the site file")]
DateOpt = Annotated[str, typer.Option("--date", help="the day, YYYY-MM-DD, in the site's time zone")]


def _settings(sites: Path | None) -> Settings:
    return load_settings(**({"site_config": sites} if sites else {}))


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise _fail(f"--date must be YYYY-MM-DD, got {text!r}") from None


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(1)


async def _guard(coro):  # type: ignore[no-untyped-def]
    """Errors a user can fix become one line, not a traceback."""
    from pipeline.reports.service import ReportError
    from pipeline.siteconfig import SiteConfigError

    try:
        return await coro
    except (ReportError, SiteConfigError, FileExistsError) as exc:
        raise _fail(str(exc)) from None
    except RuntimeError as exc:  # a missing topic: the stack is not up
        raise _fail(str(exc)) from None


@app.command("daily")
def daily(
    site: SiteId,
    day: DateOpt,
    out: Annotated[Path | None, typer.Option("--out", help="also write the files here")] = None,
    reason: Annotated[str, typer.Option("--reason", help="why this is made again (a correction)")] = "",
    sites: SiteOpt = None,
) -> None:
    """Make the record of one site-day: a new version if the data or sign-offs changed, else the same one."""
    from pipeline.reports import service

    settings = _settings(sites)
    t = time.perf_counter()
    o = asyncio.run(_guard(service.generate(settings, site, _day(day), reason=reason, out=out)))
    r = o.record
    console.print(
        f"{r.report_id}: {o.status} (version {r.version}) in {time.perf_counter() - t:.2f} s, sha256 {r.sha256}"
    )
    if r.reason and o.status != "unchanged":
        console.print(f"reason: {r.reason}")
    out_console.print(str(o.folder))
    if out is not None:
        console.print(f"files written to {out}")


@app.command("verify")
def verify(site: SiteId, sites: SiteOpt = None) -> None:
    """Recompute a site's hash chain from the stored files; exit 1 naming the first day that does not match."""
    from pipeline.reports import service

    settings = _settings(sites)
    checked, findings = asyncio.run(_guard(service.verify(settings, site)))
    if not findings:
        console.print(f"[green]ok[/]: {checked} report versions of {site}, chain intact")
        return
    console.print(f"[bold red]first day that does not match: {findings[0].date}[/]")
    for f in findings:
        out_console.print(f"{f.date}  {f.problem}")
    raise typer.Exit(1)


@app.command("sign")
def sign(
    site: SiteId,
    day: DateOpt,
    name: Annotated[str, typer.Option("--name", help="the food-safety officer (食品安全员) who reviewed the day")],
    comment: Annotated[str, typer.Option("--comment", help="optional remark")] = "",
    sites: SiteOpt = None,
) -> None:
    """Record the food-safety officer's review of a day (audited) and make the version that shows it."""
    from pipeline.reports import service

    settings = _settings(sites)
    s, o = asyncio.run(_guard(service.sign(settings, site, _day(day), name, comment=comment)))
    console.print(f"signed {site} {day} by {s.name} (reviewed v{s.report_version}); now {o.record.report_id}")


@app.command("unsigned")
def unsigned(
    site: Annotated[str | None, typer.Option("--site", help="one site")] = None,
    station: Annotated[str | None, typer.Option("--station", help="every site of this station")] = None,
    sites: SiteOpt = None,
) -> None:
    """List reported days that no food-safety officer has signed yet."""
    from pipeline.reports import service

    settings = _settings(sites)
    rows = asyncio.run(_guard(service.unsigned(settings, site=site, station=station)))
    for sid, d, v in rows:
        out_console.print(f"{sid}\t{d}\tv{v}")
    console.print(f"{len(rows)} unsigned days")


@app.command("list")
def list_(site: SiteId, sites: SiteOpt = None) -> None:
    """List a site's stored records: day, version, SHA-256, who signed, reason, folder."""
    from pipeline.reports import service

    settings = _settings(sites)
    rows = asyncio.run(_guard(service.list_reports(settings, site)))
    for x in rows:
        r = x.record
        signed = ", ".join(x.signed_by) or "unsigned"
        out_console.print(f"{r.date}\tv{r.version}\t{r.sha256[:16]}\t{signed}\t{r.reason or '-'}\t{x.folder}")
    console.print(f"{len(rows)} versions")


@app.command("retention")
def retention(
    apply: Annotated[bool, typer.Option("--apply", help="set InfluxDB's retention to the configured value")] = False,
) -> None:
    """Show (or --apply) the retention of the readings: LARDER_REPORTS__RETENTION_DAYS, default 3 years, >= 2."""
    from pipeline.reports import service

    settings = _settings(None)
    if apply:
        try:
            console.print(f"retention set: {service.apply_retention(settings)}")
        except service.ReportError as exc:
            raise _fail(str(exc)) from None
    days = service.retention_days(settings)
    console.print(f"configured {settings.reports.retention_days} days; InfluxDB now keeps {days or 'forever'}")


@app.command("serve")
def serve(
    back_days: Annotated[int, typer.Option("--back-days", help="catch up this many past days")] = 7,
    every: Annotated[float, typer.Option("--every", help="seconds between passes")] = 60.0,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="processes making records in parallel, ~one per core (LARDER_REPORTS__WORKERS)",
        ),
    ] = None,
    sites: SiteOpt = None,
) -> None:
    """Make every site's record after its local midnight (+ LARDER_REPORTS__AFTER_MIDNIGHT_MIN), with progress."""
    from pipeline import siteconfig
    from pipeline.reports import service

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aiokafka", "weasyprint", "fontTools", "matplotlib"):  # progress lines per PDF step
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = _settings(sites)
    if workers is not None:
        settings = settings.model_copy(update={"reports": settings.reports.model_copy(update={"workers": workers})})
    try:  # a broken site file is the user's to fix: say so once, before the loop (which re-reads it each pass)
        siteconfig.load(settings.site_config)
    except siteconfig.SiteConfigError as exc:
        raise _fail(str(exc)) from None

    def progress(i: int, n: int, sid: str, d: date, o: service.Outcome | None, err: str | None) -> None:
        what = f"{o.status} v{o.record.version}" if o else f"FAILED: {err}"
        console.print(f"[{i}/{n}] {sid} {d}: {what}")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await service.serve(settings, stop, back_days=back_days, every_s=every, progress=progress)

    asyncio.run(main())


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="report")
