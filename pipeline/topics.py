"""Kafka topic names and layout. Everything keyed per device or kitchen shares one partition count, so the
readings, kitchen events and every table that keeps their state are co-partitioned."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Topics:
    prefix: str = "larder"
    partitions: int = 4

    @property
    def readings(self) -> str:
        """Record batches of enriched readings (:class:`pipeline.schemas.RecordBatch`), keyed per device."""
        return f"{self.prefix}.readings.v1"

    @property
    def kitchen_events(self) -> str:
        """Record batches of enriched camera events, keyed per kitchen."""
        return f"{self.prefix}.kitchen-events.v1"

    @property
    def rapid_tests(self) -> str:
        """Record batches of enriched rapid-test results (contract 6, kind ``rapid_tests``), keyed per site."""
        return f"{self.prefix}.rapid-tests.v1"

    @property
    def deadletter(self) -> str:
        """Refused device payloads and hook bodies with the reason (:class:`pipeline.schemas.DeadLetter`)."""
        return f"{self.prefix}.deadletter.v1"

    @property
    def alerts(self) -> str:
        """Alert lifecycle events (contract 4), keyed by site."""
        return f"{self.prefix}.alerts.v1"

    @property
    def annotations(self) -> str:
        return f"{self.prefix}.annotations.v1"

    @property
    def acks(self) -> str:
        """Acknowledgements from supervisors, keyed by site."""
        return f"{self.prefix}.acks.v1"

    @property
    def deliveries(self) -> str:
        return f"{self.prefix}.deliveries.v1"

    @property
    def audit(self) -> str:
        """Every console action: who, when, what, from where (:class:`pipeline.console.records.AuditRecord`)."""
        return f"{self.prefix}.audit.v1"

    @property
    def verdicts(self) -> str:
        """Hygiene alerts marked confirmed / false positive (:class:`pipeline.console.records.VerdictRecord`)."""
        return f"{self.prefix}.verdicts.v1"

    @property
    def resolutions(self) -> str:
        """Corrective action and disposition of an alert (:class:`pipeline.console.records.ResolutionRecord`)."""
        return f"{self.prefix}.resolutions.v1"

    @property
    def reports(self) -> str:
        """The daily record's hash chain (:class:`pipeline.reports.model.ReportRecord`), key ``site|date|vN``;
        compacted: every version of every day is kept for good, a re-sent record replaces only itself."""
        return f"{self.prefix}.reports.v1"

    @property
    def report_signoffs(self) -> str:
        """Food-safety officers' sign-offs of daily records (:class:`pipeline.reports.model.SignOff`), compacted,
        key ``site|date|at_ms``: each sign-off is kept (an audit trail), never replaced by a later one."""
        return f"{self.prefix}.report-signoffs.v1"

    def specs(self) -> list[TopicSpec]:
        week = ("retention.ms", str(7 * 24 * 3600 * 1000))
        return [
            TopicSpec(self.readings, self.partitions, (week,)),
            TopicSpec(self.kitchen_events, self.partitions, (week,)),
            # Results are evidence for the daily record and inspections: kept a year.
            TopicSpec(self.rapid_tests, self.partitions, (("retention.ms", str(365 * 24 * 3600 * 1000)),)),
            TopicSpec(self.deadletter, 1, (("retention.ms", str(30 * 24 * 3600 * 1000)),)),
            TopicSpec(self.alerts, self.partitions, (week,)),
            TopicSpec(self.annotations, self.partitions, (week,)),
            TopicSpec(self.acks, self.partitions, (week,)),
            TopicSpec(self.deliveries, self.partitions, (week,)),
            # Audit, verdicts and resolutions are records people are accountable for: kept like the dead letters.
            TopicSpec(self.audit, 1, (("retention.ms", str(400 * 24 * 3600 * 1000)),)),
            TopicSpec(self.verdicts, self.partitions, (("retention.ms", str(400 * 24 * 3600 * 1000)),)),
            TopicSpec(self.resolutions, self.partitions, (("retention.ms", str(400 * 24 * 3600 * 1000)),)),
            TopicSpec(self.reports, 1, (("cleanup.policy", "compact"),)),
            TopicSpec(self.report_signoffs, 1, (("cleanup.policy", "compact"),)),
        ]
