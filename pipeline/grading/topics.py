"""The grading topics, beside Larder's own (:class:`pipeline.topics.Topics`) under the same prefix."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.topics import Topics, TopicSpec


@dataclass(frozen=True)
class GradingTopics:
    base: Topics

    @property
    def overrides(self) -> str:
        """Station overrides of a site's grade (:class:`pipeline.grading.evidence.Override`), keyed by site;
        kept forever: they are the audit trail."""
        return f"{self.base.prefix}.grade-overrides.v1"

    @property
    def grades(self) -> str:
        """Daily grade records (:class:`pipeline.grading.score.SiteGrade`), keyed by site: the grade history."""
        return f"{self.base.prefix}.grades.v1"

    @property
    def deadletter(self) -> str:
        """Records the grading agent could not use, with the reason and the original bytes."""
        return f"{self.base.prefix}.grading-deadletter.v1"

    def changelog(self) -> str:
        """The grading table's changelog (Faust's ``<app id>-<table>-changelog``): the latest state per site."""
        return f"{self.base.prefix}-grading-grading-state-changelog"

    def specs(self) -> list[TopicSpec]:
        forever = ("retention.ms", "-1")
        return [
            TopicSpec(self.overrides, self.base.partitions, (forever,)),
            TopicSpec(self.grades, self.base.partitions, (("retention.ms", str(800 * 24 * 3600 * 1000)),)),
            TopicSpec(self.deadletter, 1, (("retention.ms", str(30 * 24 * 3600 * 1000)),)),
        ]
