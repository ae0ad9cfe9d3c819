"""Faust's table recovery never seeks a changelog partition to a negative offset (issue 26's chaos run)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import faust
from faust.types import TP

from pipeline.agents.faust.durable import clamp_recovery_seeks


class SeekRecorder:
    def __init__(self) -> None:
        self.seeks: list[dict[TP, int]] = []

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        self.seeks.append(dict(offsets))


async def test_a_negative_recovery_offset_reads_the_changelog_from_the_start() -> None:
    app = faust.App("recovery-seeks", broker="kafka://127.0.0.1:9", store="memory://", autodiscover=False)
    clamp_recovery_seeks(app)
    a, b, c = TP("cl", 0), TP("cl", 1), TP("cl", 2)
    offsets: Counter[TP] = Counter({a: -2, b: -1, c: 41})
    consumer = SeekRecorder()
    tables: Any = app.tables
    await tables.recovery._seek_offsets(consumer, {a, b, c}, offsets, "standby")
    # Unpatched, Faust passes -2 through and aiokafka's seek raises "Offset must be a positive integer".
    assert consumer.seeks == [{a: 0, b: 0, c: 41}]
