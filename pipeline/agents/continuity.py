"""Every record of an owned partition reaches the agent, in offset order, even when Faust drops some.

faust-streaming 0.15.3 can lose records around a rebalance without a trace: its fetch loop discards the rest
of a fetched batch when the generation changes or a partition is not yet active, its streams skip events
while flow control is paused, and its "seek to committed offsets" after a rebalance races with records
already being delivered (it can also reset the read offset to below what was delivered, or leave a
partition's fetch position at its end). Each time aiokafka's position has moved past records the agent never
saw, and nothing brings them back until the next restart. Measured here: after a failover the survivor
skipped the rest of the killed worker's partitions in ~1 run in 7 of
``tests/integration/test_worker.py::test_rebalance_survivor_restores_state``.

So the agent checks continuity itself, per partition:

* **a gap**: an event's offset is beyond the next expected one. The event is not processed (nor acked) and
  the partition is rewound to the expected offset; events beyond it are skipped until it arrives, so the
  records are processed again in log order (a tick processed before the readings it follows would make
  them late). A record below the expected offset is Faust's own re-delivery from the committed offset, and
  is processed: the detectors de-duplicate by (device, seq) / (camera, event id).
* **a stall**: the agent has been waiting for its next event for ``stall_s`` while a partition's fetch
  position is past the next expected offset (or past the group's committed offset, when nothing of the
  partition arrived since it was assigned): the partition is rewound there.

Rewinding clamps to the partition's first retained offset, and happens on the consumer's thread in one step
(assignment, position, seek), so a partition revoked or seeked meanwhile is left alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Continuity:
    """Per-partition expected offsets of one agent's source topic (``TP``-like keys: ``topic``, ``partition``)."""

    stall_s: float = 2.0
    #: partition -> the next offset the agent must see.
    expected: dict[Any, int] = field(default_factory=dict)
    #: partition -> offset being waited for after a rewind; events beyond it are skipped until it arrives.
    rewinding: dict[Any, int] = field(default_factory=dict)
    #: partition -> when it was last rewound. Records of the batch fetched before the seek may still be
    #: delivered after it, and Faust then raises its read offset past the re-read ones and drops them: a
    #: partition still skipping a second later is rewound again.
    rewound_at: dict[Any, float] = field(default_factory=dict)
    retry_s: float = 1.0
    #: When the agent last finished an event and began waiting for the next (None while it is processing).
    idle_since: float | None = None
    rewinds: int = 0

    def forget(self, tps: Any) -> None:
        """The partitions were revoked or (re)assigned: Faust restarts them from the committed offset."""
        for tp in tps:
            self.expected.pop(tp, None)
            self.rewinding.pop(tp, None)
            self.rewound_at.pop(tp, None)

    def admit(self, tp: Any, offset: int) -> int | None:
        """``None`` to process the event; else skip it (not acked) and, if >= 0, rewind the partition there."""
        waiting = self.rewinding.get(tp)
        if waiting is not None:
            if offset > waiting:
                # Rewound already: skip what was fetched before the seek and wait for the re-read.
                if time.monotonic() - self.rewound_at.get(tp, 0.0) >= self.retry_s:
                    return waiting
                return -1
            if offset == waiting:
                del self.rewinding[tp]
        expected = self.expected.get(tp)
        if expected is not None and offset > expected:
            self.rewinding[tp] = expected
            return expected
        if expected is None or offset >= expected:
            self.expected[tp] = offset + 1
        return None

    def stalled(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.idle_since is not None and now - self.idle_since >= self.stall_s

    async def rewind(self, consumer: Any, tp: Any, offset: int | None) -> bool:
        """Seek ``tp`` back to ``offset`` (``None``: its committed offset) if its fetch position is past it;
        False when there was nothing to do."""
        thread = consumer._thread

        def position(kafka: Any) -> int | None:
            if tp not in kafka.assignment():
                return None  # revoked: its new owner reads from the committed offset
            pos: int | None = kafka._fetcher._subscriptions.subscription.assignment.state_value(tp).position
            return pos

        async def seek_back() -> tuple[int | None, int | None]:
            """(offset sought back to or None, the start it was checked against or None if unknown)."""
            kafka = thread._ensure_consumer()
            start = offset if offset is not None else await kafka.committed(tp)
            before = position(kafka)
            if start is None or before is None or before <= start:
                return None, start
            target = max(start, (await kafka.beginning_offsets([tp]))[tp])  # retention may have deleted some
            # No await from here: the check and the seek are one step on the consumer's thread.
            if position(kafka) != before or before <= target:
                return None, None  # moved meanwhile (Faust's own seek): leave it
            kafka.seek(tp, target)
            return target, before

        self.rewound_at[tp] = time.monotonic()
        target, checked = await thread.call_thread(seek_back)
        if target is None:
            if offset is None and checked is not None:
                # Nothing fetched past the committed offset: that is the next offset the agent must see.
                self.expected.setdefault(tp, checked)
            return False
        before = checked
        # What Faust's own seek does: its fetch loop drops records below the read offset as already seen.
        consumer._read_offset[tp] = target
        self.rewinding[tp] = target
        self.rewinds += 1
        log.warning(
            "%s[%d]: %d records fetched but never delivered to the agent; re-reading from offset %d",
            tp.topic,
            tp.partition,
            (before or target) - target,
            target,
        )
        return True
