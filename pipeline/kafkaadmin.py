"""Kafka administration the services need at run time: create Larder's topics, delete a run's topics.

The worker creates its topics before its agents subscribe (an agent whose topic is missing may never
subscribe), replay and simulations run on fresh prefixes and delete them afterwards, and `larder stack prune`
finds what interrupted runs left behind. None of this is about installing the local stack, so it lives here
and :mod:`pipeline.stack` imports it, never the other way round.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from pipeline.settings import Settings
from pipeline.topics import Topics, TopicSpec

__all__ = [
    "SCRATCH_RUN",
    "SCRATCH_TOPIC",
    "create_missing",
    "delete_topics",
    "ensure_topics",
    "prefixed",
    "run_of",
]

# Topics of a run on a prefix of its own: tests (t + 10 hex), benchmarks (b/bench + hex), simulations and
# replays on fresh topics (sim/live/demo + 8 hex), Faust's internal topics under them ("<prefix>-worker-..."),
# and quix-streams' changelogs of the benchmark baseline ("changelog__quix-<hash>--<prefix>-..."). Each run
# deletes its own; this finds what an interrupted run left behind (`larder stack prune`).
SCRATCH_RUN = r"(?:t[0-9a-f]{10}|b[0-9a-f]{8}|bench[0-9a-f]{6,8}|(?:sim|live|demo)[0-9a-f]{8})"
_QUIX_CHANGELOG = r"changelog__quix-[0-9a-f]+--"
SCRATCH_TOPIC = re.compile(rf"^(?:{_QUIX_CHANGELOG})?{SCRATCH_RUN}[.-]")


def prefixed(prefix: str) -> Callable[[str], bool]:
    """Matches the topics of one prefix: its own, Faust's internal ones, quix-streams' changelogs."""
    own = re.compile(rf"^(?:{_QUIX_CHANGELOG})?{re.escape(prefix)}[.-]")
    return lambda name: own.match(name) is not None


def run_of(topic: str) -> str:
    """The prefix of the run a topic belongs to (``prefixed`` read backwards)."""
    return re.split(r"[.-]", re.sub(rf"^{_QUIX_CHANGELOG}", "", topic))[0]


async def ensure_topics(settings: Settings, topics: Topics | None = None) -> list[str]:
    """Create Larder's topics with their configured partition counts; returns the ones it created."""
    topics = topics or Topics(settings.topic_prefix, settings.readings_partitions)
    return await create_missing(settings, topics.specs())


async def create_missing(settings: Settings, specs: Iterable[TopicSpec]) -> list[str]:
    """Create those of ``specs`` that do not exist yet (with the configured replication and min ISR); returns
    their names. Also what other topic families (grading) ensure theirs with."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            k = settings.kafka
            isr = ("min.insync.replicas", str(k.min_insync_replicas))
            await admin.create_topics(
                [
                    NewTopic(s.name, s.partitions, k.replication_factor, topic_configs=dict((*s.config, isr)))
                    for s in missing
                ]
            )
        return [s.name for s in missing]
    finally:
        await admin.close()


async def delete_topics(settings: Settings, match: Callable[[str], bool], *, dry_run: bool = False) -> list[str]:
    """Delete the topics ``match`` accepts; returns their names (sorted). Kafka's own topics are never touched."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers, request_timeout_ms=90_000)
    await admin.start()
    try:
        doomed = sorted(t for t in await admin.list_topics() if not t.startswith("__") and match(t))
        # One request per few hundred: a single DeleteTopics for thousands of partitions times out.
        for i in range(0, 0 if dry_run else len(doomed), 200):
            await admin.delete_topics(doomed[i : i + 200], timeout_ms=60_000)
        return doomed
    finally:
        await admin.close()
