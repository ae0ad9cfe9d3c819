"""The daily record end to end against the real Kafka and InfluxDB: a simulated day (tests/reports_support.py)
is written to InfluxDB as the sink writes it; `pipeline.reports` makes the record; every number in the CSVs and
the PDF is compared with one computed here from the simulator's own lines (payload JSON, not the bridge's
validation, not the report's code). Then: PDF pages as PNG, regeneration after a restart (same hash), a
correction and a sign-off as new versions, the unsigned list, and `verify` against a flipped byte, a deleted day
and a day removed from the ledger.
"""

from __future__ import annotations

import csv
import io
import math
import re
import shutil
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline import serde
from pipeline.reports import ledger as L
from pipeline.reports import service
from pipeline.schemas import AlertState
from pipeline.settings import ReportSettings, Settings
from pipeline.sinks import lineproto
from pipeline.sinks.influx import InfluxWriter
from pipeline.topics import Topics
from tests import reports_support as S

pytestmark = pytest.mark.integration
NOW = S.DAY_END_MS + 2 * 3_600_000  # 02:00 the next morning: the generator's usual time
TZ_OFFSET_MS = 8 * 3_600_000


def _settings(live: Settings, topics: Topics, bucket: str, tmp: Path, site_file: Path) -> Settings:
    influx = live.influx.model_copy(update={"bucket_override": bucket})
    return live.model_copy(
        update={
            "topic_prefix": topics.prefix,
            "site_config": site_file,
            "influx": influx,
            "reports": ReportSettings(dir=tmp / "archive"),
        }
    )


# -- the independent side: numbers straight from the simulator's lines ------------------------------------------


def _ts_ms(v: Any) -> int:
    if isinstance(v, int | float):
        return int(v * 1000)
    return int(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000)


def sim_readings(day: S.SimDay) -> dict[str, list[tuple[int, float, int]]]:
    """device -> [(ts_ms, temp, arrival_ms)] in the day, from the contract-1 payloads as the simulator sent them."""
    out: dict[str, dict[int, tuple[int, float, int]]] = {}
    for line in day.lines:
        if line.kind != "mqtt":
            continue
        body = line.body
        for r in body.get("readings", [body]):
            ts = _ts_ms(r["ts"])
            if S.DAY_START_MS <= ts < S.DAY_END_MS:
                out.setdefault(line.source, {}).setdefault(ts, (ts, float(r["temp_c"]), line.at_ms))
    return {d: sorted(v.values()) for d, v in out.items()}


def expected_asset(pts: list[tuple[int, float, int]]) -> dict[str, float]:
    cap = 2 * 60_000  # offline_k 2 x interval 60 s (chilled defaults)
    holds = []
    for i, (ts, _, _) in enumerate(pts):
        nxt = pts[i + 1][0] if i + 1 < len(pts) else S.DAY_END_MS
        holds.append(min(nxt - ts, cap, S.DAY_END_MS - ts))
    temps = [t for _, t, _ in pts]
    ok = [0.0 <= t <= 8.0 for t in temps]  # chilled: L 0, H 8
    total = sum(holds)
    inside = sum(h for h, k in zip(holds, ok, strict=True) if k)
    k = 83.144 / 8.314462618e-3
    acc = sum(h * math.exp(-k / (t + 273.15)) for h, t in zip(holds, temps, strict=True))
    return {
        "expected": 1440,
        "received": len(pts),
        "completeness": min(100.0, 100 * len(pts) / 1440),
        "min": min(temps),
        "max": max(temps),
        "mean": sum(temps) / len(temps),
        "tir": 100 * inside / total,
        "out_min": (total - inside) / 60_000,
        "mkt": k / -math.log(acc / total) - 273.15,
        "late": sum(1 for ts, _, at in pts if at - ts > 60_000),
    }


def local(ms: int) -> str:
    return datetime.fromtimestamp((ms + TZ_OFFSET_MS) / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+08:00"


def hm(ms: int) -> str:
    return datetime.fromtimestamp((ms + TZ_OFFSET_MS) / 1000, tz=UTC).strftime("%H:%M")


def pdf_text(path: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout


def pdf_pages(path: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["pdftoppm", "-png", "-r", "40", str(path), str(out / "page")], check=True)
    return sorted(out.glob("page-*.png"))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# -- the test ---------------------------------------------------------------------------------------------------


async def test_daily_record_numbers_versions_and_verify(
    live_stack: Settings, topics: Topics, influx_bucket: str, tmp_path: Path
) -> None:
    if shutil.which("pdftoppm") is None or shutil.which("pdftotext") is None:
        pytest.fail("poppler-utils missing: `larder stack up` installs it")
    day = S.build(tmp_path)
    settings = _settings(live_stack, topics, influx_bucket, tmp_path, day.config_path)
    S.write(day, settings, influx_bucket)
    expect = sim_readings(day)

    # ---- first version -------------------------------------------------------------------------------------
    o = await service.generate(settings, S.SITE, S.DAY, now_ms=NOW)
    assert o.status == "new" and o.record.version == 1 and o.record.prev_sha256 == "0" * 64
    folder = o.folder
    assert sorted(p.name for p in folder.iterdir()) == ["excursions.csv", "manifest.json", "readings.csv", "report.pdf"]

    # readings.csv: every reading of the day, once, with its local time, value, range verdict and alert
    rows = list(csv.DictReader(io.StringIO((folder / "readings.csv").read_text())))
    high = day.extra["high"]
    hist = {a.alert_id: a for a in day.alerts}
    spans = {}
    for a in day.alerts:
        if a.rule in ("coldchain.high", "coldchain.high_high") and a.state == AlertState.OPEN:
            # The last resolution of the alert counts: late data may correct an earlier one (issue 25 re-evaluates
            # the span and emits the corrected record; contract 4's resolved_at is its event time).
            res = [x for x in day.alerts if x.alert_id == a.alert_id and x.state == AlertState.RESOLVED][-1]
            assert res.resolved_at is not None
            spans[a.alert_id] = (a.subject, _ts_ms(a.evidence["breach_since"]), _ts_ms(res.resolved_at))
    want_rows = []
    for dev, pts in sorted(expect.items()):
        for ts, temp, _ in pts:
            ids = ";".join(aid for aid, (d, s, e) in spans.items() if d == dev and s <= ts < e)
            want_rows.append((local(ts), f"{dev}-asset", dev, temp, "true" if 0.0 <= temp <= 8.0 else "false", ids))
    got_rows = [(r["ts"], r["asset"], r["device"], float(r["value"]), r["in_range"], r["alert_id"]) for r in rows]
    assert sorted(got_rows, key=lambda r: (r[2], r[0])) == sorted(want_rows, key=lambda r: (r[2], r[0])), "readings.csv"
    assert any(r[5] for r in got_rows), "some readings carry their excursion's alert id"

    # excursions.csv: the two level alerts of cr1 and the retrospective one of cr2
    exc = {r["alert_id"]: r for r in csv.DictReader(io.StringIO((folder / "excursions.csv").read_text()))}
    retro = day.extra["retro"]
    assert set(exc) == set(spans) | {retro.alert_id}
    for aid, (dev, start, end) in [
        *spans.items(),
        (retro.alert_id, (retro.subject, _ts_ms(retro.evidence["breach_since"]), 0)),
    ]:
        row = exc[aid]
        if aid == retro.alert_id:
            last = [a for a in day.alerts if a.alert_id == aid and a.state == AlertState.RESOLVED][-1]
            assert last.resolved_at is not None
            end = _ts_ms(last.resolved_at)
        opened = next(a.at_ms for a in day.alerts if a.alert_id == aid and a.state == AlertState.OPEN)
        in_span = [t for ts, t, _ in expect[dev] if start <= ts <= end]
        assert (row["start"], row["alarm"], row["end"]) == (local(start), local(opened), local(end))
        assert float(row["duration_min"]) == pytest.approx((end - start) / 60_000, abs=0.05)
        assert float(row["peak_c"]) == max(in_span)
        assert float(row["limit_c"]) == hist[aid].evidence["limit_c"]
        assert row["retrospective"] == ("true" if aid == retro.alert_id else "false")
    h = exc[high.alert_id]
    told = [d for d in day.deliveries if d.kind == "delivered"]
    assert h["notified"] == "; ".join(
        f"T{i + 1} {d.role} {d.recipient_name} sms {local(d.at_ms)} delivered" for i, d in enumerate(told)
    )
    ack = next(a for a in day.alerts if a.alert_id == high.alert_id and a.state == AlertState.ACKNOWLEDGED)
    assert (h["ack_by"], h["ack_at"]) == (ack.evidence["by"], local(ack.at_ms))
    assert h["corrective_action"] == "compressor relay replaced 更换压缩机继电器"
    assert h["disposition"] == "12 kg dairy discarded 报废"
    assert exc[retro.alert_id]["notified"] == "" and exc[retro.alert_id]["ack_by"] == ""

    # the PDF: its numbers, per asset, equal the independent ones; pages render
    pdf = folder / "report.pdf"
    text = pdf_text(pdf)
    for dev, pts in expect.items():
        e = expected_asset(pts)
        line = next(x for x in text.splitlines() if f" {dev} " in f" {x} " and "chilled" in x)
        cells = re.findall(r"-?\d+(?:\.\d+)?", line.split("chilled", 1)[1])
        want = [
            "0.0",
            "8.0",
            str(e["expected"]),
            str(e["received"]),
            f"{e['completeness']:.1f}",
            str(sum(1 for a in day.annotations if a.kind == "compliance_gap" and a.subject == dev)),
            f"{e['min']:.2f}",
            f"{e['max']:.2f}",
            f"{e['mean']:.2f}",
            f"{e['tir']:.1f}",
            f"{e['out_min']:.1f}",
            f"{e['mkt']:.2f}",
            str(sum(1 for x in exc.values() if x["device"] == dev)),
        ]
        assert cells == want, f"{dev}: PDF row {line!r}"
        if e["late"]:
            assert f"late uploads {e['late']}" in " ".join(text.split()), f"{dev}: late count"
    flat = " ".join(text.split())
    for g in (a for a in day.annotations if a.kind == "compliance_gap"):
        # readings stored for the silent time later (the store-and-forward upload), from the simulator's lines
        filled = sum(1 for ts, _, _ in expect[g.subject] if g.start_ms < ts < g.end_ms)
        shown = f"gap {hm(g.start_ms)}–{hm(g.end_ms)} ({(g.end_ms - g.start_ms) / 60_000:.1f} min"
        assert shown + (f", {filled} readings uploaded later)" if filled else ")") in flat, shown
    assert any(
        g.subject == "S1-cr2" and any(g.start_ms < ts < g.end_ms for ts, _, _ in expect["S1-cr2"])
        for g in day.annotations
        if g.kind == "compliance_gap"
    ), "the upload backfilled cr2's gap"
    assert "JY11108000000001" in text and "中关村市场监管所" in text and "海淀区示范餐厅" in text
    assert "retrospective" in text and "Not signed yet" in text
    assert "unattended stove" in text and "confirmed" in text
    pages = pdf_pages(pdf, tmp_path / "png")
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    n_pages = int(re.search(r"Pages:\s+(\d+)", info).group(1))  # type: ignore[union-attr]
    assert len(pages) == n_pages >= 2
    for p in pages:
        w, hgt = png_size(p)
        assert w > hgt > 250, "A4 landscape pages"

    # ---- regeneration after a restart: a fresh ledger read and InfluxDB connection, same hash ----------------
    again = await service.generate(settings, S.SITE, S.DAY, now_ms=NOW + 3_600_000)
    assert again.status == "unchanged" and again.record.sha256 == o.record.sha256
    assert not (folder.parent / "v2").exists()

    # ---- unsigned, then a correction (a late corrective action), then the sign-off ---------------------------
    assert (S.SITE, "2026-11-23", 1) in await service.unsigned(settings, station="中关村市场监管所")
    retro_ack = retro.model_copy(
        update={
            "state": AlertState.ACKNOWLEDGED,
            "at_ms": NOW - 60_000,
            "evidence": {**retro.evidence, "by": "王伟 Wang Wei", "note": "stock checked: within MKT"},
        }
    )
    writer = InfluxWriter(settings)
    writer.write([lineproto.alert_line(retro_ack)], "ns")
    writer.close()
    fix = await service.generate(settings, S.SITE, S.DAY, now_ms=NOW + 2 * 3_600_000, reason="ack entered late")
    assert fix.status == "corrected" and fix.record.version == 2 and fix.record.supersedes == o.record.sha256
    assert fix.record.reason.startswith("ack entered late; data changed since v1")
    fixed = {r["alert_id"]: r for r in csv.DictReader(io.StringIO((fix.folder / "excursions.csv").read_text()))}
    assert fixed[retro.alert_id]["ack_by"] == "王伟 Wang Wei"
    assert (folder / "report.pdf").read_bytes() == pdf.read_bytes(), "v1 is kept as it was"

    s, signed = await service.sign(settings, S.SITE, S.DAY, "李娜 Li Na", now_ms=NOW + 3 * 3_600_000)
    assert s.report_version == 2 and s.report_sha256 == fix.record.sha256
    assert signed.record.version == 3 and "signed off by 李娜 Li Na" in signed.record.reason
    assert "Reviewed by 李娜 Li Na" in " ".join(pdf_text(signed.folder / "report.pdf").split())
    assert (S.SITE, "2026-11-23", 3) not in await service.unsigned(settings, site=S.SITE)
    listed = await service.list_reports(settings, S.SITE)
    assert [(x.record.version, x.signed_by) for x in listed] == [
        (3, ("李娜 Li Na",)),
        (2, ("李娜 Li Na",)),
        (1, ("李娜 Li Na",)),
    ]
    assert all((x.folder / "report.pdf").exists() for x in listed)

    # ---- the next day chains to the latest version of this one -------------------------------------------------
    nxt = await service.generate(settings, S.SITE, date(2026, 11, 24), now_ms=NOW + 26 * 3_600_000)
    assert nxt.record.prev_sha256 == signed.record.sha256 and nxt.record.prev_date == "2026-11-23"
    checked, findings = await service.verify(settings, S.SITE)
    assert (checked, findings) == (4, [])

    # ---- tampering: a flipped byte, a deleted day, a day removed from the ledger -----------------------------
    await S.flip_a_byte(settings, fix.folder / "report.pdf")
    assert (await service.verify(settings, S.SITE))[1] == []

    shutil.move(str(settings.report_dir / S.SITE / "2026-11-23"), str(tmp_path / "moved"))
    _, findings = await service.verify(settings, S.SITE)
    assert {f.date for f in findings} == {"2026-11-23"} and all("missing" in f.problem for f in findings)
    shutil.move(str(tmp_path / "moved"), str(settings.report_dir / S.SITE / "2026-11-23"))

    # Tombstones on the compacted topic (the only way to delete a record from it) for every version of the 23rd.
    from pipeline.producer import durable_producer

    producer = durable_producer(settings)
    await producer.start()
    for v in (1, 2, 3):
        await producer.send_and_wait(topics.reports, None, key=f"{S.SITE}|2026-11-23|v{v}".encode())
    await producer.stop()
    _, findings = await service.verify(settings, S.SITE)
    assert findings[0].date == "2026-11-23"
    assert any("has no record" in f.problem for f in findings)
    assert any("not on the Kafka ledger" in f.problem for f in findings)
    # what InfluxDB still holds is what verify compared with
    assert L.influx_records(settings, S.SITE)[f"{S.SITE}|2026-11-23|v1"] == o.record.sha256
    assert serde.loads((folder / "manifest.json").read_bytes())["sha256"] == o.record.sha256

    # ---- the same through the `larder report` command, as a process --------------------------------------------
    import os

    from pipeline.services import larder_argv

    env = {
        **os.environ,
        "LARDER_TOPIC_PREFIX": topics.prefix,
        "LARDER_SITE_CONFIG": str(day.config_path),
        "LARDER_INFLUX__BUCKET": influx_bucket,
        "LARDER_REPORTS__DIR": str(settings.report_dir),
        "COLUMNS": "200",
    }
    cli = [*larder_argv(), "report"]
    verified = subprocess.run([*cli, "verify", "--site", S.SITE], env=env, capture_output=True, text=True, timeout=120)
    assert verified.returncode == 1 and "first day that does not match: 2026-11-23" in verified.stderr, verified.stderr
    bad = subprocess.run(
        [*cli, "daily", "--site", "nope", "--date", "2026-11-24"], env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 1 and "site 'nope' is not in the site file" in bad.stderr


def test_retention_is_applied_to_the_readings_policy(live_stack: Settings, influx_bucket: str) -> None:
    settings = live_stack.model_copy(
        update={
            "influx": live_stack.influx.model_copy(update={"bucket_override": influx_bucket}),
            "reports": ReportSettings(retention_days=800),
        }
    )
    assert service.retention_days(settings) is None  # a new database keeps everything
    assert service.apply_retention(settings) == f"{influx_bucket}: 800 days"
    assert service.retention_days(settings) == 800


async def test_a_version_stored_before_kafka_took_it_is_published_on_the_next_run(
    live_stack: Settings, topics: Topics, influx_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_file = tmp_path / "sites.yaml"
    site_file.write_text(
        "sites:\n  S9:\n    assets: {a: {}}\n    devices: {d: {asset: a, secret: '0123456789abcdef'}}\n"
    )
    settings = _settings(live_stack, topics, influx_bucket, tmp_path, site_file)
    real_publish = L.publish

    async def kafka_away(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Kafka is away")

    monkeypatch.setattr(L, "publish", kafka_away)
    with pytest.raises(ConnectionError):
        await service.generate(settings, "S9", S.DAY, now_ms=NOW)
    stored = serde.loads((settings.report_dir / "S9" / "2026-11-23" / "v1" / "manifest.json").read_bytes())
    monkeypatch.setattr(L, "publish", real_publish)
    o = await service.generate(settings, "S9", S.DAY, now_ms=NOW + 60_000)
    assert (o.status, o.record.version, o.record.sha256) == ("new", 1, stored["sha256"])
    assert await service.verify(settings, "S9") == (1, [])

    # An upgraded Larder renders the same data into other bytes: a new version says so, v1 stays as it was.
    from pipeline.reports import render

    monkeypatch.setattr(render, "__version__", "9.9.9")
    again = await service.generate(settings, "S9", S.DAY, now_ms=NOW + 120_000)
    assert (again.status, again.record.version) == ("corrected", 2)
    assert "renders differently with Larder" in again.record.reason and again.record.supersedes == o.record.sha256
    assert await service.verify(settings, "S9") == (2, [])


async def test_a_batch_in_two_processes_keeps_each_sites_chain(
    live_stack: Settings, topics: Topics, influx_bucket: str, tmp_path: Path
) -> None:
    """`report serve` with two workers: the sites are shared between two spawned processes, a site's days stay in
    one (in order, so day 2 chains to day 1), and every outcome and progress line reaches the caller."""
    from datetime import timedelta

    site_file = tmp_path / "sites.yaml"
    site_file.write_text(
        "sites:\n"
        "  S7:\n    assets: {a: {}}\n    devices: {d7: {asset: a, secret: '0123456789abcdef'}}\n"
        "  S8:\n    assets: {a: {}}\n    devices: {d8: {asset: a, secret: 'fedcba9876543210'}}\n"
    )
    settings = _settings(live_stack, topics, influx_bucket, tmp_path, site_file)
    before = S.DAY - timedelta(days=1)
    assert service.shares([("S7", before), ("S7", S.DAY), ("S8", S.DAY)], 2) == [
        [("S7", before), ("S7", S.DAY)],
        [("S8", S.DAY)],
    ]
    seen: list[tuple[int, int, str, date, str | None]] = []
    done = await service.run_batch(
        settings,
        [("S8", S.DAY), ("S7", S.DAY), ("S7", before)],
        progress=lambda i, n, sid, d, o, err: seen.append((i, n, sid, d, err)),
        workers=2,
    )
    assert sorted((i, n, err) for i, n, _, _, err in seen) == [(1, 3, None), (2, 3, None), (3, 3, None)]
    made = {(o.record.site, o.record.date): o for o in done}
    assert sorted(made) == [("S7", str(before)), ("S7", str(S.DAY)), ("S8", str(S.DAY))]
    assert all(o.status == "new" for o in done)
    assert made["S7", str(S.DAY)].record.prev_sha256 == made["S7", str(before)].record.sha256
    assert await service.verify(settings, "S7") == (2, [])
    assert await service.verify(settings, "S8") == (1, [])
