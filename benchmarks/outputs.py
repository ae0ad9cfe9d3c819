"""The worker's outputs in an alert storm: what handing thousands of alerts and annotations to Kafka costs.

    python -m benchmarks.outputs [--devices 10000] [--readings 300000] [--rounds 5]

Needs a running stack (`larder stack up`). The outputs are the ones the production detectors give on
``benchmarks.detection``'s readings (10,000 devices, ~2 % of device-steps out of range: ~10,000 alerts and the
10,000 startup-mask annotations of devices seen for the first time), grouped as the records that produced them.
Two ways of sending the same outputs, alternating round by round, with the same idempotent ``acks=all`` producer
(the worker's :class:`~pipeline.agents.faust.changelog.KafkaBatches`) into a fresh alerts and annotations topic:

* **a send a record**: each output encoded by ``model_dump(mode="json")`` and handed over by aiokafka's ``send``
  (the worker before 2026-12-06);
* **the worker's way**: :class:`~pipeline.agents.faust.app.KafkaOutputs` (plain-JSON encoding, one record
  batch a partition).

As in the worker, a record's outputs are handed over and the previous record's awaited before the next record's
go. Measured: CPU of this process (aiokafka's sender is a task of the same loop) and wall time from the first
hand-over to the last ack, per output. Prints a Markdown table and writes ``benchmarks/results/outputs-*.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks import detection, quiet, resultfile
from pipeline import serde
from pipeline.agents.core import Result, Runner, encode_output
from pipeline.agents.devices import device_concern
from pipeline.agents.faust.app import KafkaOutputs
from pipeline.agents.faust.changelog import KafkaBatches
from pipeline.kafkaadmin import delete_topics, ensure_topics, prefixed
from pipeline.settings import Settings, load_settings
from pipeline.siteconfig import SiteConfig
from pipeline.topics import Topics

Way = Callable[[Result], Awaitable[Callable[[], Awaitable[None]]]]


def storm(devices: int, readings: int) -> list[Result]:
    """The results with outputs of the detectors over ``benchmarks.detection``'s readings, record by record."""
    names = [f"dev-{i:06d}" for i in range(devices)]
    items = detection.readings(names, readings)
    runner: Runner[Any, Any] = Runner(
        device_concern(SiteConfig.model_validate(detection.site_doc(names))), None, 4, arrived_ms=lambda: 0
    )
    results = [runner.on_record(value, p) for p, _key, value in detection.record_batches(items, 4)]
    return [r for r in results if r.outputs]


def one_send_a_record(batches: KafkaBatches, topics: Topics) -> Way:
    names = {"alerts": topics.alerts, "annotations": topics.annotations}

    async def send(result: Result) -> Callable[[], Awaitable[None]]:
        acks = []
        for output in result.outputs:
            which, key, _ = encode_output(output)
            value = serde.dumps(output.model_dump(mode="json"))
            acks.append(await batches.send_one(names[which], key, value))

        async def settle() -> None:
            await asyncio.gather(*acks)

        return settle

    return send


async def measure(way: Way, results: list[Result]) -> tuple[float, float]:
    """(CPU s, wall s) to hand every result's outputs over and have Kafka acknowledge them, record by record."""
    c0, t0 = time.process_time(), time.perf_counter()
    settle: Callable[[], Awaitable[None]] | None = None
    for result in results:
        handed = await way(result)
        if settle is not None:
            await settle()
        settle = handed
    if settle is not None:
        await settle()
    return time.process_time() - c0, time.perf_counter() - t0


async def run(settings: Settings, results: list[Result], rounds: int) -> dict[str, Any]:
    topics = Topics(prefix=f"bench{uuid.uuid4().hex[:8]}", partitions=settings.readings_partitions)
    await ensure_topics(settings, topics)
    batches = KafkaBatches(settings)
    await batches.start()
    ways: dict[str, Way] = {
        "a send a record": one_send_a_record(batches, topics),
        "the worker's way": KafkaOutputs(batches, topics).send,
    }
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    try:
        await measure(ways["the worker's way"], results[:20])  # connections and metadata, not measured
        for i in range(rounds):
            for name, way in ways.items() if i % 2 == 0 else reversed(ways.items()):
                figures[name].append(await measure(way, results))
                print(f"  round {i + 1} {name}: {figures[name][-1][0]:.2f} s CPU", flush=True)
    finally:
        await batches.stop()
        await delete_topics(settings, prefixed(topics.prefix))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--readings", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of each way (default 5)")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"detectors over {args.readings:,} readings of {args.devices:,} devices ...", flush=True)
    results = storm(args.devices, args.readings)
    n = sum(len(r.outputs) for r in results)
    print(f"{n:,} outputs in {len(results):,} records; {args.rounds} alternating rounds", flush=True)
    settings = load_settings()
    quiet.require_stack(settings)
    figures = asyncio.run(run(settings, results, args.rounds))
    print()
    print(f"Outputs of {len(results):,} records ({n:,} alerts and annotations), {args.rounds} rounds each:")
    print()
    print("| way | CPU µs an output, best / median / worst | wall µs an output, median |")
    print("|---|---|---|")
    for name, runs in figures.items():
        cpu = sorted(c / n * 1e6 for c, _ in runs)
        wall = sorted(w / n * 1e6 for _, w in runs)
        print(f"| {name} | {cpu[0]:.1f} / {cpu[len(cpu) // 2]:.1f} / {cpu[-1]:.1f} | {wall[len(wall) // 2]:.1f} |")
    path = resultfile.save(
        "outputs",
        {
            "command": "python -m benchmarks.outputs",
            "devices": args.devices,
            "readings": args.readings,
            "records": len(results),
            "outputs": n,
            "rounds": args.rounds,
            "cpu_s_and_wall_s": figures,
            **resultfile.machine(load),
        },
    )
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
