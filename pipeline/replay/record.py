"""`larder record`: capture what arrives into a contract-3 replay file.

* Device messages: a plain (non-shared) MQTT subscription to ``larder/v1/devices/+/readings`` as the bridge
  user, so the recorder sees every publish exactly as the device sent it (payload bytes, store-and-forward
  batches intact) without taking messages away from the bridges' shared subscription. ``at`` = arrival.
* Camera events: the hook is an HTTP endpoint, so there is nothing to subscribe to; the recorder reads what
  the hook accepted from the kitchen-events topic (and what it refused from the dead-letter topic) and writes
  each request back as its contract-2 body. ``at`` = when the hook received it (``received_ms``).
* Rapid-test results (contract 6): likewise read from the rapid-tests topic (whether the instrument posted them
  to the hook or published them over MQTT) and written back as one contract-6 body per request, a
  ``rapid_test`` line; refused ones from the dead-letter topic. ``at`` = ``received_ms``.

Lines are written in ``at`` order through a short reorder buffer (the two sources arrive with different
latencies). Start the recorder before the traffic you want to capture.
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt

from pipeline import serde
from pipeline.contracts import records
from pipeline.contracts.models import ms_to_iso
from pipeline.contracts.replay import Line, LineKind
from pipeline.settings import Settings
from pipeline.topics import Topics

REORDER_MS = 3000

#: The bridge-instance login `larder record` reads the devices' readings with (pipeline.stack.logins).
RECORDER_INSTANCE = "recorder"
#: This many connection drops within the window mean another recorder holds the login (:meth:`Recorder._taken_over`).
TAKEOVER_DROPS = 3
TAKEOVER_WINDOW_S = 10.0


@dataclass
class RecordStats:
    mqtt: int = 0
    hooks: int = 0
    rapid_tests: int = 0
    lines: int = 0
    first_ms: int | None = None
    last_ms: int | None = None


def event_body(item: dict[str, Any]) -> dict[str, Any]:
    """A stored kitchen event back in its contract-2 form."""
    body: dict[str, Any] = {"event_id": item["event_id"], "ts": ms_to_iso(item["ts_ms"]), "type": item["type"]}
    for k in ("zone", "confidence", "count", "image_url"):
        if item.get(k) is not None:
            body[k] = item[k]
    return body


#: What the hook adds to a result from the registry and the request; not part of the instrument's body.
_ENRICHED = frozenset({"instrument", "instrument_type", "site", "ts_ms", "received_ms"})


def rapid_test_body(item: dict[str, Any]) -> dict[str, Any]:
    """A stored rapid-test item back in its contract-6 form (``tested_at`` as RFC 3339 UTC)."""
    body = {k: v for k, v in item.items() if k not in _ENRICHED}
    body["tested_at"] = ms_to_iso(item["ts_ms"])
    return body


def request_bodies(
    items: Iterable[dict[str, Any]], source_field: str, body_of: Callable[[dict[str, Any]], Any], many: str
) -> list[tuple[str, int, Any]]:
    """``(source, received_ms, body)``: the items of a record batch grouped back into the requests they came in
    (same sender, same arrival), each body as it was sent: one element alone, several as ``{many: [...]}``."""
    by_request: dict[tuple[str, int], list[Any]] = {}
    for it in items:
        by_request.setdefault((it[source_field], it["received_ms"]), []).append(body_of(it))
    return [(source, at, bs[0] if len(bs) == 1 else {many: bs}) for (source, at), bs in by_request.items()]


class Recorder:
    def __init__(self, settings: Settings, topics: Topics, out: IO[bytes]) -> None:
        self.settings = settings
        self.topics = topics
        self.out = out
        self.stats = RecordStats()
        self._heap: list[tuple[int, int, Line]] = []
        self._n = 0
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._error: str | None = None
        #: When the broker closed the connection (paho reconnects): see :meth:`_on_disconnect`.
        self._drops: list[float] = []

    # -- collecting -------------------------------------------------------------------------------------------

    def _push(self, line: Line) -> None:
        with self._lock:
            self._n += 1
            heapq.heappush(self._heap, (line.at_ms, self._n, line))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time_ns() // 1_000_000
        parts = msg.topic.split("/")
        device = parts[3] if len(parts) == 5 else ""
        try:
            payload: Any = serde.loads(msg.payload)
        except Exception:
            # Not JSON: keep it as a string so a replay sends the same bad message to the dead-letter path.
            payload = bytes(msg.payload).decode("utf-8", "replace")
        self.stats.mqtt += 1
        self._push(Line(now, "mqtt", device, payload))

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if rc.is_failure:
            self._error = f"MQTT refused the recorder: {rc}"
        else:
            client.subscribe("larder/v1/devices/+/readings", qos=1)
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self._drops.append(time.monotonic())

    def _taken_over(self) -> bool:
        """The broker allows one connection per login: a second recorder (or a stale one left running) makes the
        two close each other's connection in a loop, and neither records what arrives meanwhile. One drop is
        a broker restart (paho reconnects); several within seconds are that fight."""
        now = time.monotonic()
        self._drops = [t for t in self._drops if now - t < TAKEOVER_WINDOW_S]
        return len(self._drops) >= TAKEOVER_DROPS

    def _on_kitchen(self, value: bytes) -> None:
        items = records.batch_items(value, "kitchen_events")
        for camera, at, body in request_bodies(items, "camera", event_body, "events"):
            self.stats.hooks += 1
            self._push(Line(at, "hook", camera, body))

    def _on_rapid(self, value: bytes) -> None:
        items = records.batch_items(value, "rapid_tests")
        for instrument, at, body in request_bodies(items, "instrument", rapid_test_body, "results"):
            self.stats.rapid_tests += 1
            self._push(Line(at, "rapid_test", instrument, body))

    def _on_dead(self, value: bytes) -> None:
        dl = serde.loads(value)
        if dl.get("index") is not None:
            return  # one refused element of a batch: the accepted rest is recorded from its topic
        kind: LineKind
        if dl.get("source") == "hook" and dl.get("camera"):
            kind, source = "hook", dl["camera"]
        elif dl.get("instrument"):
            kind, source = "rapid_test", dl["instrument"]  # posted to the hook, or published over MQTT
        else:
            return
        raw = records.dead_letter_payload(dl)
        try:
            body: Any = serde.loads(raw)
        except Exception:
            body = raw.decode("utf-8", "replace")
        if kind == "hook":
            self.stats.hooks += 1
        else:
            self.stats.rapid_tests += 1
        self._push(Line(dl["arrived_ms"], kind, source, body))

    def _dispatch(self, topic: str, value: bytes) -> None:
        if topic == self.topics.kitchen_events:
            self._on_kitchen(value)
        elif topic == self.topics.rapid_tests:
            self._on_rapid(value)
        else:
            self._on_dead(value)

    # -- writing ----------------------------------------------------------------------------------------------

    def flush(self, upto_ms: int | None) -> None:
        with self._lock:
            while self._heap and (upto_ms is None or self._heap[0][0] <= upto_ms):
                _, _, line = heapq.heappop(self._heap)
                self.out.write(line.dumps() + b"\n")
                self.stats.lines += 1
                self.stats.first_ms = self.stats.first_ms if self.stats.first_ms is not None else line.at_ms
                self.stats.last_ms = line.at_ms
        self.out.flush()

    async def run(
        self,
        stop: asyncio.Event,
        *,
        ready: Callable[[], None] | None = None,
        on_progress: Callable[[RecordStats], None] | None = None,
    ) -> RecordStats:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        m = self.settings.mqtt
        # A reader login of its own (registered by `larder record`): the broker binds client ids to logins, so
        # sharing a bridge instance's login would close that bridge's connection.
        user, password = m.bridge_login(RECORDER_INSTANCE)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, clean_session=True)
        client.username_pw_set(user, password)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka.bootstrap_servers, enable_auto_commit=False)
        await consumer.start()
        try:
            # Larder creates its topics with known partition counts; a fresh aiokafka consumer's
            # partitions_for_topic() is None until it has metadata, which made the recorder capture no events.
            wanted = (self.topics.kitchen_events, self.topics.rapid_tests, self.topics.deadletter)
            parts = [
                TopicPartition(spec.name, p)
                for spec in self.topics.specs()
                if spec.name in wanted
                for p in range(spec.partitions)
            ]
            if parts:
                consumer.assign(parts)
                await consumer.seek_to_end(*parts)
                for tp in parts:
                    await consumer.position(tp)
            client.connect(m.host, m.port, keepalive=30)
            client.loop_start()
            await asyncio.get_running_loop().run_in_executor(None, self._connected.wait, 10)
            if self._error or not self._connected.is_set():
                raise RuntimeError(self._error or f"cannot reach the MQTT broker at {m.host}:{m.port}")
            await asyncio.sleep(0.2)  # let the SUBACK land before saying we are recording
            if ready:
                ready()
            while not stop.is_set():
                if self._taken_over():
                    raise RuntimeError(
                        f"the MQTT broker closed the recorder's connection {TAKEOVER_DROPS} times in "
                        f"{TAKEOVER_WINDOW_S:.0f} s: another `larder record` is using the same login (one connection "
                        "per login); stop it and record again (device messages were missed meanwhile)"
                    )
                if parts:
                    batch = await consumer.getmany(timeout_ms=200)
                    for tp, recs in batch.items():
                        for r in recs:
                            if r.value is None:
                                continue
                            self._dispatch(tp.topic, r.value)
                else:
                    await asyncio.sleep(0.2)
                self.flush(time.time_ns() // 1_000_000 - REORDER_MS)
                if on_progress:
                    on_progress(self.stats)
            # Drain what the hooks accepted just before the stop.
            if parts:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, recs in batch.items():
                    for r in recs:
                        if r.value is not None:
                            self._dispatch(tp.topic, r.value)
        finally:
            client.disconnect()
            client.loop_stop()
            await consumer.stop()
        self.flush(None)
        return self.stats


async def record(
    settings: Settings,
    topics: Topics,
    path: Path,
    stop: asyncio.Event,
    *,
    end_line: bool = True,
    ready: Callable[[], None] | None = None,
    on_progress: Callable[[RecordStats], None] | None = None,
) -> RecordStats:
    """Record into ``path`` until ``stop`` is set; finish with an ``end`` line at the stop time."""
    with path.open("wb") as out:
        rec = Recorder(settings, topics, out)
        stats = await rec.run(stop, ready=ready, on_progress=on_progress)
        if end_line:
            out.write(Line(time.time_ns() // 1_000_000, "end").dumps() + b"\n")
            stats.lines += 1
    return stats
