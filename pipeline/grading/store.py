"""Reading and writing the grading topics: what the CLI, the HTTP endpoint and the console call.

* :func:`read_states` reads the grading table's changelog (compacted; latest state per site) into
  :class:`~pipeline.grading.evidence.SiteEvidence` objects; :func:`grades` and
  :func:`pipeline.grading.rollup.rollup` turn them into figures as of any instant.
* :func:`publish_override` writes an audited override (acks=all) to the overrides topic; the worker folds it.
* :func:`read_overrides` and :func:`read_history` read the audit trail and the daily grade records.
"""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord

from pipeline import serde
from pipeline.alerts.kafkaio import read_to_end
from pipeline.grading import evidence
from pipeline.grading.evidence import Override, SiteEvidence
from pipeline.grading.score import DEFAULT_WEIGHTS, SiteGrade, Weights, compute
from pipeline.grading.topics import GradingTopics
from pipeline.producer import durable_producer
from pipeline.settings import Settings
from pipeline.siteconfig import SiteConfig


async def ensure_topics(settings: Settings, gt: GradingTopics) -> list[str]:
    """Larder's topics and the grading ones; returns those created."""
    from pipeline.kafkaadmin import create_missing
    from pipeline.kafkaadmin import ensure_topics as ensure_base

    created = await ensure_base(settings, gt.base)
    return created + await create_missing(settings, gt.specs())


async def read_states(settings: Settings, gt: GradingTopics) -> dict[str, SiteEvidence]:
    """The latest state of every site from the grading table's changelog (empty before the worker's first
    write; a missing changelog topic means no grading worker ever ran under this prefix)."""
    latest: dict[bytes, bytes | None] = {}

    def handle(rec: ConsumerRecord) -> None:
        if rec.key is not None:
            latest[rec.key] = rec.value

    try:
        await read_to_end(settings, [gt.changelog()], handle)
    except RuntimeError:
        # No changelog topic: no grading worker has written under this prefix yet, so there is no evidence.
        return {}
    return {k.decode(): evidence.from_bytes(v) for k, v in sorted(latest.items()) if v}


def grades(
    states: dict[str, SiteEvidence],
    cfg: SiteConfig,
    as_of_ms: int,
    sites: list[str] | None = None,
    weights: Weights = DEFAULT_WEIGHTS,
) -> list[SiteGrade]:
    """The grade of each site of the site file (or of ``sites``) as of ``as_of_ms``; a site with no evidence
    yet is graded on its static part alone."""
    wanted = sites or sorted(cfg.sites)
    return [compute(states.get(s) or evidence.empty(s), cfg.sites[s], as_of_ms, weights) for s in wanted]


def latest_event_ms(states: dict[str, SiteEvidence]) -> int:
    return max((s.watermark_ms for s in states.values()), default=0)


async def publish_override(settings: Settings, gt: GradingTopics, override: Override) -> None:
    producer = durable_producer(settings)
    await producer.start()
    try:
        await (await producer.send(gt.overrides, override.model_dump_json().encode(), key=override.site.encode()))
    finally:
        await producer.stop()


async def read_overrides(settings: Settings, gt: GradingTopics, site: str | None = None) -> list[Override]:
    found: list[Override] = []

    def handle(rec: ConsumerRecord) -> None:
        try:
            o = Override.model_validate(serde.loads(rec.value))
        except Exception:  # the worker dead-letters these; the audit list shows what is valid
            return
        if site is None or o.site == site:
            found.append(o)

    await read_to_end(settings, [gt.overrides], handle)
    return sorted(found, key=lambda o: (o.at_ms, o.site))


async def read_history(settings: Settings, gt: GradingTopics, site: str) -> list[dict[str, Any]]:
    """The daily grade records of ``site`` (one per local day, de-duplicated by day: a re-read record repeats)."""
    by_day: dict[int, dict[str, Any]] = {}

    def handle(rec: ConsumerRecord) -> None:
        if rec.key == site.encode():
            doc = serde.loads(rec.value)
            by_day[doc["as_of_ms"]] = doc

    await read_to_end(settings, [gt.grades], handle)
    return [by_day[k] for k in sorted(by_day)]
