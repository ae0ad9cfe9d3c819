"""One run through the real path: register the simulated devices, (optionally) start the pipeline's processes,
send, wait until the worker has processed everything, read the alert timeline, score it against the truth."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.contracts import records
from pipeline.contracts.models import Alert, AlertState
from pipeline.contracts.replay import Line, Truth
from pipeline.detectors.liveness import silence_decisions
from pipeline.replay.score import Score, score
from pipeline.replay.send import Progress, SendStats, drive
from pipeline.replay.timeline import read_alerts, wait_processed
from pipeline.settings import Settings
from pipeline.siteconfig import SiteConfig, resolve_device_rules
from pipeline.topics import Topics


@dataclass
class RunResult:
    topics: Topics
    stats: SendStats
    alerts: list[Alert]
    score: Score | None
    processed_wait_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def fresh_prefix(tag: str = "sim") -> str:
    return f"{tag}{uuid.uuid4().hex[:8]}"


def secrets_of(config: SiteConfig) -> tuple[dict[str, str], dict[str, str]]:
    devices = config.device_secrets()
    cameras = {cam_id: cam.resolve_secret() for cam_id, _, cam in config.cameras()}
    return devices, cameras


def register_devices(settings: Settings, config: SiteConfig) -> None:
    """Let the simulated devices log in to the broker. Only adds (pipeline.stack.logins): every device
    registered from anywhere else keeps its login."""
    from pipeline.stack import logins

    if settings.mqtt.external:
        return  # an external broker's credentials are not ours to write
    logins.register_devices(settings, config.device_secrets(), source="larder replay/simulate")


class AlertWatch:
    """Counts alert events while a run is in progress (for the live display)."""

    def __init__(self, settings: Settings, topics: Topics) -> None:
        self.settings = settings
        self.topics = topics
        self.opened = 0
        self.resolved = 0
        self.latest: list[Alert] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self._c = AIOKafkaConsumer(
            self.topics.alerts,
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await self._c.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self._c.getmany(timeout_ms=300)
            for recs in batch.values():
                for r in recs:
                    if r.value is None:
                        continue
                    a = records.read_alert(r.value)
                    if a.state is AlertState.OPEN:
                        self.opened += 1
                        self.latest = [*self.latest[-4:], a]
                    elif a.state is AlertState.RESOLVED:
                        self.resolved += 1

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._c.stop()


async def run_lines(
    settings: Settings,
    topics: Topics,
    lines: Iterable[Line],
    config: SiteConfig,
    *,
    hooks_url: str,
    speed: float | None = None,
    ticks: bool = True,
    tick_every_s: float = 10.0,
    truth: list[Truth] | None = None,
    on_progress: Progress | None = None,
    on_watch: Callable[[AlertWatch], Any] | None = None,
    process_timeout_s: float = 180.0,
) -> RunResult:
    """Send ``lines`` through the real path, wait until the worker has processed everything, read the alert
    timeline and score it against ``truth``. ``on_watch`` is handed an :class:`AlertWatch` counting the alerts
    while the run goes on (for a live display)."""
    async with contextlib.AsyncExitStack() as running:
        if on_watch is not None:
            watch = AlertWatch(settings, topics)
            await watch.start()
            running.push_async_callback(watch.stop)
            on_watch(watch)
        devices, cameras = secrets_of(config)
        t0 = time.monotonic()
        stats = await drive(
            settings,
            topics,
            lines,
            device_secrets=devices,
            camera_secrets=cameras,
            instrument_secrets={ins_id: ins.resolve_secret() for ins_id, _, ins in config.instruments()},
            silences={
                device: silence_decisions(resolve_device_rules(config, site, device))
                for device, site, _ in config.devices()
            },
            hooks_url=hooks_url,
            speed=speed,
            ticks=ticks,
            tick_every_s=tick_every_s,
            on_progress=on_progress,
        )
        t1 = time.monotonic()
        waited = await wait_processed(settings, topics, timeout=process_timeout_s)
        alerts = await read_alerts(settings, topics)
    sc = score(truth, alerts) if truth is not None else None
    return RunResult(topics, stats, alerts, sc, waited, {"send_s": t1 - t0, "drain_s": time.monotonic() - t1})


def run_recording(
    settings: Settings,
    lines: Iterable[Line],
    config: SiteConfig,
    config_path: Path,
    *,
    services: bool = True,
    prefix: str | None = None,
    hooks_url: str | None = None,
    clock: str = "replay",
    speed: float | None = None,
    tick_every_s: float = 10.0,
    truth: list[Truth] | None = None,
    on_progress: Progress | None = None,
    report: Callable[[str], None] = lambda _m: None,
    names: tuple[str, ...] | None = None,
    on_watch: Callable[[AlertWatch], Any] | None = None,
) -> RunResult:
    """Send ``lines``, collect and score (:func:`run_lines`); ``clock`` "replay" sends ticks along the recording.

    ``services``: start ``names`` (default bridge + hooks + worker) for ``config`` on fresh topics (``prefix``,
    or a new one) and stop them after the run. Otherwise the running ones are used: topics ``prefix`` (default
    the settings' topic prefix), hooks at ``hooks_url`` (default the settings' hooks port)."""
    from pipeline.services import CORE, Services

    svc: Services | None = None
    if services:
        from pipeline.kafkaadmin import ensure_topics

        topics = Topics(prefix or fresh_prefix(), settings.readings_partitions)
        asyncio.run(ensure_topics(settings, topics))
        register_devices(settings, config)
        svc = Services(settings, config_path, topics.prefix, clock=clock, names=names or CORE, report=report)
        svc.start()
        hooks_url = svc.hooks_url
    else:
        topics = Topics(prefix or settings.topic_prefix, settings.readings_partitions)
        hooks_url = hooks_url or f"http://127.0.0.1:{settings.ingest.hooks_port}"
    try:
        return asyncio.run(
            run_lines(
                settings,
                topics,
                lines,
                config,
                hooks_url=hooks_url,
                speed=speed,
                ticks=clock == "replay",
                tick_every_s=tick_every_s,
                truth=truth,
                on_progress=on_progress,
                on_watch=on_watch,
            )
        )
    finally:
        if svc is not None:
            svc.stop()
