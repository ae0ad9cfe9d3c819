"""Pure parts of the daily record: day windows, retention floor, which days the generator makes, the held-time
weights and MKT. (Everything else runs against the real services in tests/integration/test_reports.py.)"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.reports.compute import held, mkt
from pipeline.reports.gather import day_window, rfc3339_ms
from pipeline.reports.ledger import Ledger
from pipeline.reports.model import Point, ReportRecord
from pipeline.reports.service import due_days
from pipeline.settings import ReportSettings, Settings
from pipeline.siteconfig import SiteConfig

H = 3_600_000


def _ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp() * 1000)


def test_day_window_follows_the_sites_zone_and_daylight_saving() -> None:
    start, end = day_window(date(2026, 11, 23), "Asia/Shanghai")
    assert (start, end) == (_ms(2026, 11, 22, 16), _ms(2026, 11, 23, 16))
    s, e = day_window(date(2026, 3, 29), "Europe/Berlin")  # clocks go forward: 23 hours
    assert e - s == 23 * H and s == _ms(2026, 3, 28, 23)
    s, e = day_window(date(2026, 10, 25), "Europe/Berlin")  # and back: 25 hours
    assert e - s == 25 * H


def test_retention_defaults_to_three_years_and_refuses_less_than_two() -> None:
    assert ReportSettings().retention_days == 1095
    assert ReportSettings(retention_days=730).retention_days == 730
    with pytest.raises(ValidationError):
        ReportSettings(retention_days=729)


def test_flux_times_keep_their_milliseconds() -> None:
    assert rfc3339_ms("2026-11-23T02:40:20.123456789Z") == _ms(2026, 11, 23, 2, 40, 20) + 123
    assert rfc3339_ms("2026-11-23T02:40:20Z") == _ms(2026, 11, 23, 2, 40, 20)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T02:40:20Z",
        "2026-11-23T02:40:20.1Z",
        "2026-11-23T02:40:20.09Z",
        "2026-11-23T23:59:59.999999999Z",
        "2026-11-23T23:59:59.9999999999Z",
        "2026-11-23T02:40:20.Z",
        "2024-02-29T00:00:00Z",
        "1969-12-31T23:59:59.5Z",
        "2026-11-23T02:40:20",
        "2026-11-23T02:40:20.5",
    ],
)
def test_rfc3339_fast_path_reads_what_the_general_one_reads(text: str) -> None:
    from pipeline.reports.gather import _rfc3339_ms

    assert rfc3339_ms(text) == _rfc3339_ms(text)


@pytest.mark.parametrize("text", ["2026-11-23T24:00:00Z", "2026-11-23T02:60:00Z", "2026-02-30T02:40:20Z", "x" * 20])
def test_rfc3339_refuses_what_is_not_a_time(text: str) -> None:
    with pytest.raises(ValueError):
        rfc3339_ms(text)


def test_held_time_is_capped_by_the_offline_timeout_and_the_day_end() -> None:
    pts = [Point(0, 1.0), Point(60_000, 2.0), Point(600_000, 3.0)]
    assert held(pts, 120_000, 650_000) == [60_000, 120_000, 50_000]


def test_mkt_of_a_constant_temperature_is_that_temperature_and_a_peak_weighs_more() -> None:
    assert mkt([5.0, 5.0], [1, 3]) == pytest.approx(5.0)
    warm = mkt([2.0, 20.0], [1, 1])
    assert warm is not None and warm > 11.0  # above the arithmetic mean: kinetics weigh the warm hours
    assert mkt([], []) is None


def _record(site: str, day: str) -> ReportRecord:
    return ReportRecord(
        site=site,
        date=day,
        version=1,
        report_id="x",
        sha256="a" * 64,
        prev_sha256="0" * 64,
        generated_ms=0,
        data_sha256="b" * 64,
        files={},
    )


def test_serve_makes_ended_days_without_a_record_after_the_grace_period() -> None:
    cfg = SiteConfig.model_validate({"sites": {"S1": {"timezone": "Asia/Shanghai"}, "S2": {"timezone": "UTC"}}})
    settings = Settings(reports=ReportSettings(after_midnight_min=30))
    led = Ledger()
    led.add(_record("S1", "2026-11-22"))
    # 00:20 in Shanghai on the 24th (16:20 UTC on the 23rd): the 23rd ended 20 min ago, inside the grace period.
    now = _ms(2026, 11, 23, 16, 20)
    assert due_days(settings, cfg, led, now, 2) == [
        ("S1", date(2026, 11, 21)),
        ("S2", date(2026, 11, 21)),
        ("S2", date(2026, 11, 22)),
    ]
    later = _ms(2026, 11, 23, 16, 31)
    assert ("S1", date(2026, 11, 23)) in due_days(settings, cfg, led, later, 2)
    assert ("S1", date(2026, 11, 22)) not in due_days(settings, cfg, led, later, 2)


def test_an_empty_day_renders_and_the_same_input_gives_the_same_bytes() -> None:
    from pipeline.reports.service import render_files

    cfg, report, info = _empty_day()
    a = report.assets[0]
    assert (a.expected, a.received, a.completeness_pct, a.mkt_c, a.in_range_pct) == (1440, 0, 0.0, None, None)
    assert (a.low_c, a.high_c) == (None, -18.0)
    first, second = render_files(cfg, report, info), render_files(cfg, report, info)
    assert first == second
    assert (
        first["report.pdf"].startswith(b"%PDF-")
        and first["readings.csv"] == b"ts,asset,device,value,in_range,alert_id\n"
    )


def _two_asset_day() -> tuple[Any, int]:
    """A chilled and a frozen asset over one Shanghai day (a wave; a saw with a 2-hour gap): the report, day end."""
    import math

    from pipeline.reports.compute import compute
    from pipeline.reports.model import DayData

    cfg = SiteConfig.model_validate(
        {
            "sites": {
                "S1": {
                    "assets": {"a1": {"profile": "chilled"}, "a2": {"profile": "frozen"}},
                    "devices": {"d1": {"asset": "a1", "secret": "s" * 16}, "d2": {"asset": "a2", "secret": "t" * 16}},
                }
            }
        }
    )
    start, end = day_window(date(2026, 11, 23), "Asia/Shanghai")
    readings = {
        "d1": [Point(start + i * 60_000, 4 + 3 * math.sin(i / 50)) for i in range(1440)],
        "d2": [Point(start + i * 60_000, -20 + (i % 90) / 10) for i in range(1440) if not 300 <= i < 420],
    }
    return compute(cfg, DayData("S1", "2026-11-23", start, end, readings, [], [], [])), end


def test_readings_csv_is_what_a_csv_writer_writes() -> None:
    """readings.csv joins its lines itself (not a csv.writer per row): the same bytes as the writer's, also for ids
    that must be quoted, overlapping and open excursions, a reading at an excursion's end and an asset without."""
    import csv
    import dataclasses
    import io
    from zoneinfo import ZoneInfo

    from pipeline.reports import render
    from pipeline.reports.compute import LEVEL_RULES, in_range
    from pipeline.reports.model import Excursion

    report, end = _two_asset_day()
    a1, a2 = report.assets
    a1 = dataclasses.replace(a1, asset='cold, "main"', device="d1,x")
    a2 = dataclasses.replace(a2, asset="freezer\nB")
    t0 = report.start_ms

    def exc(aid: str, rule: str, start: int, stop: int | None) -> Excursion:
        return Excursion(
            alert_id=aid,
            rule=rule,
            severity="warning",
            asset=a1.asset,
            device=a1.device,
            start_ms=start,
            alarm_ms=start,
            end_ms=stop,
            peak_c=None,
            limit_c=8.0,
            retrospective=False,
            notified=(),
            ack_by=None,
            ack_at_ms=None,
            ack_via=None,
            corrective_action="",
            disposition="",
        )

    excursions = (
        exc("al,1", "coldchain.high", t0 + 60 * 60_000, t0 + 120 * 60_000),
        exc('al"2', "coldchain.high", t0 + 90 * 60_000, None),
        exc("al-3", "coldchain.door", t0, None),  # not a level rule: no reading names it
    )
    report = dataclasses.replace(report, assets=(a1, a2), excursions=excursions)

    tz = ZoneInfo(report.timezone)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(render.READINGS_HEADER)
    for a in report.assets:
        for p in a.points:
            ids = ";".join(
                e.alert_id
                for e in excursions
                if e.rule in LEVEL_RULES
                and e.device == a.device
                and e.start_ms <= p.ts_ms < (e.end_ms if e.end_ms is not None else end)
            )
            ok = str(in_range(p.temp_c, a.low_c, a.high_c)).lower()
            w.writerow((render.local_iso(p.ts_ms, tz), a.asset, a.device, repr(p.temp_c), ok, ids))
    want = buf.getvalue().encode()
    assert render.readings_csv(report) == want
    assert b'"al,1;al""2"' in want and b',"freezer\nB",d2,' in want


def test_a_reused_chart_figure_draws_the_same_png_as_a_fresh_one() -> None:
    """The PDF's charts share one matplotlib figure per thread (the render cost): a chart drawn after another
    (other limits, a gap, other values) must be byte-identical to the same chart drawn first, or a record
    regenerated in a fresh process would not have the same hash."""
    import threading

    from pipeline.reports import render

    report, _ = _two_asset_day()
    a1, a2 = report.assets

    def fresh(asset: object) -> bytes:
        out: list[bytes] = []
        t = threading.Thread(target=lambda: out.append(render.chart_png(asset, report, 180_000)))  # type: ignore[arg-type]
        t.start()
        t.join()
        return out[0]

    first_a1, first_a2 = fresh(a1), fresh(a2)
    assert first_a1.startswith(b"\x89PNG") and first_a1 != first_a2
    assert render.chart_png(a2, report, 180_000) == first_a2
    assert render.chart_png(a1, report, 180_000) == first_a1  # after a2 in this thread: the figure was reused
    assert render.chart_png(a2, report, 180_000) == first_a2


def test_report_tools_name_the_font_subsetter_when_it_cannot_be_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without HarfBuzz's subsetter WeasyPrint embeds fonts through fontTools (most of a render's CPU): `larder stack
    up` must see it missing and install it like the CJK font."""
    from pipeline.reports import tools

    assert "libharfbuzz-subset0" in tools.PACKAGES
    monkeypatch.setattr(tools, "HARFBUZZ_SUBSET_LIB", "libnot-a-harfbuzz-subset.so.0")
    assert not tools.has_harfbuzz_subset()
    assert "libharfbuzz-subset0" in tools.missing()
    monkeypatch.setattr(tools, "HARFBUZZ_SUBSET_LIB", "libharfbuzz.so.0")  # WeasyPrint's own shaping library
    assert tools.has_harfbuzz_subset()
    assert "libharfbuzz-subset0" not in tools.missing()


def _empty_day() -> tuple[SiteConfig, Any, Any]:
    from pipeline.reports.compute import compute
    from pipeline.reports.model import DayData
    from pipeline.reports.render import VersionInfo

    cfg = SiteConfig.model_validate(
        {
            "sites": {
                "S1": {
                    "name": "空站点 Empty site",
                    "assets": {"a1": {"name": "冷库", "profile": "frozen"}},
                    "devices": {"d1": {"asset": "a1", "secret": "s" * 16}},
                }
            }
        }
    )
    start, end = day_window(date(2026, 11, 23), "Asia/Shanghai")
    report = compute(cfg, DayData("S1", "2026-11-23", start, end, {}, [], [], []))
    return cfg, report, VersionInfo("LDR-S1-20261123-v1", 1, end, "0" * 64, None, "")


def test_fonts_subset_by_fonttools_do_not_carry_the_time_of_the_render(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without HarfBuzz's subsetter WeasyPrint falls back to fontTools, which stamps each embedded font with the
    time of the call: a record made again later (here: a clock a day on) must still have the same bytes."""
    import time

    import weasyprint.pdf.fonts

    from pipeline.reports.service import render_files

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    monkeypatch.setattr(weasyprint.pdf.fonts, "harfbuzz_subset", None)  # the fallback, whatever this machine has
    cfg, report, info = _empty_day()
    first = render_files(cfg, report, info)  # type: ignore[arg-type]
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 86_400)
    assert render_files(cfg, report, info) == first  # type: ignore[arg-type]


def test_a_batch_gathers_the_next_site_day_while_it_makes_this_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """run_batch's process hands each site-day the data gathered for it (in the gather thread, one query at a time),
    a site missing from the site file is still reported as failed, and one publisher serves the whole batch. The heap
    is frozen for the garbage collector after the first site-day, and no longer after the batch."""
    import asyncio
    import gc
    import threading

    from pipeline.reports import service
    from pipeline.reports.model import DayData
    from pipeline.siteconfig import write_site_file

    sites = write_site_file(tmp_path / "sites.yaml", {"sites": {"S1": {}, "S2": {"timezone": "UTC"}}})
    settings = Settings(site_config=sites)
    gathered: list[tuple[str, str, str]] = []
    busy = threading.Lock()

    class Source:
        def __init__(self, *args: object) -> None:
            pass

        def day(self, site: str, day: date, tz: str) -> DayData:
            assert busy.acquire(blocking=False), "two gathers at once"
            try:
                gathered.append((site, day.isoformat(), threading.current_thread().name))
                return DayData(site, day.isoformat(), 0, 1, {}, [], [], [])
            finally:
                busy.release()

        def close(self) -> None:
            pass

    publishers: list[object] = []

    class Publisher:
        def __init__(self, *args: object) -> None:
            publishers.append(self)

        async def start(self) -> None:
            pass

        async def close(self) -> None:
            pass

    made: list[tuple[str, str, DayData | None, object]] = []
    frozen: list[int] = []

    async def generate(settings: Settings, site: str, day: date, **kw: Any) -> str:
        if site not in ("S1", "S2"):
            raise service.ReportError(f"site {site!r} is not in the site file")
        made.append((site, day.isoformat(), kw["data"], kw["publisher"]))
        frozen.append(gc.get_freeze_count())
        return f"{site} {day}"

    async def load(*args: object) -> Ledger:
        return Ledger()

    monkeypatch.setattr(service, "Source", Source)
    monkeypatch.setattr(service.L, "Publisher", Publisher)
    monkeypatch.setattr(service.L, "load", load)
    monkeypatch.setattr(service, "generate", generate)
    reported: list[tuple[str, str, str | None]] = []
    todo = [(s, date(2026, 11, d)) for d in (22, 23) for s in ("S1", "S2", "S9")]
    done = asyncio.run(
        service.run_batch(
            settings, todo, workers=1, progress=lambda i, n, s, d, o, err: reported.append((s, d.isoformat(), err))
        )
    )
    assert len(done) == 4 and len(publishers) == 1
    assert [(s, d) for s, d, data, _ in made] == [
        ("S1", "2026-11-22"),
        ("S2", "2026-11-22"),
        ("S1", "2026-11-23"),
        ("S2", "2026-11-23"),
    ]
    assert all(data is not None and (data.site, data.date) == (s, d) for s, d, data, _ in made)
    assert all(pub is publishers[0] for *_, pub in made)
    assert [(s, d) for s, d, _ in gathered] == [(s, d) for s, d, *_ in made]  # S9: no query
    assert all(name.startswith("report-gather") for *_, name in gathered)
    assert [(s, d) for s, d, err in reported if err] == [("S9", "2026-11-22"), ("S9", "2026-11-23")]
    assert frozen[0] == 0 and all(frozen[1:]) and gc.get_freeze_count() == 0 and gc.isenabled()


def _pdf_images(pdf: bytes) -> list[tuple[int, int, bytes]]:
    """(width, height, stream bytes) of every image XObject of a PDF as pydyf writes it."""
    import re

    out = []
    for m in re.finditer(rb"/Subtype /Image/Width (\d+)/Height (\d+)[^\n]*?/Length (\d+)>>\nstream\n", pdf):
        out.append((int(m[1]), int(m[2]), pdf[m.end() : m.end() + int(m[3])]))
    return out


def _png_of(width: int, height: int, pixels: bytes) -> bytes:
    """A PNG file around a PDF image stream of 8-bit RGB rows with PNG predictors (what /Predictor 15 reads)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_charts_go_into_the_pdf_as_compressed_and_decode_to_the_same_pixels() -> None:
    """The charts' PNG pixel data is embedded as it is (WeasyPrint decoded and re-compressed it): the PDF's picture
    streams are the charts' own bytes, and they decode to the same pixels as the pictures WeasyPrint re-encodes."""
    import io

    from PIL import Image

    from pipeline.reports import render

    report, end = _two_asset_day()
    info = render.VersionInfo("LDR-S1-20261123-v1", 1, end, "0" * 64, None, "")
    caps = {"d1": 180_000, "d2": 180_000}
    charts = [render.chart_png(a, report, caps[a.device]) for a in report.assets]
    own = [render.png_pixel_data(png) for png in charts]
    assert all(own)

    embedded = _pdf_images(render.pdf(report, info, caps))
    reencoded = _pdf_images(render.pdf(report, info, caps, embed_pngs=False))
    assert [data for _, _, data in embedded] == own
    assert len(reencoded) == len(charts) and [data for _, _, data in reencoded] != own
    for (w, h, mine), (w2, h2, theirs), png in zip(embedded, reencoded, charts, strict=True):
        pixels = Image.open(io.BytesIO(png)).tobytes()
        assert (w, h) == (w2, h2) == Image.open(io.BytesIO(png)).size
        assert Image.open(io.BytesIO(_png_of(w, h, mine))).tobytes() == pixels
        assert Image.open(io.BytesIO(_png_of(w2, h2, theirs))).tobytes() == pixels
    assert render.pdf(report, info, caps) == render.pdf(report, info, caps)


def test_only_plain_rgb_pngs_are_embedded_as_they_are() -> None:
    import io

    from PIL import Image

    from pipeline.reports.render import png_pixel_data

    def png(mode: str) -> bytes:
        buf = io.BytesIO()
        Image.new(mode, (4, 3), "red" if mode != "L" else 128).save(buf, format="PNG")
        return buf.getvalue()

    assert png_pixel_data(png("RGB"))
    interlaced = bytearray(png("RGB"))
    interlaced[28] = 1  # IHDR's interlace method (Pillow writes no interlaced PNG; the parser checks no CRC)
    assert png_pixel_data(bytes(interlaced)) is None
    assert png_pixel_data(png("RGBA")) is None
    assert png_pixel_data(png("L")) is None
    assert png_pixel_data(png("P")) is None
    assert png_pixel_data(b"GIF89a") is None
