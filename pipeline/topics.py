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

    def specs(self) -> list[TopicSpec]:
        week = ("retention.ms", str(7 * 24 * 3600 * 1000))
        return [
            TopicSpec(self.readings, self.partitions, (week,)),
            TopicSpec(self.kitchen_events, self.partitions, (week,)),
            TopicSpec(self.deadletter, 1, (("retention.ms", str(30 * 24 * 3600 * 1000)),)),
            TopicSpec(self.alerts, self.partitions, (week,)),
            TopicSpec(self.annotations, self.partitions, (week,)),
            TopicSpec(self.acks, self.partitions, (week,)),
            TopicSpec(self.deliveries, self.partitions, (week,)),
            # Audit, verdicts and resolutions are records people are accountable for: kept like the dead letters.
            TopicSpec(self.audit, 1, (("retention.ms", str(400 * 24 * 3600 * 1000)),)),
            TopicSpec(self.verdicts, self.partitions, (("retention.ms", str(400 * 24 * 3600 * 1000)),)),
            TopicSpec(self.resolutions, self.partitions, (("retention.ms", str(400 * 24 * 3600 * 1000)),)),
        ]
