"""Typed records of the daily temperature record: what is gathered, what is computed, what is chained.

Times are integer milliseconds since the Unix epoch, UTC (as everywhere in Larder); rendering turns them into
the site's local time with its offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RECORD_VERSION = 1
#: The chain's first link: a site's first report names this as its previous day's hash.
GENESIS = "0" * 64


# ---------------------------------------------------------------------------------------------------------------
# Gathered from InfluxDB (pipeline.reports.gather)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Point:
    """One stored reading: event time, value, and arrival delay (``delay_ms`` field of the ``reading`` points)."""

    ts_ms: int
    temp_c: float
    delay_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """One ``alert`` point: a lifecycle transition with its ack fields and evidence."""

    at_ms: int
    state: str
    step: int | None = None
    by: str | None = None
    role: str | None = None
    via: str | None = None
    note: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class AlertHistory:
    alert_id: str
    rule: str
    severity: str
    subject: str
    transitions: list[Transition] = field(default_factory=list)

    def first(self, state: str) -> Transition | None:
        return next((t for t in self.transitions if t.state == state), None)

    @property
    def opened_ms(self) -> int | None:
        t = self.first("open")
        return t.at_ms if t else None

    @property
    def resolved_ms(self) -> int | None:
        t = self.first("resolved")
        return t.at_ms if t else None

    def evidence(self, key: str) -> Any:
        """The latest transition's value of an evidence key (later transitions carry corrections)."""
        for t in reversed(self.transitions):
            if key in t.evidence:
                return t.evidence[key]
        return None


@dataclass(frozen=True, slots=True)
class DeliveryPoint:
    """One ``delivery`` point (planned, attempt, delivered, failed)."""

    at_ms: int
    kind: str
    message_id: str
    role: str = ""
    channel: str = ""
    status: str = ""
    recipient: str = ""
    alert_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AnnotationPoint:
    kind: str
    subject: str
    start_ms: int
    end_ms: int
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RapidTestPoint:
    """One ``rapid_test`` point (contract 6 result, as the sink stores it)."""

    ts_ms: int  # tested_at
    result_id: str
    instrument: str
    test_item: str
    outcome: str  # negative / positive / suspect
    stage: str  # initial / recheck / lab_confirmed
    sample_id: str = ""
    sample_name: str = ""
    food_category: str = ""
    stall: str = ""
    method: str = ""
    value: float | None = None
    unit: str = ""
    limit: float | None = None
    limit_basis: str = ""
    operator: str = ""
    disposition: str = ""
    quantity_kg: float | None = None


@dataclass
class DayData:
    """Everything InfluxDB holds about one site and one local day that the record shows."""

    site: str
    date: str  # YYYY-MM-DD in the site's zone
    start_ms: int
    end_ms: int
    readings: dict[str, list[Point]]  # device -> points in [start, end), by time
    alerts: list[AlertHistory]
    deliveries: list[DeliveryPoint]
    annotations: list[AnnotationPoint]
    #: The site's rapid-test results tested in the day, by time (contract 6).
    rapid_tests: list[RapidTestPoint] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Computed (pipeline.reports.compute)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    start_ms: int
    end_ms: int
    backfilled: int  # readings inside the gap that arrived later (store-and-forward)

    @property
    def minutes(self) -> float:
        return (self.end_ms - self.start_ms) / 60_000


@dataclass(frozen=True)
class Notified:
    tier: int | None  # 1-based escalation step of the role for the alert's severity; None if not in the policy
    role: str
    name: str
    channel: str
    at_ms: int
    status: str  # delivered / failed / planned (still in flight when the record was made)


@dataclass(frozen=True)
class Excursion:
    alert_id: str
    rule: str
    severity: str
    asset: str
    device: str
    start_ms: int  # the breach began (evidence breach_since), else the alert's opening
    alarm_ms: int  # the alert opened
    end_ms: int | None  # resolved; None: still open when the record was made
    peak_c: float | None  # max (min for low rules) of the day's readings in [start, end]
    limit_c: float | None
    retrospective: bool
    notified: tuple[Notified, ...]
    ack_by: str | None
    ack_at_ms: int | None
    ack_via: str | None
    corrective_action: str
    disposition: str

    def duration_min(self, day_end_ms: int) -> float:
        return ((self.end_ms if self.end_ms is not None else day_end_ms) - self.start_ms) / 60_000


@dataclass(frozen=True)
class AssetDay:
    asset: str
    name: str
    kind: str
    profile: str
    device: str
    interval_s: float
    low_c: float | None
    high_c: float | None
    expected: int
    received: int
    late: int  # readings that arrived more than the allowed lateness after their time
    gaps: tuple[Gap, ...]
    min_c: float | None
    max_c: float | None
    mean_c: float | None
    covered_min: float  # time the readings cover (each holds to the next, at most offline_k x interval)
    in_range_pct: float | None
    out_of_range_min: float
    mkt_c: float | None
    points: tuple[Point, ...]

    @property
    def completeness_pct(self) -> float:
        return min(100.0, 100.0 * self.received / self.expected) if self.expected else 0.0


@dataclass(frozen=True)
class KitchenEpisode:
    """An unattended-stove episode or a hygiene event, with what people made of it."""

    alert_id: str
    kitchen: str
    rule: str
    severity: str
    start_ms: int
    end_ms: int | None
    count: int | None
    confidence: float | None
    verdict: str  # confirmed / false_positive / not reviewed (hygiene); reason (unattended)
    retrospective: bool
    ack_by: str | None
    ack_at_ms: int | None
    note: str


@dataclass(frozen=True)
class RapidTestRow:
    """One rapid-test result of the day as the record shows it: time, instrument, sample, test item, result
    (value and unit against the limit, or the qualitative outcome), verdict (outcome and stage)."""

    ts_ms: int
    instrument: str
    result_id: str
    sample_id: str
    sample_name: str
    test_item: str
    method: str
    result: str  # "63.5 % (limit 50 %)" or "qualitative"
    outcome: str  # negative / positive / suspect
    stage: str  # initial / recheck / lab_confirmed
    operator: str
    disposition: str  # "destroyed 12.5 kg", or ""

    @property
    def verdict(self) -> str:
        """``positive (recheck)``: the outcome, with the stage unless it is the initial test."""
        return self.outcome if self.stage in ("", "initial") else f"{self.outcome} ({self.stage.replace('_', ' ')})"


@dataclass(frozen=True)
class DailyReport:
    site: str
    site_name: str
    licence_no: str
    credit_code: str
    station: str
    district: str
    timezone: str
    date: str
    start_ms: int
    end_ms: int
    assets: tuple[AssetDay, ...]
    excursions: tuple[Excursion, ...]
    unattended: tuple[KitchenEpisode, ...]
    hygiene: tuple[KitchenEpisode, ...]
    #: The day's rapid-test results (contract 6), by time.
    rapid_tests: tuple[RapidTestRow, ...] = ()
    #: The site has rapid-test instruments: the record has a rapid-test section (and ``rapid_tests.csv``)
    #: even on a day without results.
    has_instruments: bool = False


# ---------------------------------------------------------------------------------------------------------------
# Chained and audited (pipeline.reports.ledger): Kafka (compacted) + InfluxDB
# ---------------------------------------------------------------------------------------------------------------


class ReportRecord(BaseModel):
    """One version of one site's daily record, as chained on the reports topic (key ``site|date|vN``).

    ``sha256`` is the SHA-256 of the manifest (``manifest_bytes``): the site, day, version, the SHA-256 of every
    file, the previous day's ``sha256`` and the superseded version's. Changing a file, a version's place or the
    previous day's record changes it, so each day vouches for the day before.
    """

    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    site: str
    date: str
    version: int = Field(ge=1)
    report_id: str
    sha256: str
    prev_sha256: str = Field(description="the latest version of the previous reported day (GENESIS for the first)")
    prev_date: str | None = None
    supersedes: str | None = Field(None, description="sha256 of the version this one corrects")
    reason: str = ""
    generated_ms: int
    data_sha256: str = Field(description="digest of the gathered data: unchanged data regenerates the same report")
    files: dict[str, str] = Field(description="file name -> SHA-256")
    signoff_sha256: str | None = Field(None, description="digest of the sign-offs shown in this version")

    @property
    def key(self) -> str:
        return f"{self.site}|{self.date}|v{self.version}"


class SignOff(BaseModel):
    """The food-safety officer's (食品安全员) daily check: "I reviewed this day's record" (audited, never edited).

    On the sign-offs topic (key ``site|date|at_ms``) and in InfluxDB (``report_signoff``). The console calls
    :func:`pipeline.reports.service.sign` as the CLI does.
    """

    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    site: str
    date: str
    name: str = Field(min_length=1, max_length=200)
    role: str = "food_safety_officer"
    meaning: Literal["reviewed"] = "reviewed"
    at_ms: int
    report_sha256: str = Field(description="the version that was reviewed")
    report_version: int
    comment: str = Field("", max_length=2000)
    via: str = Field("cli", description="cli or console")

    @property
    def key(self) -> str:
        return f"{self.site}|{self.date}|{self.at_ms}"
