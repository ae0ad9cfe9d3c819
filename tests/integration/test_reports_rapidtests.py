"""The daily record's rapid tests (contract 6) against the real InfluxDB and Kafka: results written as the sink
writes them appear in ``rapid_tests.csv`` and in the PDF (time, instrument, sample, test item, result,
verdict), only those tested in the site's local day; the CSV is in the chained manifest, so ``verify`` finds a
flipped byte in it; a result uploaded late makes a new version. Expected rows come from the contract-6 bodies
written here, not from the report's code."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline import serde
from pipeline.contracts.rapidtest import RapidTestResult, enrich
from pipeline.contracts.records import rapid_tests_value
from pipeline.reports import ledger as L
from pipeline.reports import service
from pipeline.settings import ReportSettings, Settings
from pipeline.sinks.influx import InfluxWriter
from pipeline.sinks.rapidtest_lines import rapid_test_lines
from pipeline.siteconfig import write_site_file
from pipeline.testing import rapid_test_body
from pipeline.topics import Topics
from tests import reports_support as S

pytestmark = pytest.mark.integration
NOW = S.DAY_END_MS + 2 * 3_600_000
INSTRUMENT = "S1-rt1"


def body(
    rid: str, when: str, sample: str, name: str, outcome: str, stage: str = "initial", **extra: Any
) -> dict[str, Any]:
    return rapid_test_body(rid, outcome, sample_id=sample, stage=stage, tested_at=when, sample_name=name, **extra)


DAY_RESULTS = [
    body("r1", "2026-11-23T07:10:00+08:00", "20261123-001", "菠菜 spinach", "positive"),
    body("r2", "2026-11-23T07:25:30+08:00", "20261123-002", "韭菜 chives", "negative"),
    body(
        "r3",
        "2026-11-23T09:40:00+08:00",
        "20261123-001",
        "菠菜 spinach",
        "positive",
        "recheck",
        disposition={"action": "destroyed", "quantity_kg": 12.5},
    ),
    {
        **body("r4", "2026-11-23T10:05:00+08:00", "20261123-003", "鸡肉 chicken", "suspect"),
        "test_item": "clenbuterol",
        "method": "colloidal gold",
        "result_type": "qualitative",
        "value": None,
        "unit": None,
        "limit": None,
        "limit_basis": None,
    },
]
OTHER_DAYS = [
    body("r0", "2026-11-22T23:50:00+08:00", "20261122-009", "白菜 cabbage", "negative"),
    body("r9", "2026-11-24T00:10:00+08:00", "20261124-001", "萝卜 radish", "positive"),
]


def write_results(settings: Settings, bucket: str, bodies: list[dict[str, Any]]) -> None:
    """Through the contract's model and the sink's own line builder, as the hook and the sink do."""
    items = [
        enrich(
            RapidTestResult.model_validate({k: v for k, v in b.items() if v is not None}),
            instrument=INSTRUMENT,
            instrument_type="enzyme_inhibition",
            site=S.SITE,
            received_ms=NOW,
        )
        for b in bodies
    ]
    lines = list(rapid_test_lines(serde.loads(rapid_tests_value(items))))
    assert len(lines) == len(bodies)
    w = InfluxWriter(settings, bucket)
    try:
        w.write(lines, "ns")
    finally:
        w.close()


def expected_row(b: dict[str, Any]) -> dict[str, str]:
    if b["value"] is not None:
        result = f"{b['value']:g} {b['unit']} (limit {b['limit']:g} {b['unit']}, {b['limit_basis']})"
    else:
        result = "qualitative"
    stage = b.get("stage", "initial")
    verdict = b["result"] if stage == "initial" else f"{b['result']} ({stage.replace('_', ' ')})"
    d = b.get("disposition")
    return {
        "tested_at": datetime.fromisoformat(b["tested_at"]).isoformat(timespec="milliseconds"),
        "instrument": INSTRUMENT,
        "result_id": b["result_id"],
        "sample_id": b["sample_id"],
        "sample_name": b["sample_name"],
        "test_item": b["test_item"],
        "method": b["method"],
        "result": result,
        "verdict": verdict,
        "outcome": b["result"],
        "stage": stage,
        "operator": b["operator"],
        "disposition": f"{d['action']} {d['quantity_kg']:g} kg" if d else "",
    }


def pdf_text(path: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout


async def test_daily_record_lists_the_days_rapid_tests_in_pdf_and_csv_and_chains_them(
    live_stack: Settings, topics: Topics, influx_bucket: str, tmp_path: Path
) -> None:
    if shutil.which("pdftotext") is None:
        pytest.fail("poppler-utils missing: `larder stack up` installs it")
    day = S.build(tmp_path)
    doc, _, _ = S._doc()
    doc["sites"][S.SITE]["instruments"] = {INSTRUMENT: {"type": "enzyme_inhibition", "secret": "s3cret-rt1-s3cret"}}
    site_file = write_site_file(tmp_path / "sites-with-instruments.yaml", doc)
    influx = live_stack.influx.model_copy(update={"bucket_override": influx_bucket})
    settings = live_stack.model_copy(
        update={
            "topic_prefix": topics.prefix,
            "site_config": site_file,
            "influx": influx,
            "reports": ReportSettings(dir=tmp_path / "archive"),
        }
    )
    S.write(day, settings, influx_bucket)
    late = DAY_RESULTS[-1]
    write_results(settings, influx_bucket, [*DAY_RESULTS[:-1], *OTHER_DAYS])

    o = await service.generate(settings, S.SITE, S.DAY, now_ms=NOW)
    folder = o.folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "excursions.csv",
        "manifest.json",
        "rapid_tests.csv",
        "readings.csv",
        "report.pdf",
    ]
    rows = list(csv.DictReader(io.StringIO((folder / "rapid_tests.csv").read_text())))
    assert rows == [expected_row(b) for b in DAY_RESULTS[:-1]], "the day's results only, by time"
    # The PDF shows the same table: every result of the day (time, sample, verdict), none of another day.
    text = pdf_text(folder / "report.pdf")
    assert "Rapid tests" in text and "快检结果" in text
    table = text[text.index("Rapid tests") :]
    for b, when, verdict in [
        (DAY_RESULTS[0], "07:10", "positive"),
        (DAY_RESULTS[1], "07:25", "negative"),
        (DAY_RESULTS[2], "09:40", "positive (recheck)"),
    ]:
        line = next(x for x in table.splitlines() if x.lstrip().startswith(when))
        assert INSTRUMENT in line and verdict in line and b["sample_name"].split()[0] in line, line
    assert "destroyed 12.5 kg" in table and "63.5 % (limit 50 %" in table
    assert "白菜" not in text and "萝卜" not in text

    # Chained: the CSV's hash is in the record, and verify finds a flipped byte in it.
    assert o.record.files["rapid_tests.csv"] == L.sha256((folder / "rapid_tests.csv").read_bytes())
    assert await service.verify(settings, S.SITE) == (1, [])
    await S.flip_a_byte(settings, folder / "rapid_tests.csv")
    assert await service.verify(settings, S.SITE) == (1, [])

    # Unchanged data: the same record again. A result uploaded late: a new version that lists it.
    again = await service.generate(settings, S.SITE, S.DAY, now_ms=NOW + 60_000)
    assert again.status == "unchanged" and again.record.sha256 == o.record.sha256
    write_results(settings, influx_bucket, [late])
    v2 = await service.generate(settings, S.SITE, S.DAY, now_ms=NOW + 120_000)
    assert v2.status == "corrected" and v2.record.version == 2 and v2.record.supersedes == o.record.sha256
    rows2 = list(csv.DictReader(io.StringIO((v2.folder / "rapid_tests.csv").read_text())))
    assert rows2 == [expected_row(b) for b in DAY_RESULTS]
    assert "suspect" in pdf_text(v2.folder / "report.pdf")
    assert await service.verify(settings, S.SITE) == (2, [])
