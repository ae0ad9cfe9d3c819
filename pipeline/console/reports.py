"""The console's view of the daily temperature records (issue 21): every version and sign-off, folded from the
reports and sign-offs topics (the ledger of :mod:`pipeline.reports.ledger`) at start and then live.

Indexed by site and day, so a site's list or a station's unsigned days cost what they show, not the whole ledger
(``Ledger.versions`` scans every record: fine for the CLI's one site, not for a console of 1,000 sites).

Pure and synchronous: :meth:`ReportIndex.apply` takes one decoded record; the I/O is in :mod:`.app`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from pipeline.reports.ledger import FILES
from pipeline.reports.model import ReportRecord, SignOff

log = logging.getLogger("larder.console")

#: The files of a stored version the console serves (the manifest is the hashed record itself).
SERVED = (*FILES, "manifest.json")
CONTENT_TYPES = {
    "report.pdf": "application/pdf",
    "readings.csv": "text/csv; charset=utf-8",
    "excursions.csv": "text/csv; charset=utf-8",
    "manifest.json": "application/json",
}
DATE_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass
class Day:
    versions: dict[int, ReportRecord] = field(default_factory=dict)
    signoffs: dict[str, SignOff] = field(default_factory=dict)  # key site|date|at_ms -> sign-off

    def latest(self) -> ReportRecord | None:
        return self.versions[max(self.versions)] if self.versions else None

    def signed(self) -> list[SignOff]:
        return sorted(self.signoffs.values(), key=lambda s: (s.at_ms, s.name))


@dataclass
class ReportIndex:
    days: dict[str, dict[str, Day]] = field(default_factory=dict)  # site -> date -> day

    def _day(self, site: str, date: str) -> Day:
        return self.days.setdefault(site, {}).setdefault(date, Day())

    def add(self, value: ReportRecord | SignOff) -> None:
        day = self._day(value.site, value.date)
        if isinstance(value, ReportRecord):
            day.versions[value.version] = value
        else:
            day.signoffs[value.key] = value

    def apply(self, is_report: bool, key: bytes | None, value: bytes | None) -> None:
        """One record of the reports (``is_report``) or sign-offs topic; a tombstone removes its key."""
        from pipeline import serde

        if value is None:
            parts = (key or b"").decode(errors="replace").split("|")
            if len(parts) == 3 and parts[0] in self.days and parts[1] in self.days[parts[0]]:
                day = self.days[parts[0]][parts[1]]
                if is_report and parts[2].startswith("v") and parts[2][1:].isdigit():
                    day.versions.pop(int(parts[2][1:]), None)
                elif not is_report:
                    day.signoffs.pop("|".join(parts), None)
            return
        try:
            data = serde.loads(value)
            self.add(ReportRecord.model_validate(data) if is_report else SignOff.model_validate(data))
        except (ValueError, ValidationError) as exc:  # a foreign record must not stop the console
            log.warning("skipping a %s record the console cannot read: %s", "report" if is_report else "sign-off", exc)

    # -- queries --------------------------------------------------------------------------------------------

    def day(self, site: str, date: str) -> Day | None:
        d = self.days.get(site, {}).get(date)
        return d if d is not None and d.versions else None

    def site_rows(self, site: str) -> list[dict[str, Any]]:
        """A site's reported days, newest first: each with every version and the day's sign-offs."""
        rows = []
        for date, day in sorted(self.days.get(site, {}).items(), reverse=True):
            latest = day.latest()
            if latest is None:
                continue
            rows.append(
                {
                    "date": date,
                    "latest": _version(latest),
                    "versions": [_version(day.versions[v]) for v in sorted(day.versions, reverse=True)],
                    "signoffs": [_signoff(s) for s in day.signed()],
                    "signed": bool(day.signoffs),
                }
            )
        return rows

    def unsigned(self, sites: Iterable[str]) -> list[dict[str, Any]]:
        """Reported days without a sign-off, by site then day (oldest first: the longest waiting on top)."""
        out = []
        for site in sorted(sites):
            for date, day in sorted(self.days.get(site, {}).items()):
                latest = day.latest()
                if latest is not None and not day.signoffs:
                    out.append({"site": site, "date": date, "latest": _version(latest)})
        return out


def _version(r: ReportRecord) -> dict[str, Any]:
    return {
        "version": r.version,
        "report_id": r.report_id,
        "sha256": r.sha256,
        "generated_ms": r.generated_ms,
        "reason": r.reason,
        "files": sorted(r.files),
        "signed_version": r.signoff_sha256 is not None,
    }


def _signoff(s: SignOff) -> dict[str, Any]:
    return {
        "name": s.name,
        "role": s.role,
        "meaning": s.meaning,
        "at_ms": s.at_ms,
        "report_version": s.report_version,
        "report_sha256": s.report_sha256,
        "comment": s.comment,
        "via": s.via,
    }
