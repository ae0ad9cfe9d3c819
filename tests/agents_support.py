"""A small detector that follows the protocol of :mod:`pipeline.detectors.base`, for testing the agents' plumbing
independently of the production rules: a temperature above ``limit`` for ``delay_ms`` opens
``test.high`` (opened at breach start + delay, fired by an event or a tick), a reading at or below resolves it;
(device, seq) duplicates are annotated and change nothing. Also: a readings batch builder and an oracle that
runs the detector over the same records without Kafka."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from pipeline import serde
from pipeline.agents.core import Concern, Result, Runner
from pipeline.contracts import records
from pipeline.detectors.base import Output
from pipeline.schemas import (
    Alert,
    AlertState,
    Annotation,
    Reading,
    Severity,
    alert_id,
    ms_to_iso,
)
from pipeline.testing import (
    batch_records,
    kill9,
    kitchen_event_item,
    reading_item,
    site_doc,
    terminate,
    write_site_file,
)
from pipeline.topics import Topics

RULE = "test.high"


ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ThresholdState:
    last_seq: int = -1
    breach_start_ms: int | None = None
    open_id: str | None = None
    opened_ms: int | None = None
    site: str = ""


@dataclass(frozen=True)
class ThresholdDetector:
    limit: float = 8.0
    delay_ms: int = 60_000
    #: One detector per subject (cheap here), so a tick can name the subject in the alert.
    subject: str = ""
    name: str = "threshold"

    def initial(self) -> ThresholdState:
        return ThresholdState()

    def _open(self, s: ThresholdState, subject: str) -> tuple[ThresholdState, list[Output]]:
        assert s.breach_start_ms is not None
        opened = s.breach_start_ms + self.delay_ms
        aid = alert_id(RULE, subject, opened)
        alert = Alert(
            alert_id=aid,
            rule=RULE,
            severity=Severity.WARNING,
            site=s.site,
            subject=subject,
            state=AlertState.OPEN,
            opened_at=ms_to_iso(opened),
            at_ms=opened,
            evidence={"breach_start_ms": s.breach_start_ms},
        )
        return replace(s, open_id=aid, opened_ms=opened), [alert]

    def _due(self, s: ThresholdState, now_ms: int) -> bool:
        return s.breach_start_ms is not None and s.open_id is None and now_ms >= s.breach_start_ms + self.delay_ms

    def on_event(self, state: ThresholdState, event: Reading, now_ms: int) -> tuple[ThresholdState, list[Output]]:
        if event.seq <= state.last_seq:
            note = Annotation(
                kind="duplicate", site=event.site, subject=event.device, start_ms=event.ts_ms, end_ms=event.ts_ms
            )
            return state, [note]
        s = replace(state, last_seq=event.seq, site=event.site)
        out: list[Output] = []
        if self._due(s, event.ts_ms):
            s, out = self._open(s, event.device)
        if event.temp_c > self.limit:
            if s.breach_start_ms is None:
                s = replace(s, breach_start_ms=event.ts_ms)
            if self._due(s, event.ts_ms):
                s, more = self._open(s, event.device)
                out += more
        else:
            if s.open_id is not None:
                assert s.opened_ms is not None
                out.append(
                    Alert(
                        alert_id=s.open_id,
                        rule=RULE,
                        severity=Severity.WARNING,
                        site=s.site,
                        subject=event.device,
                        state=AlertState.RESOLVED,
                        opened_at=ms_to_iso(s.opened_ms),
                        resolved_at=ms_to_iso(event.ts_ms),
                        at_ms=event.ts_ms,
                    )
                )
            s = replace(s, breach_start_ms=None, open_id=None, opened_ms=None)
        return s, out

    def on_tick(self, state: ThresholdState, now_ms: int) -> tuple[ThresholdState, list[Output]]:
        if self._due(state, now_ms):
            return self._open(state, self.subject)
        return state, []

    def state_to_bytes(self, state: ThresholdState) -> bytes:
        return serde.dumps(asdict(state))

    def state_from_bytes(self, data: bytes) -> ThresholdState:
        return ThresholdState(**serde.loads(data))


def threshold_concern(limit: float = 8.0, delay_ms: int = 60_000) -> Concern[ThresholdState, Reading]:
    return Concern(
        name="devices",
        kind="readings",
        key_field="device",
        time_field="ts_ms",
        on_item=lambda det, state, item, now: det.on_event(state, Reading.model_validate(item), now),
        detector_for=lambda subject, _event: ThresholdDetector(limit=limit, delay_ms=delay_ms, subject=subject),
        origin="mqtt",
        origin_field="device",
    )


def concerns(_settings: Any = None) -> list[Concern[Any, Any]]:
    """Entry point for ``larder worker --concerns tests.agents_support:concerns``."""
    return [threshold_concern()]


def reading(device: str, seq: int, ts_ms: int, temp_c: float, site: str = "S01") -> dict[str, Any]:
    return reading_item(device, seq, ts_ms, temp_c, site=site, asset="a1")


def batches(items: list[dict[str, Any]], partitions: int, per_record: int = 500) -> list[tuple[int, bytes]]:
    """Group items by partition (keeping order) into RecordBatch values: [(partition, value), ...]."""
    return [(p, value) for p, _key, value in batch_records(items, partitions, per_record=per_record)]


def tick(now_ms: int) -> bytes:
    return records.tick_value(now_ms)


def oracle(records: list[tuple[int, bytes]], partitions: int, concern: Concern[Any, Any] | None = None) -> Result:
    """The uninterrupted run: the same Runner over a dict, partition by partition in record order."""
    runner: Runner[Any, Any] = Runner(concern or threshold_concern(), {}, partitions, arrived_ms=lambda: 0)
    total = Result()
    for p, value in records:
        r = runner.on_record(value, p)
        total.outputs += r.outputs
        total.dead_letters += r.dead_letters
        runner.flush()
    return total


# -- the production detectors --------------------------------------------------------------------------------

SITE = "S01"
#: Devices report every 5 min: the chilled profile's 60 min start-up mask is 12 steps, its 15 min delay 3.
STEP_MS = 300_000


def write_sites(path: Path, devices: list[str], kitchens: tuple[str, ...] = ("k1",)) -> Path:
    """A site file declaring ``devices`` (chilled cold room, 5 min interval) and kitchens with one camera each."""
    return write_site_file(
        path, site_doc(devices, kitchens, site=SITE, interval_s=STEP_MS // 1000, timezone="Asia/Shanghai")
    )


def device_reading(device: str, seq: int, ts_ms: int, temp_c: float) -> dict[str, Any]:
    return reading_item(device, seq, ts_ms, temp_c, site=SITE)


def kitchen_event(kitchen: str, event_id: str, ts_ms: int, type_: str, **extra: Any) -> dict[str, Any]:
    return kitchen_event_item(kitchen, event_id, ts_ms, type_, site=SITE, zone="cook", **extra)


def kitchen_batches(items: list[dict[str, Any]], partitions: int) -> list[tuple[int, bytes]]:
    return [(p, v) for p, _k, v in batch_records(items, partitions, kind="kitchen_events", per_record=len(items) or 1)]


def cold_chain_scenario(
    devices: int, steps: int, partitions: int, t0: int, seed: int = 7
) -> list[list[tuple[int, bytes]]]:
    """Per step (5 min): one readings record per partition, then a tick per partition half a step later.

    After the start-up mask (12 steps) each device has a breach (10 °C on a chilled asset: ``coldchain.high``
    after 15 min) of random length, so alerts open and resolve and some are under way at any cut; a few
    devices go silent (``liveness.*``, opened by ticks alone).
    """
    rng = random.Random(seed)
    plan = []
    for i in range(devices):
        start = rng.randrange(13, max(14, steps - 2))
        plan.append((f"dev-{i:04d}", start, start + rng.randrange(2, 10), rng.random() < 0.05))
    out: list[list[tuple[int, bytes]]] = []
    for step in range(steps):
        ts = t0 + step * STEP_MS
        items = []
        for dev, a, b, silent in plan:
            if silent and step > a:
                continue
            jitter = int(dev[-4:]) * 7 % 1000
            items.append(device_reading(dev, step, ts + jitter, 10.0 if a <= step < b else 4.0))
        recs = batches(items, partitions)
        recs += [(p, tick(ts + STEP_MS // 2)) for p in range(partitions)]
        out.append(recs)
    return out


def device_names(devices: int) -> list[str]:
    return [f"dev-{i:04d}" for i in range(devices)]


#: Steps between a device's reconnection (live readings again) and the upload of what it stored while offline.
UPLOAD_AFTER = 3


def outage_upload_scenario(
    devices: int, steps: int, partitions: int, t0: int, seed: int = 7
) -> list[list[tuple[int, bytes]]]:
    """Like :func:`cold_chain_scenario`, but two devices in five lose their network for 10-14 steps (50-70 min),
    report live again on reconnect and upload the stored readings :data:`UPLOAD_AFTER` steps later, as one
    store-and-forward run (what the re-run needs then is in the state: the checkpoint from before the outage
    and the live readings applied since, ``ckpt`` and ``hist``). Inside
    each outage the room sat at 10 °C for 4-6 steps (longer than the 15 min delay): a ``coldchain.high`` that
    only the upload shows, found by the retrospective re-run (:mod:`pipeline.detectors.history`). The other
    devices report in order, some with a breach of their own. Outages are staggered over the run, so uploads
    (and re-runs) keep arriving while the worker works through it."""
    rng = random.Random(seed)
    plan = []
    for i in range(devices):
        outage = rng.random() < 0.4
        start = rng.randrange(14, max(15, steps - 16))
        length = rng.randrange(10, 15) if outage else rng.randrange(2, 8)
        hot = (start + 2, start + 2 + rng.randrange(4, 7)) if outage else (start, start + length)
        plan.append((f"dev-{i:04d}", outage, start, start + length, hot))
    out: list[list[tuple[int, bytes]]] = []
    for step in range(steps):
        ts = t0 + step * STEP_MS
        items = []
        for dev, outage, a, b, (h0, h1) in plan:
            jitter = int(dev[-4:]) * 7 % 1000

            def reading(s: int, dev: str = dev, jitter: int = jitter, h0: int = h0, h1: int = h1) -> dict[str, Any]:
                return device_reading(dev, s, t0 + s * STEP_MS + jitter, 10.0 if h0 <= s < h1 else 4.0)

            if outage and a <= step < b:
                continue  # offline: stored on the logger
            if outage and step == b + UPLOAD_AFTER:
                items += [reading(s) for s in range(a, b)]  # the backlog, oldest first
            items.append(reading(step))
        recs = batches(items, partitions)
        recs += [(p, tick(ts + STEP_MS // 2)) for p in range(partitions)]
        out.append(recs)
    return out


class WorkerProcess:
    """A `larder worker` or `larder grade worker` subprocess (``command``) on the test's topics, with its own data
    folder and log file, committing every 0.5 s and rebalancing quickly (6 s session timeout)."""

    def __init__(self, command: list[str], topics: Topics, sites: Path, data: Path, log: Path, *args: str) -> None:
        self.log = log
        self.data = data
        self.args = [
            sys.executable,
            "-m",
            "pipeline.cli",
            *command,
            "--sites",
            str(sites),
            "--data-dir",
            str(data),
            "--commit-interval",
            "0.5",
            "--session-timeout",
            "6",
            "--heartbeat-interval",
            "1",
            *args,
        ]
        self.env = {
            **os.environ,
            "LARDER_TOPIC_PREFIX": topics.prefix,
            "LARDER_READINGS_PARTITIONS": str(topics.partitions),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        kill9(self.proc)

    def stop(self) -> None:
        terminate(self.proc, 20)


def scrape_metrics(port: int) -> dict[str, float]:
    """A worker's Prometheus metrics on 127.0.0.1:``port``: sample (with its labels) -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {k: float(v) for k, _, v in (ln.rpartition(" ") for ln in text.splitlines() if ln and ln[0] != "#")}
