"""The detection stage without Faust: one record batch in, detector calls, outputs and changed states out.

What the runner needs from its surroundings is two small protocols: a :class:`StateStore` (a Faust table, or
a dict) and :class:`Outputs` (Kafka, or a list). The Faust agents (:mod:`pipeline.agents.faust.app`) and the
benchmark's plain aiokafka loop both drive this class, so the only difference between them is where the state
lives (a changelogged Faust table or a dict).

Per subject (a device or a kitchen) the runner keeps the *decoded* state object in a per-partition cache, so
a state is decoded once per assignment, not once per reading; the store (the Faust table) holds
``state_to_bytes`` and is written only for subjects whose state object changed (``new is not old``), once per
record batch however many of the subject's readings the batch carried.

Determinism: every input to a detector comes from the log. ``now_ms`` for an event is
``max(latest tick seen in this partition, the event's own time)``, and timers run only on ``tick`` records
(:class:`pipeline.contracts.models.RecordBatch`), which the live worker itself publishes into its partitions once a
second and replay publishes on the recording's timeline. Re-reading the same records after a crash therefore
gives the same outputs with the same alert ids.
"""

from __future__ import annotations

import base64
import gc
import heapq
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from operator import itemgetter
from time import perf_counter
from typing import Any, Generic, Literal, Protocol, TypeVar

from pipeline import serde
from pipeline.contracts import records
from pipeline.contracts.models import Alert, Annotation, DeadLetter
from pipeline.detectors.base import Output, SubjectDetector
from pipeline.partitioner import partition_for

log = logging.getLogger(__name__)

#: The wake time of a subject whose detector cannot tell when its timers are due: every tick visits it.
NEVER_SKIP = -(2**62)
_UNSET: Any = object()
#: A partition's ticks visit every subject after SWITCH_AFTER ticks in a row with more than VISIT_ALL_ABOVE of
#: its subjects due, and go back to the timer index after SWITCH_AFTER in a row with fewer than INDEX_BELOW of
#: them changed by the visit (measured: `python -m benchmarks.runner`, BENCHMARKS.md).
VISIT_ALL_ABOVE = 0.3
INDEX_BELOW = 0.15
SWITCH_AFTER = 3
#: The timer index files wake times in buckets of 2**WAKE_SHIFT ms (256 ms: a 1 s tick takes whole buckets and
#: looks into at most one that is not all due).
WAKE_SHIFT = 8

#: A subject's cache slot, ``[state, detector, wake, hint, key]``: its decoded state and detector, the timer index's
#: entries for it (``wake``: the state's wake time as of its latest indexing, ``None``: no timer; ``hint``: the
#: earliest time it is filed under in the index's wheel, ``None``: not filed) and its key, one bytes object for
#: every use. One list per subject instead of a dict each for states, detectors, wake times and hints: a reading
#: and its release read and write these together, and on 10,000 devices every separate dict was a cache miss.
STATE, DETECTOR, WAKE, HINT, KEY = range(5)
_by_key = itemgetter(KEY)


def new_slot(state: Any, detector: Any, key: bytes) -> list[Any]:
    """A cache slot (:data:`STATE`) for a subject not in the timer index yet."""
    return [state, detector, None, None, key]


S = TypeVar("S")
E = TypeVar("E")


class StateStore(Protocol):
    """What the runner needs from its store: a Faust table (bytes -> bytes) or a plain dict."""

    def get(self, key: bytes, /) -> bytes | None: ...

    def __setitem__(self, key: bytes, value: bytes, /) -> None: ...


@dataclass(frozen=True)
class Concern(Generic[S, E]):
    """One kind of subject and how its record-batch items become detector calls.

    ``detector_for(subject_id, item)`` returns the detector configured for that subject; ``item`` is
    ``None`` when the subject's state must be decoded or ticked with no event at hand (after a restart), so
    the configuration must be resolvable from the subject id alone (the site configuration).
    ``on_item(detector, state, item, now_ms)`` feeds one RecordBatch item (a plain dict) to the detector:
    the production detectors read the dict directly (no pydantic per reading); a bad item raises and is
    dead-lettered.
    """

    name: str
    #: RecordBatch ``kind`` of the data records on the source topic.
    kind: Literal["readings", "kitchen_events", "rapid_tests"]
    #: Item field holding the subject id (= the Kafka partitioning key).
    key_field: str
    #: Item field holding the event time in ms.
    time_field: str
    on_item: Callable[[Any, S, dict[str, Any], int], tuple[S, list[Output]]]
    detector_for: Callable[[str, dict[str, Any] | None], SubjectDetector[S]]
    #: Where bad items came from, for the dead letter's ``source``.
    origin: Literal["mqtt", "hook"]
    #: Item field naming the producer of the item (device or camera id) for dead letters.
    origin_field: str
    #: A second kind of record the source topic carries (kitchen verdicts, written by the console), fed to
    #: ``on_side_item`` on arrival at the partition's clock: it never moves event time (a verdict is wall-clock).
    side_kind: records.BatchKind | None = None
    on_side_item: Callable[[Any, S, dict[str, Any], int], tuple[S, list[Output]]] | None = None
    #: The detectors' ``state_to_bytes`` when it does not depend on the subject (the devices'): a flush then
    #: encodes without looking up each state's detector (a cache miss a state on 10,000 devices).
    state_to_bytes: Callable[[S], bytes] | None = None


def counter(meaning: str) -> int:
    """A counter field, starting at 0, with what it counts: the help text of its Prometheus metric (the stats
    of the detection worker and of the grading worker, :mod:`pipeline.grading.app`)."""
    return field(default=0, metadata={"help": meaning})


def seconds(meaning: str) -> float:
    """A time counter, starting at 0 s, with what it times (its Prometheus help)."""
    return field(default=0.0, metadata={"help": meaning})


@dataclass
class Stats:
    """Counters the worker exports (Prometheus: ``larder_worker_<name>`` per concern, each field's help) and the
    tests read.

    The ``busy_*`` counters split the worker's time between the detection stage's own work and what running it
    durably costs, so an operator (and ``benchmarks.detection``) can tell which one a busy worker spends its time
    on. They time synchronous code once per record or batch by the runner's ``busy_clock``: wall time by default
    (``perf_counter``, ~80 ns a read; it includes the consumer thread's turns with the interpreter), or the main
    thread's CPU time (``larder worker --busy-clock cpu``: exact, but a system call of ~0.6 µs a read here, too
    much for every one-reading record in production). What they leave out of the process's CPU is Faust's, the
    consumer thread's and the event loop's."""

    records: int = counter("Kafka records (record batches) consumed")
    items: int = counter("readings / camera events processed")
    ticks: int = counter("tick records processed (timers run)")
    duplicates: int = counter("items that were exact duplicates (device, seq) / (camera, event_id)")
    alerts: int = counter("alert lifecycle events produced")
    annotations: int = counter("annotations produced")
    table_writes: int = counter("state table writes (changelog records)")
    dead_letters: int = counter("records or items refused to the dead-letter topic")
    busy_detect_seconds: float = seconds(
        "time in the detection stage itself: record decoding, dispatch, detectors and timers (Runner.on_record)"
    )
    busy_encode_seconds: float = seconds("time encoding changed states for the table (Runner.take)")
    busy_store_seconds: float = seconds(
        "time writing encoded states to the local store and appending them to changelog batches (not waiting for Kafka)"
    )
    busy_outputs_seconds: float = seconds(
        "time encoding alerts, annotations and dead letters and appending them to Kafka batches (not waiting for Kafka)"
    )


#: The parts the ``busy_<part>_seconds`` counters of :class:`Stats` time, in their order there (read by the
#: benchmarks that split the worker's time).
BUSY_PARTS = tuple(
    f.name.removeprefix("busy_").removesuffix("_seconds") for f in fields(Stats) if f.name.startswith("busy_")
)


@dataclass
class _Timers:
    """One partition's timer index. Each subject's slot holds its ``hint``, no later than its true wake time
    (``detector.wake_ms``), and ``wheel`` files the slot under the hint's bucket (``wake >> WAKE_SHIFT``;
    ``buckets``: a heap of the wheel's buckets); a slot whose hint moved to another bucket stays in the old one
    (``entries`` counts them all) and is skipped there. The slot's ``wake`` holds the wake time as of its latest
    indexed state (``None``: no timer); a state changed by a reading or a tick's visit is re-indexed at once;
    ``touched`` holds the keys to index at the next tick besides (new in the cache, loaded, a visit that failed).
    ``visit_all``: the partition's ticks visit every subject and no index is kept; ``streak``: ticks in a row that
    argue for switching.

    Why buckets and not a heap of (wake, key): live traffic puts a subject's release (a tick away) in front of
    thousands of silence deadlines (minutes away), so every push and pop of a heap sifted through its whole
    depth, ~1 µs a reading (BENCHMARKS.md, issue 24); a bucket costs an append and a dict lookup."""

    wheel: dict[int, list[list[Any]]] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=list)
    entries: int = 0
    touched: set[bytes] = field(default_factory=set)
    visit_all: bool = False
    streak: int = 0


@dataclass
class Result:
    outputs: list[Output] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


#: Table keys of the partitions' clocks: no subject id starts with a NUL byte.
CLOCK_PREFIX = b"\x00clock/"


def clock_key(partition: int) -> bytes:
    """The table key of ``partition``'s clock (the latest tick time its records carried), written with the
    partition's states at each flush and read back by :meth:`Runner.load`.

    Items are processed at ``max(partition clock, item time)``, and whether a store-and-forward reading is late
    depends on it. A worker that took a partition over used to start its clock at 0 and process the records
    before the next tick at their own times: a store-and-forward upload read then resolved an offline alert
    5 min earlier than in one uninterrupted run (tests/unit/test_agents.py). The clock is written with the
    states it goes with, so a takeover resumes where the flushed states and the committed offset left off. One
    key per partition (the memory store is one dict for all partitions)."""
    return CLOCK_PREFIX + b"%d" % partition


class Runner(Generic[S, E]):
    """Detector dispatch plus a decoded-state cache for the subjects of the partitions this worker owns."""

    def __init__(
        self,
        concern: Concern[S, E],
        store: StateStore | None,
        partitions: int,
        *,
        arrived_ms: Callable[[], int],
        busy_clock: Callable[[], float] = perf_counter,
    ):
        """``store=None`` keeps states only in memory (benchmarks' Python ceiling, no durability); ``busy_clock``
        times the ``busy_*`` stats (wall time by default; ``time.thread_time`` for exact CPU, at a system call a
        read)."""
        self.concern = concern
        self.busy_clock = busy_clock
        self.store = store
        self.partitions = partitions
        self.stats = Stats()
        self._arrived_ms = arrived_ms
        #: partition -> subject key -> its slot (``[state, detector, wake, hint, key]``, see :data:`STATE`).
        self._cache: dict[int, dict[bytes, list[Any]]] = {}
        #: partitions whose stored states were all decoded by :meth:`load`: a cache miss there is a new subject.
        self._loaded: set[int] = set()
        self._detectors: dict[bytes, SubjectDetector[S]] = {}
        #: partition -> latest tick time seen (the log's clock for that partition).
        self._clock: dict[int, int] = {}
        #: partition -> the clock as last handed to the store by :meth:`take` (see :func:`clock_key`).
        self._clock_taken: dict[int, int] = {}
        #: partition -> states changed since that partition's last :meth:`flush`.
        self._dirty: dict[int, dict[bytes, S]] = {}
        #: partition -> its timer index (:class:`_Timers`), so a tick visits the subjects whose timers are due
        self._timers: dict[int, _Timers] = {}
        #: detector class -> its ``wake_ms`` (``None``: it has none, every tick visits its subjects).
        self._wake_fns: dict[type, Any] = {}

    # -- partition ownership ---------------------------------------------------------------------------------

    def loaded(self, partition: int) -> bool:
        return partition in self._loaded

    def load(self, items: Iterable[tuple[bytes, bytes]], partitions: Iterable[int]) -> int:
        """Decode every stored state of ``partitions`` (after an assignment), so timers see offline subjects."""
        wanted = {p: self._cache.setdefault(p, {}) for p in partitions}
        self._loaded.update(wanted)
        n = 0
        for key, value in items:
            if key.startswith(CLOCK_PREFIX):
                p = int(key[len(CLOCK_PREFIX) :])
                if p in wanted and value is not None:
                    clock = self._clock_taken[p] = int(value)
                    if clock > self._clock.get(p, 0):
                        self._clock[p] = clock
                continue
            p = partition_for(key.decode(), self.partitions)
            target = wanted.get(p)
            if target is None or key in target or value is None:
                continue
            try:
                detector = self._detector(key, None)
                target[key] = new_slot(detector.state_from_bytes(value), detector, key)
            except Exception as exc:  # e.g. a device removed from the site file: keep its state, don't tick it
                log.warning("%s: not loading the state of %s: %s", self.concern.name, key.decode(), exc)
                continue
            self._timers_of(p).touched.add(key)
            n += 1
        return n

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop partitions this worker no longer owns; their new owner restores them from the changelog."""
        for p in partitions:
            for key in self._cache.pop(p, {}):
                self._detectors.pop(key, None)
            self._clock.pop(p, None)
            self._clock_taken.pop(p, None)
            self._loaded.discard(p)
            self._dirty.pop(p, None)
            self._timers.pop(p, None)

    def held_partitions(self) -> set[int]:
        """Partitions this runner holds anything of (states, clock, loaded flag)."""
        # ``_clock_taken`` needs no place here: it is set only where ``_clock`` is.
        return set(self._cache) | self._loaded | set(self._clock) | set(self._dirty)

    def subjects(self) -> int:
        return sum(len(c) for c in self._cache.values())

    # -- processing ------------------------------------------------------------------------------------------

    def on_record(self, value: bytes | None, partition: int) -> Result:
        """Process one Kafka record of the source topic (a RecordBatch). Never raises on bad input."""
        start = self.busy_clock()
        try:
            return self._on_record(value, partition)
        finally:
            self.stats.busy_detect_seconds += self.busy_clock() - start

    def _on_record(self, value: bytes | None, partition: int) -> Result:
        self.stats.records += 1
        result = Result()
        if value is None:  # a tombstone (a null value): other producers may write one to the topic
            result.dead_letters.append(self._dead(b"", "worker.bad_record", "a record without a value", None))
            return result
        concern = self.concern
        try:
            batch = records.read_batch(value, concern.kind, concern.side_kind)
        except records.BadRecord as exc:
            result.dead_letters.append(self._dead(value, exc.code, str(exc), None))
            return result
        if batch.kind == "tick":
            self.tick(partition, batch.now_ms, result)
            return result
        if batch.kind == concern.kind:
            self._on_items(batch.items, partition, result, concern.on_item, concern.time_field)
        elif concern.on_side_item is not None:
            self._on_items(batch.items, partition, result, concern.on_side_item, None)
        return result

    def _on_items(
        self,
        items: list[Any],
        partition: int,
        result: Result,
        on_item: Callable[[Any, S, dict[str, Any], int], tuple[S, list[Output]]],
        time_field: str | None,
    ) -> None:
        """Feed ``items`` to their subjects' detectors at ``max(partition clock, item time)``, or at the
        partition clock for side items (``time_field=None``)."""
        concern = self.concern
        cache = self._cache.setdefault(partition, {})
        dirty = self._dirty.setdefault(partition, {})
        timers = self._timers_of(partition)
        touched = timers.touched
        # A changed subject is re-indexed here, while its new state is still in the CPU's caches: at the next
        # tick, thousands of subjects later, each wake time was a cache miss (measured on 10,000 devices: the
        # index took 6.7 µs a reading that way, 1.1 µs this way; BENCHMARKS.md, issue 24). Visiting every
        # subject, no index is kept.
        indexed = not timers.visit_all
        outputs = result.outputs
        clock = self._clock.get(partition, 0)
        duplicates = 0
        key_field, n = concern.key_field, self.partitions
        for item in items:
            try:
                subject = item[key_field]
                key = subject.encode()
                slot = cache.get(key)
                if slot is None:
                    # Checked once per subject: only a subject of this partition ever enters its cache (here
                    # or by :meth:`load`, which files states by their key's partition).
                    if partition_for(subject, n) != partition:
                        # Its state would be restored to another worker after a rebalance: refuse, don't corrupt.
                        raise ValueError(f"{key_field} {subject!r} does not belong to partition {partition}")
                    slot = cache[key] = new_slot(self._state(key, item, partition), self._detector(key, item), key)
                    touched.add(key)
                else:
                    key = slot[KEY]  # the cache's own key object: the dicts below then match it by identity
                state = slot[STATE]
                detector = slot[DETECTOR]
                if time_field is None:
                    new, outs = on_item(detector, state, item, clock)
                else:
                    t = item[time_field]
                    new, outs = on_item(detector, state, item, t if t > clock else clock)
            except Exception as exc:  # a bad item, or a detector bug on it: dead-letter it, keep going
                log.warning("%s: dead-lettering an item: %s", concern.name, exc)
                result.dead_letters.append(self._dead(serde.dumps(item), "worker.bad_item", repr(exc), item))
                continue
            if new is not state:
                slot[STATE] = new
                dirty[key] = new
                if indexed:
                    self._index(slot, timers)
            elif not outs and time_field is not None:
                # The detectors' contract: a (device, seq) / (camera, event_id) duplicate returns the very same
                # state and no outputs (anything else at least moves the de-dup window or a buffer).
                duplicates += 1
            if outs:
                outputs.extend(outs)
        self.stats.items += len(items)
        self.stats.duplicates += duplicates
        self._count(outputs)

    def tick(self, partition: int, now_ms: int, result: Result | None = None) -> Result:
        """Run the timers of ``partition``'s subjects at ``now_ms``, in subject order (deterministic).

        Only subjects whose wake time has come need a visit: for any other, ``on_tick`` returns the same state
        and no outputs (the detectors' ``wake_ms`` contract), so the outputs are those of visiting all. Which
        way is cheaper depends on the traffic, so each partition picks (see :meth:`_adapt`).
        """
        result = result or Result()
        self.stats.ticks += 1
        if now_ms > self._clock.get(partition, 0):
            self._clock[partition] = now_ms
        cache = self._cache.setdefault(partition, {})
        timers = self._timers_of(partition)
        visit_all = timers.visit_all
        slots = sorted(cache.values() if visit_all else self._due(timers, cache, now_ms), key=_by_key)
        # Visiting all, nothing is re-indexed: a throwaway set instead of the index's.
        touched = set() if visit_all else timers.touched
        dirty = self._dirty.setdefault(partition, {})
        outputs = result.outputs
        changed = 0
        for slot in slots:
            state = slot[STATE]
            try:
                new, outs = slot[DETECTOR].on_tick(state, now_ms)
            except Exception as exc:
                key = slot[KEY]
                log.exception("%s: on_tick failed for %s", self.concern.name, key.decode())
                result.dead_letters.append(
                    self._dead(key, "worker.tick_error", repr(exc), {self.concern.key_field: key.decode()})
                )
                touched.add(key)  # still due: visited again next tick, as when visiting every subject
                continue
            if new is not state:
                changed += 1
                slot[STATE] = new
                dirty[slot[KEY]] = new
            if not visit_all:
                # Re-indexed now, while the state is in the CPU's caches. A subject still due (no progress) pops
                # at the next tick and is visited again, as before.
                self._index(slot, timers)
            if outs:
                outputs.extend(outs)
        if visit_all:
            timers.touched.clear()  # no index to maintain
        self._adapt(partition, cache, changed if visit_all else len(slots))
        self._count(result.outputs)
        return result

    def _timers_of(self, partition: int) -> _Timers:
        timers = self._timers.get(partition)
        if timers is None:
            timers = self._timers[partition] = _Timers()
        return timers

    def _adapt(self, partition: int, cache: dict[bytes, list[Any]], busy: int) -> None:
        """Switch a partition between the timer index and visiting every subject, by how many subjects a tick
        had work for. The index costs ~5 µs more per visit than a plain visit (buckets, wake times), and a plain
        visit of an idle subject ~2 µs: with most subjects busy at every tick (a reading per device between
        two ticks) visiting all is cheaper; with few (readings every 10-60 s, 1 s ticks; uploads) the index
        is, by far. A few ticks in a row decide, so a burst does not flip it back and forth."""
        timers = self._timers[partition]
        busy_ratio = busy / len(cache) if cache else 0.0
        if timers.visit_all:
            timers.streak = timers.streak + 1 if busy_ratio < INDEX_BELOW else 0
            if timers.streak >= SWITCH_AFTER:
                # Rebuilt from every state: the wake times are exact again.
                timers = self._timers[partition] = _Timers()
                for slot in cache.values():
                    slot[HINT] = None  # filed in no wheel now
                    self._index(slot, timers)
        else:
            timers.streak = timers.streak + 1 if busy_ratio > VISIT_ALL_ABOVE else 0
            if timers.streak >= SWITCH_AFTER:
                self._timers[partition] = _Timers(visit_all=True)  # no index kept

    def _due(self, timers: _Timers, cache: dict[bytes, list[Any]], now_ms: int) -> list[list[Any]]:
        """Take the slots of the subjects whose wake time is ``<= now_ms`` out of the partition's timer index."""
        wheel, buckets = timers.wheel, timers.buckets
        touched, timers.touched = timers.touched, set()
        # Subjects changed outside the item and tick loops (new in the cache, loaded, a failed visit): indexed here.
        for key in touched:
            slot = cache.get(key)
            if slot is not None:
                self._index(slot, timers)
        due: list[list[Any]] = []
        last = now_ms >> WAKE_SHIFT
        while buckets and buckets[0] <= last:
            bucket = heapq.heappop(buckets)
            slots = wheel.pop(bucket)
            timers.entries -= len(slots)
            for slot in slots:
                wake = slot[HINT]
                if wake is None or wake >> WAKE_SHIFT != bucket:
                    continue  # superseded by an earlier hint (in another bucket), or taken already
                if wake > now_ms:  # the last bucket is not all due: kept for a later tick
                    self._file(timers, slot, wake)
                    continue
                slot[HINT] = None
                # Every changed state was re-indexed above, so ``WAKE`` holds its wake time now; the hint may be
                # earlier (the state moved on since it was filed): only a wake time that has come is due.
                true_wake = slot[WAKE]
                if true_wake is None:
                    continue
                if true_wake <= now_ms:
                    due.append(slot)
                else:
                    self._file(timers, slot, true_wake)
            if bucket == last:
                break  # what the last bucket kept went back into it: not due before the next tick
        # Many superseded entries: rebuilt from the live hints. At most ~2 entries a subject: live traffic leaves
        # one stale entry per reading (at 4 a subject, in the (wake, key) heap this replaced, the Python heap per
        # device passed 2 KB).
        if timers.entries > 2 * len(cache) + 64:
            wheel.clear()
            buckets.clear()
            timers.entries = 0
            for slot in cache.values():
                wake = slot[HINT]
                if wake is not None:
                    self._file(timers, slot, wake)
        return due

    @staticmethod
    def _file(timers: _Timers, slot: list[Any], wake: int) -> None:
        """File ``slot`` under ``wake`` as its hint."""
        slot[HINT] = wake
        bucket = wake >> WAKE_SHIFT
        slots = timers.wheel.get(bucket)
        if slots is None:
            timers.wheel[bucket] = [slot]
            heapq.heappush(timers.buckets, bucket)
        else:
            slots.append(slot)
        timers.entries += 1

    def _index(self, slot: list[Any], timers: _Timers) -> None:
        detector = slot[DETECTOR]
        kind = type(detector)
        wake_ms = self._wake_fns.get(kind, _UNSET)
        if wake_ms is _UNSET:
            # A detector without a wake time is visited on every tick (always due).
            wake_ms = self._wake_fns[kind] = getattr(kind, "wake_ms", None)
        wake = slot[WAKE] = NEVER_SKIP if wake_ms is None else wake_ms(detector, slot[STATE])
        if wake is None:
            return  # no timer: an earlier hint, if any, is taken and finds nothing to do
        old = slot[HINT]
        if old is None or wake < old:
            self._file(timers, slot, wake)

    def flush(self, partition: int | None = None, keys: Iterable[bytes] | None = None) -> int:
        """Write changed states to the store: of one partition (all when ``None``), only ``keys`` if given (and a
        whole partition's clock, :func:`clock_key`); returns how many states were written.

        Call it after the outputs of the records that changed them are durable (see :mod:`pipeline.agents.faust.app`
        for when the agent does). With no store (the benchmark's ceiling) the states are only marked clean.
        """
        n = 0
        store = self.store
        for p in [partition] if partition is not None else list(self._dirty):
            if store is None:
                dirty = self._dirty.get(p, {})
                chosen = list(dirty) if keys is None else [k for k in keys if k in dirty]
                for key in chosen:
                    del dirty[key]
                n += len(chosen)
                continue
            for key, value in self.take(p, keys):
                store[key] = value
                n += not key.startswith(CLOCK_PREFIX)
        return n

    def take(self, partition: int, keys: Iterable[bytes] | None = None) -> list[tuple[bytes, bytes]]:
        """Remove the partition's changed states (only ``keys`` if given) and return them encoded for the store;
        the caller writes them (the worker in bulk, :mod:`pipeline.agents.faust.changelog`). The whole partition's
        take also carries its clock when it moved (:func:`clock_key`)."""
        dirty = self._dirty.get(partition)
        clock = self._clock.get(partition)
        stamp: list[tuple[bytes, bytes]] = []
        if keys is None and clock is not None and clock != self._clock_taken.get(partition):
            self._clock_taken[partition] = clock
            stamp.append((clock_key(partition), b"%d" % clock))
        if not dirty:
            return stamp
        start = self.busy_clock()
        # The whole partition (the worker's flush at a commit): no per-key pops.
        states = dirty.items() if keys is None else [(k, dirty.pop(k)) for k in keys if k in dirty]
        encode = self.concern.state_to_bytes
        if encode is None:
            detectors = self._detectors
            out = [(key, (detectors.get(key) or self._detector(key, None)).state_to_bytes(s)) for key, s in states]
        else:
            out = [(key, encode(s)) for key, s in states]
        if keys is None:
            dirty.clear()
        self.stats.table_writes += len(out)
        self.stats.busy_encode_seconds += self.busy_clock() - start
        out.extend(stamp)
        return out

    def dirty(self, partition: int) -> int:
        return len(self._dirty.get(partition, ()))

    def states(self, partition: int) -> Iterator[tuple[bytes, S]]:
        return iter(sorted((key, slot[STATE]) for key, slot in self._cache.get(partition, {}).items()))

    # -- helpers ---------------------------------------------------------------------------------------------

    def _count(self, outputs: list[Output]) -> None:
        # Counted per call on the whole list: cheap, and the list is usually empty.
        if not outputs:
            return
        for o in outputs:
            if isinstance(o, Alert):
                self.stats.alerts += 1
            elif isinstance(o, Annotation):
                self.stats.annotations += 1
                if o.kind == "duplicate":
                    self.stats.duplicates += 1

    def _detector(self, key: bytes, item: dict[str, Any] | None) -> SubjectDetector[S]:
        detector = self._detectors.get(key)
        if detector is None:
            detector = self._detectors[key] = self.concern.detector_for(key.decode(), item)
        return detector

    def _state(self, key: bytes, item: dict[str, Any], partition: int) -> S:
        detector = self._detector(key, item)
        # Looked up even in a loaded partition: a subject missing from the cache costs one table read, and the
        # state the table has is never replaced by a fresh one because the load snapshot lacked it.
        stored = None if self.store is None else self.store.get(key)
        return detector.initial() if stored is None else detector.state_from_bytes(stored)

    def _dead(self, payload: bytes, code: str, reason: str, item: Any) -> DeadLetter:
        self.stats.dead_letters += 1
        origin = item.get(self.concern.origin_field) if isinstance(item, dict) else None
        return DeadLetter(
            source=self.concern.origin,
            reason_code=code,
            reason=f"{self.concern.name}: {reason}"[:2000],
            arrived_ms=self._arrived_ms(),
            device=origin if self.concern.origin == "mqtt" and isinstance(origin, str) else None,
            camera=origin if self.concern.origin_field == "camera" and isinstance(origin, str) else None,
            instrument=origin if self.concern.origin_field == "instrument" and isinstance(origin, str) else None,
            payload_b64=base64.b64encode(payload).decode(),
        )


def settle_gc() -> None:
    """The live worker's collector settings (``larder worker``, and the benchmarks that measure its path).

    Start-up objects (Faust, the site file, the rule sets) live for the whole run: keep them out of the
    collector's generations, and collect the young one less often. Detectors allocate short-lived objects
    per reading; at the default threshold of 700 the full-heap passes cost ~15% of the worker's throughput."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


#: Returns once what :meth:`Outputs.send` handed over is durable (resending until it is).
Settled = Callable[[], Awaitable[None]]


class Outputs(Protocol):
    """Where a record's outputs and dead letters go. ``send`` hands them over now, in call order, and returns
    a :data:`Settled` to await later: the Faust adapter (:class:`~pipeline.agents.faust.app.KafkaOutputs`)
    processes the next record while Kafka acknowledges this one's."""

    async def send(self, result: Result) -> Settled: ...


async def settled() -> None:
    """A :data:`Settled` for nothing outstanding."""


@dataclass
class ListOutputs:
    """Collects outputs in memory (unit tests, and the agents under ``agent.test_context()``)."""

    results: list[Result] = field(default_factory=list)

    async def send(self, result: Result) -> Settled:
        self.results.append(result)
        return settled


def encode_output(output: Output) -> tuple[str, bytes, bytes]:
    """``(which topic, key, value)`` of an output record: alerts and annotations keyed by site, JSON values."""
    which = "alerts" if isinstance(output, Alert) else "annotations"
    return which, output.site.encode(), records.encode(output)
