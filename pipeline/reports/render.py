"""The record's files: ``readings.csv``, ``excursions.csv``, ``rapid_tests.csv`` (sites with rapid-test
instruments, or a day with results) and ``report.pdf`` (a jinja2 HTML template through WeasyPrint, with one
matplotlib chart per asset, a PNG drawn by Agg).

Every output is a pure function of the computed report and the version's metadata: the same input gives the
same bytes (the charts' PNGs carry no date or software tag, WeasyPrint writes no creation time), so a
regenerated report has the same SHA-256.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import struct
import threading
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pipeline import __version__
from pipeline.reports.compute import LEVEL_RULES, in_range
from pipeline.reports.model import AssetDay, DailyReport, Excursion, Notified, SignOff
from pipeline.reports.tools import CJK_FONT_FAMILY

TEMPLATES = Path(__file__).with_name("templates")


@dataclass(frozen=True)
class VersionInfo:
    """What the files say about their own version (all of it is inside the chained manifest too)."""

    report_id: str
    version: int
    generated_ms: int
    prev_sha256: str
    prev_date: str | None
    reason: str
    signoffs: tuple[SignOff, ...] = ()


# ---------------------------------------------------------------------------------------------------------------
# Times and numbers as the record shows them
# ---------------------------------------------------------------------------------------------------------------


def local_iso(ms: int, tz: ZoneInfo) -> str:
    """``2026-11-23T08:15:00.000+08:00``: the CSV's timestamps, local with their offset.

    ``fromtimestamp(tz=...)`` converts through ``tz.fromutc`` as ``astimezone`` does (the same result, DST folds
    included) without building the UTC datetime first: ~40 % less time over the 14,400 rows of a ten-asset day."""
    return datetime.fromtimestamp(ms / 1000, tz=tz).isoformat(timespec="milliseconds")


def local_hm(ms: int | None, tz: ZoneInfo, day: str) -> str:
    """``08:15`` on the report's day, ``11-24 00:40`` on another day, ``—`` for none."""
    if ms is None:
        return "—"
    t = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(tz)
    return t.strftime("%H:%M") if t.date().isoformat() == day else t.strftime("%m-%d %H:%M")


def fmt(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def notified_text(n: Notified, tz: ZoneInfo, day: str) -> str:
    tier = f"T{n.tier}" if n.tier else "T?"
    return f"{tier} {n.role} {n.name} ({n.channel or '-'}) {local_hm(n.at_ms, tz, day)} {n.status}"


def _excursion_alerts(report: DailyReport) -> dict[str, list[Excursion]]:
    out: dict[str, list[Excursion]] = {}
    for e in report.excursions:
        if e.rule in LEVEL_RULES:
            out.setdefault(e.device, []).append(e)
    return out


# ---------------------------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------------------------

READINGS_HEADER = ("ts", "asset", "device", "value", "in_range", "alert_id")
EXCURSIONS_HEADER = (
    "alert_id",
    "rule",
    "severity",
    "asset",
    "device",
    "start",
    "alarm",
    "end",
    "duration_min",
    "peak_c",
    "limit_c",
    "retrospective",
    "notified",
    "ack_by",
    "ack_at",
    "corrective_action",
    "disposition",
)


RAPID_TESTS_HEADER = (
    "tested_at",
    "instrument",
    "result_id",
    "sample_id",
    "sample_name",
    "test_item",
    "method",
    "result",
    "verdict",
    "outcome",
    "stage",
    "operator",
    "disposition",
)


def has_rapid_tests(report: DailyReport) -> bool:
    """Whether the record shows rapid tests: the site has instruments, or the day has results."""
    return report.has_instruments or bool(report.rapid_tests)


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """The CSV files of the record: a header row, then ``rows``, ``\n`` line ends, UTF-8."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def rapid_tests_csv(report: DailyReport) -> bytes:
    """One row per rapid-test result tested in the day, by time (contract 6)."""
    tz = ZoneInfo(report.timezone)
    return _csv(
        RAPID_TESTS_HEADER,
        (
            (
                local_iso(x.ts_ms, tz),
                x.instrument,
                x.result_id,
                x.sample_id,
                x.sample_name,
                x.test_item,
                x.method,
                x.result,
                x.verdict,
                x.outcome,
                x.stage,
                x.operator,
                x.disposition,
            )
            for x in report.rapid_tests
        ),
    )


def _csv_field(value: str) -> str:
    """``value`` as the csv module writes it between two other fields (quoted only where it must be)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(("", value, ""))  # the file's line end: it must be quoted
    return buf.getvalue()[1:-2]


def readings_csv(report: DailyReport) -> bytes:
    """One row per stored reading of the day. ``alert_id``: the level excursions (high/low) whose span
    ``[start, end)`` holds the reading, ``;``-separated.

    The lines are joined here, not by a ``csv.writer`` row by row (a third of the file's CPU over a ten-asset day's
    14,400 rows): the asset, device and alert ids are quoted as the csv module quotes them (:func:`_csv_field`,
    once per distinct value), and the other fields (a local time, a ``repr`` of a float, ``true``/``false``) have
    nothing to quote. The same bytes as the writer's (tested)."""
    tz = ZoneInfo(report.timezone)
    spans = _excursion_alerts(report)
    lines = [",".join(READINGS_HEADER) + "\n"]
    quoted: dict[str, str] = {}
    for a in report.assets:
        mine = [
            (e.start_ms, e.end_ms if e.end_ms is not None else report.end_ms, e.alert_id)
            for e in spans.get(a.device, [])
        ]
        low, high = a.low_c, a.high_c
        middle = f",{_csv_field(a.asset)},{_csv_field(a.device)},"
        for p in a.points:
            ms, temp = p.ts_ms, p.temp_c
            ids = ";".join([aid for start, end, aid in mine if start <= ms < end]) if mine else ""
            if ids:
                ids = quoted.get(ids) or quoted.setdefault(ids, _csv_field(ids))
            ok = "true" if in_range(temp, low, high) else "false"
            lines.append(f"{local_iso(ms, tz)}{middle}{temp!r},{ok},{ids}\n")
    return "".join(lines).encode()


def excursions_csv(report: DailyReport) -> bytes:
    tz = ZoneInfo(report.timezone)
    return _csv(
        EXCURSIONS_HEADER,
        (
            (
                e.alert_id,
                e.rule,
                e.severity,
                e.asset,
                e.device,
                local_iso(e.start_ms, tz),
                local_iso(e.alarm_ms, tz),
                local_iso(e.end_ms, tz) if e.end_ms is not None else "",
                f"{e.duration_min(report.end_ms):.1f}",
                "" if e.peak_c is None else repr(e.peak_c),
                "" if e.limit_c is None else repr(e.limit_c),
                str(e.retrospective).lower(),
                "; ".join(
                    f"T{n.tier or '?'} {n.role} {n.name} {n.channel} {local_iso(n.at_ms, tz)} {n.status}"
                    for n in e.notified
                ),
                e.ack_by or "",
                local_iso(e.ack_at_ms, tz) if e.ack_at_ms is not None else "",
                e.corrective_action,
                e.disposition,
            )
            for e in report.excursions
        ),
    )


# ---------------------------------------------------------------------------------------------------------------
# Chart (matplotlib Agg, a PNG data URI in the HTML)
# ---------------------------------------------------------------------------------------------------------------

_MPL_READY = False


def _mpl() -> None:
    global _MPL_READY
    if _MPL_READY:
        return
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams.update(
        {
            "font.family": ["DejaVu Sans"],  # the charts' text is numbers and °C; the PDF's font draws it
            "font.size": 7,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    _MPL_READY = True


#: Resolution of the charts in the PDF: 1,248 x 192 pixels for the 10.4 x 1.6 in chart (the width it is shown at on
#: A4 landscape), 7 pt labels ~12 px high. Compressing the pixels (zlib, adaptive PNG filters) costs in proportion
#: to them: 120 dpi has 36 % fewer than 150.
CHART_DPI = 120
#: zlib level of the charts' PNGs, which the PDF embeds as they are (:class:`_EmbeddedPNG`): level 3 took two thirds
#: of the CPU of Pillow's default 6 for a 2 % larger picture (a ten-asset day's chart: ~6 against ~9 ms, 29.3 against
#: 28.8 KB). See :func:`rgb_png` for the row filter.
CHART_PNG_LEVEL = 3
_charts = threading.local()


def chart_png(a: AssetDay, report: DailyReport, cap_ms: int) -> bytes:
    """The day of one asset: temperature (broken where data is missing), limits, excursions and gaps shaded.

    A picture drawn by matplotlib's Agg renderer, not SVG: WeasyPrint draws an SVG with its own Python interpreter
    of paths and text (each chart's 1,440-point line and ~20 labels), about a third of a ten-asset record's CPU;
    a PNG it only embeds. One figure per thread is kept and only its data, limits and shading change between
    charts: building a figure (axes, ~20 tick objects) cost as much as drawing it. Deterministic: the PNG
    carries no date or software tag, and a reused figure draws the same pixels as a fresh one (tested).
    """
    chart: _Chart | None = getattr(_charts, "chart", None)
    if chart is None:
        chart = _charts.chart = _Chart()
    return chart.png(a, report, cap_ms)


class _Chart:
    def __init__(self) -> None:
        _mpl()
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(10.4, 1.6), dpi=CHART_DPI)
        self.canvas = FigureCanvasAgg(self.fig)
        ax = self.ax = self.fig.add_axes((0.05, 0.16, 0.925, 0.8))  # room for the last tick label, 24:00
        # Drawn in this order (shading, limits, then the readings on top), as a fresh figure would add them.
        self.limits = [ax.axhline(0.0, color="#b42318", lw=0.8, ls=(0, (4, 3))) for _ in range(2)]
        (self.line,) = ax.plot([], [], color="#1f4e79", lw=0.9)
        self.spans: list[Any] = []
        # What every chart of a day of this length shares (the x axis: 13 time labels, the spines, the frame),
        # drawn once and copied in (matplotlib's blitting); see _draw.
        self.backgrounds: dict[float, Any] = {}
        ax.set_ylabel("°C")
        ax.grid(axis="y", color="#e4e7eb", lw=0.5)
        # No tick marks: labels and grid say enough.
        ax.tick_params(length=0, pad=2, colors="#52606d", bottom=False, left=False)

    def png(self, a: AssetDay, report: DailyReport, cap_ms: int) -> bytes:
        ax = self.ax
        h0 = report.start_ms
        hours = (report.end_ms - report.start_ms) / 3_600_000

        def x(ms: int) -> float:
            return (ms - h0) / 3_600_000

        xs: list[float] = []
        ys: list[float] = []
        prev: int | None = None
        for p in a.points:
            if prev is not None and p.ts_ms - prev > cap_ms:
                xs.append(x(prev + cap_ms))
                ys.append(float("nan"))
            xs.append(x(p.ts_ms))
            ys.append(p.temp_c)
            prev = p.ts_ms
        for span in self.spans:
            span.remove()
        self.spans = [ax.axvspan(x(g.start_ms), x(g.end_ms), color="#9aa5b1", alpha=0.25, lw=0) for g in a.gaps]
        for e in report.excursions:
            if e.device == a.device:
                end = e.end_ms if e.end_ms is not None else report.end_ms
                span = ax.axvspan(max(0.0, x(e.start_ms)), min(hours, x(end)), color="#d64545", alpha=0.16, lw=0)
                self.spans.append(span)
        for artist, limit in zip(self.limits, (a.high_c, a.low_c), strict=True):
            artist.set_visible(limit is not None)
            artist.set_ydata([limit or 0.0, limit or 0.0])
        self.line.set_data(xs, ys)
        values = [v for v in ys if v == v]
        lo = min([*values, *(v for v in (a.low_c, a.high_c) if v is not None)], default=0.0)
        hi = max([*values, *(v for v in (a.low_c, a.high_c) if v is not None)], default=1.0)
        pad = max(0.5, (hi - lo) * 0.08)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlim(0, hours)
        ax.set_xticks([h for h in range(0, int(hours) + 1, 2)])
        ax.set_xticklabels([f"{h:02d}:00" for h in range(0, int(hours) + 1, 2)])
        self._draw(hours)
        return rgb_png(self.canvas.buffer_rgba(), CHART_PNG_LEVEL)

    def _draw(self, hours: float) -> None:
        """Draw the chart: the day's shared background, then this asset's artists in the order (zorder) that a
        full ``canvas.draw()`` uses: shading (1), y axis with its grid and labels (1.5), limits and readings (2),
        the left and bottom spines (2.5).

        Text is most of a chart's drawing (glyph layout and rasterising), and the 13 time labels of the x axis are
        the same on every chart of a day: they are drawn once per day length (23, 24 or 25 h) into a background
        that is copied in, instead of ten times. The x axis lies outside the plot area, where no shading reaches,
        so drawing it first changes no pixel's order that matters. Deterministic: the background depends only on
        the day length, so a fresh figure and a reused one give the same bytes (tested).
        """
        ax, canvas = self.ax, self.canvas
        bg = self.backgrounds.get(hours)
        # Spines too (drawn last, over the shading, and only once: antialiased edges drawn twice come out darker).
        own = [*self.spans, ax.yaxis, *self.limits, self.line, ax.spines["left"], ax.spines["bottom"]]
        if bg is None:
            shown = [artist.get_visible() for artist in own]
            for artist in own:
                artist.set_visible(False)
            canvas.draw()
            bg = self.backgrounds[hours] = canvas.copy_from_bbox(self.fig.bbox)
            for artist, visible in zip(own, shown, strict=True):
                artist.set_visible(visible)
        canvas.restore_region(bg)
        for artist in own:
            ax.draw_artist(artist)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def rgb_png(rgba: Any, level: int) -> bytes:
    """An 8-bit RGB PNG of an opaque picture given as rows of RGBA pixels (Agg's buffer; its alpha is dropped).

    RGB, not matplotlib's RGBA PNG: the figure is opaque, an RGBA picture would need its alpha channel as a mask, and
    the PDF embeds this PNG's compressed pixels as they are (:class:`_EmbeddedPNG`). Written here rather than by
    Pillow, which tries the five PNG row filters on every row and keeps the best guess: a chart is mostly runs of
    one colour, which zlib compresses best unfiltered (a ten-asset day's chart at level 3: 26.7 KB unfiltered
    against Pillow's 29.1 KB; ~2.8 against ~5.1 ms of CPU). The same pixels, no date or software tag: the same
    picture gives the same bytes."""
    import numpy as np

    pixels = np.asarray(rgba)
    h, w = pixels.shape[:2]
    rows = np.empty((h, 1 + 3 * w), np.uint8)
    rows[:, 0] = 0  # each row's filter type: None
    rows[:, 1:].reshape(h, w, 3)[...] = pixels[:, :, :3]  # a view of the rows: the pixels copied once, in place
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, adaptive filtering, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
        + _png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------------------------
# PDF
# ---------------------------------------------------------------------------------------------------------------


@functools.cache
def _jinja() -> Any:
    """One environment per process: it keeps the compiled template (re-read only when the file changes)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True
    )


def chart_urls(report: DailyReport) -> dict[str, str]:
    """The address of each asset's chart in the HTML (``larder-chart:<n>``), served by :func:`pdf`'s fetcher."""
    return {a.device: f"larder-chart:{i}" for i, a in enumerate(report.assets)}


def html(report: DailyReport, info: VersionInfo, charts: dict[str, str]) -> str:
    """The record as HTML; ``charts``: the address of each device's chart picture."""
    env = _jinja()
    tz = ZoneInfo(report.timezone)
    day = report.date
    ctx: dict[str, Any] = {
        "r": report,
        "info": info,
        "larder_version": __version__,
        "generated": local_iso(info.generated_ms, tz)[:19].replace("T", " "),
        "charts": charts,
        "hm": lambda ms: local_hm(ms, tz, day),
        "fmt": fmt,
        "notified": lambda n: notified_text(n, tz, day),
        "font": CJK_FONT_FAMILY,
        "hours": (report.end_ms - report.start_ms) / 3_600_000,
        "names": {a.device: a.name for a in report.assets},
        "show_rapid_tests": has_rapid_tests(report),
    }
    return env.get_template("daily.html").render(**ctx)


def _pin_font_timestamps() -> None:
    """Keep the embedded fonts free of the time of the render.

    WeasyPrint subsets the fonts it embeds with HarfBuzz, or, where ``libharfbuzz-subset0`` is missing
    (:mod:`pipeline.reports.tools`), with fontTools, which writes the time of the call into each font's ``head``
    table (its "modified" date): the same record made again a second later had other bytes, so another hash, and
    a regenerated day was never "unchanged". fontTools takes that date from ``SOURCE_DATE_EPOCH`` when it is set
    (the reproducible-builds convention), so it is set, once and to one value for the whole process (renders may
    run in threads); a value the environment already gives is kept. No PDF reader shows an embedded font's date.
    """
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")


def png_pixel_data(png: bytes) -> bytes | None:
    """The compressed pixel data of a PNG (its IDAT chunks joined: one zlib stream of filtered rows), if it is one
    a PDF can hold as it is: 8-bit RGB, not interlaced, no palette or transparency. None for any other."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    chunks: list[bytes] = []
    at = 8
    while at + 8 <= len(png):
        (size,) = struct.unpack(">I", png[at : at + 4])
        kind, body = png[at + 4 : at + 8], png[at + 8 : at + 8 + size]
        if kind == b"IHDR":
            _w, _h, depth, colour, _method, _filters, interlace = struct.unpack(">IIBBBBB", body)
            if (depth, colour, interlace) != (8, 2, 0):
                return None
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind in (b"PLTE", b"tRNS"):
            return None
        at += 12 + size
    return b"".join(chunks) or None


@functools.cache
def _embedded_png_class() -> Any:
    """The class below, or None where the installed WeasyPrint's raster images are not built the way it relies on
    (it reaches into them; checked for WeasyPrint 70): then WeasyPrint re-encodes the charts as before."""
    import inspect

    from weasyprint.images import RasterImage

    params = list(inspect.signature(RasterImage.__init__).parameters)
    if params[:4] != ["self", "pillow_image", "image_id", "image_data"] or not hasattr(RasterImage, "_get_png_data"):
        return None

    class EmbeddedPNG(RasterImage):  # type: ignore[misc]  # WeasyPrint has no type hints
        """A chart as WeasyPrint's own raster image, except that its PNG's compressed pixels go into the PDF as they
        are: WeasyPrint decodes every PNG and compresses its pixels again for the PDF (the same zlib stream of
        PNG-filtered rows, which a PDF's ``/FlateDecode`` with ``/Predictor 15`` reads), the work done twice for
        each of a record's ten charts. The image dictionary is WeasyPrint's; only the stream's bytes come from
        here (``_get_png_data``, the step that re-encoded)."""

        def __init__(self, png: bytes, pixels: bytes, url: str, cache: dict[str, Any]) -> None:
            from PIL import Image
            from weasyprint import DEFAULT_OPTIONS

            # The image's id names it in the PDF: from the URL, as WeasyPrint makes it (a deterministic name).
            image_id = hashlib.md5(url.encode(), usedforsecurity=False).hexdigest()
            super().__init__(Image.open(io.BytesIO(png)), image_id, png, cache=cache, options=DEFAULT_OPTIONS)
            self._pixels = pixels

        def _get_png_data(self, pillow_image: Any) -> bytes:
            if pillow_image.mode != "RGB":  # an alpha channel (not a chart): WeasyPrint's own way
                data: bytes = RasterImage._get_png_data(pillow_image)
                return data
            return self._pixels

    return EmbeddedPNG


def _embedded_pngs(pictures: dict[str, bytes]) -> dict[str, Any]:
    """WeasyPrint's image cache (``url -> image``) holding the charts as :class:`EmbeddedPNG` s: WeasyPrint looks a
    picture up there before fetching it. A picture the PDF could not hold as it is stays out (fetched, re-encoded)."""
    cache: dict[str, Any] = {}
    embedded = _embedded_png_class()
    if embedded is None:
        return cache
    for url, png in pictures.items():
        pixels = png_pixel_data(png)
        if pixels is not None:
            cache[url] = embedded(png, pixels, url, cache)
    return cache


def pdf(report: DailyReport, info: VersionInfo, caps: dict[str, int], *, embed_pngs: bool = True) -> bytes:
    """The PDF. The charts are pictures (see :func:`chart_png`) handed to WeasyPrint by its URL fetcher, not as
    ``data:`` URIs inside the HTML: a chart's base64 text went through the HTML parser character by character.
    The fetcher serves those pictures and nothing else (the record loads nothing from files or the network).
    ``embed_pngs``: the charts' compressed pixels go into the PDF as they are (:func:`_embedded_pngs`); False lets
    WeasyPrint decode and re-encode them (the same pixels; for the test that says so)."""
    import weasyprint
    from weasyprint.urls import URLFetcher, URLFetcherResponse

    _pin_font_timestamps()
    urls = chart_urls(report)
    pictures = {urls[a.device]: chart_png(a, report, caps[a.device]) for a in report.assets}

    class Charts(URLFetcher):  # type: ignore[misc]  # WeasyPrint has no type hints
        def fetch(self, url: str, headers: Any = None) -> URLFetcherResponse:
            if url not in pictures:
                raise ValueError(f"the daily record loads nothing but its charts, not {url!r}")
            return URLFetcherResponse(url, pictures[url], headers={"Content-Type": "image/png"})

    document = weasyprint.HTML(
        string=html(report, info, urls), base_url=str(TEMPLATES), url_fetcher=Charts(fail_on_errors=True)
    )
    out = document.write_pdf(cache=_embedded_pngs(pictures) if embed_pngs else None)
    assert out is not None
    return bytes(out)
