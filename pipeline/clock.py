"""The one clock abstraction that timers read.

Detection runs on event time. Timers that must fire when nothing arrives (a device gone offline, a stove left
on) are driven by ``now_ms`` from a :class:`Clock`: wall time when live, the recording's timeline in replay
(the replay tool publishes ``tick`` records into each partition after the messages sent before that instant
are in Kafka), a manual clock in tests and benchmarks. Detectors never read a clock themselves: they are
handed ``now_ms`` and stamp alerts with the *deadline* that was crossed, not with the moment the timer ran,
so a late timer changes nothing in the output.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


class WallClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to (tests, benchmarks, replay)."""

    def __init__(self, start_ms: int = 0) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def set(self, now_ms: int) -> None:
        if now_ms > self._now:
            self._now = now_ms

    def advance(self, delta_ms: int) -> None:
        self._now += delta_ms
