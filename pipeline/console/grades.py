"""Risk grades and the regulator's rollups in the console (issue 22), computed off the request path.

Why precomputed: a rollup over 10,000 sites grades every site (~1.5 ms each), ~15 s of CPU: no page can wait for
that. The :class:`GradingBoard` reads the grading worker's states (its table's changelog, as ``larder grade``
does) every ``refresh_s``, grades every site once as of that instant and rolls those grades up per station and per
district for a day, a week and a month, in a worker thread. Pages and the JSON / CSV API answer from that
:class:`Snapshot` and say as of when. A station sees its stations' rows and sites, a district its district and
its stations, an admin everything; site managers and operators see their sites' grades and no rollup.

Why the board handles Python's cyclic garbage collector: at 10,000 sites a refresh decodes ~2.5 million tracked
objects (the sites' evidence) and the snapshot keeps ~1 million (grades, explanations, rollups). Pages allocate
enough that the collector's full pass came every 10-20 s, walked the whole heap (2.5-7 s at load 4.5, freeing
nothing) and stalled every request meanwhile: the admin page's p95 of 2.2 s on a quiet machine (issue 22). So a
refresh holds the collector off while it reads and computes, drops the evidence once graded, then collects the
objects not frozen yet (mostly the new snapshot: ~0.6 s for ~0.7 million at load 2) and freezes what is left
(:func:`gc.freeze`), so later passes walk only the young objects. The previous snapshot, frozen, is freed by
reference counting when replaced (it holds no cycles). Every ``full_collect_every``-th refresh (the first
included) unfreezes everything first, so cyclic garbage that had been frozen (whatever was in flight at a freeze)
is collected too: a full pass over the site file and the snapshot, ~1.9 s at load 2 (4.7 s at load 3) at 10,000
sites, once an hour by default instead of every 10-20 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gc
import io
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pipeline.clock import Clock
from pipeline.console import users
from pipeline.grading import rollup, store
from pipeline.grading.evidence import SiteEvidence
from pipeline.grading.score import DEFAULT_WEIGHTS, SiteGrade, Weights
from pipeline.grading.topics import GradingTopics
from pipeline.settings import Settings
from pipeline.siteconfig import SiteConfig
from pipeline.topics import Topics

log = logging.getLogger("larder.console.grades")

T = TypeVar("T")
LEVELS: tuple[rollup.Level, ...] = ("station", "district")
PERIODS: tuple[rollup.Period, ...] = ("day", "week", "month")


@dataclass(frozen=True)
class Snapshot:
    """Every site's grade and every rollup as of one instant."""

    as_of_ms: int
    grades: dict[str, SiteGrade]
    #: (level, period) -> one dict per station / district (:func:`pipeline.grading.rollup.rollup`)
    rollups: dict[tuple[str, str], list[dict[str, Any]]]
    #: CPU seconds the snapshot took (grading plus the six rollups), for the operator and the benchmark.
    cpu_s: float
    sites_with_evidence: int
    #: Site ids, the riskiest first, and each site's grade as the page and the API show it (built once here,
    #: not per request: 10,000 of them are ~0.5 s of pydantic dumps).
    ranked: list[str] = field(default_factory=list)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)


def compute_snapshot(
    states: Mapping[str, SiteEvidence], cfg: SiteConfig, as_of_ms: int, weights: Weights = DEFAULT_WEIGHTS
) -> Snapshot:
    """Grade every site of ``cfg`` once, then roll those grades up for every level and period."""
    t0 = time.thread_time()
    graded = store.grades(dict(states), cfg, as_of_ms, weights=weights)
    grades = {g.site: g for g in graded}
    rollups: dict[tuple[str, str], list[dict[str, Any]]] = {
        (level, period): rollup.rollup(states, cfg, as_of_ms, period, level, weights, grades=grades)
        for level in LEVELS
        for period in PERIODS
    }
    ranked = [g.site for g in sorted(graded, key=lambda g: (-g.points, g.site))]
    rows = {g.site: grade_row(g) for g in graded}
    return Snapshot(as_of_ms, grades, rollups, time.thread_time() - t0, len(states), ranked, rows)


@dataclass
class GradingBoard:
    """Keeps a :class:`Snapshot` fresh: re-read and recompute every ``refresh_s`` seconds."""

    settings: Settings
    topics: Topics
    config: SiteConfig
    clock: Clock
    refresh_s: float = 300.0
    weights: Weights = DEFAULT_WEIGHTS
    snapshot: Snapshot | None = None
    error: str | None = None
    #: Every this many refreshes (the first included) the collection after it covers the frozen objects too.
    full_collect_every: int = 12
    _refreshed: asyncio.Event = field(default_factory=asyncio.Event)
    _refreshes: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.refresh()
            self._refreshed.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.refresh_s)

    async def refresh(self) -> None:
        """Re-read the states and replace the snapshot; the collector is held off meanwhile (module docstring)."""
        gc.disable()
        full = self._refreshes % max(1, self.full_collect_every) == 0
        self._refreshes += 1
        if full:
            gc.unfreeze()
        states: Mapping[str, SiteEvidence] | None = None
        try:
            states = await store.read_states(self.settings, GradingTopics(self.topics))
            as_of = self.clock.now_ms()
            snapshot = await _in_daemon_thread(compute_snapshot, states, self.config, as_of, self.weights)
            states = None  # graded: the evidence is not kept until the next refresh
            self.snapshot = snapshot
            self.error = None
        except Exception as exc:  # Kafka away: keep the last snapshot, say so on the page, try again
            log.warning("could not refresh the grades: %s", exc)
            self.error = str(exc)
        finally:
            states = None
            try:
                settle_s, frozen = await _in_daemon_thread(_settle_heap)
            finally:
                gc.enable()
        if self.error is None and self.snapshot is not None:
            log.info(
                "grades of %d sites and %d rollups as of %d: %.1f CPU s; one collection %.2f s (%s), %d objects frozen",
                len(self.snapshot.grades),
                len(self.snapshot.rollups),
                self.snapshot.as_of_ms,
                self.snapshot.cpu_s,
                settle_s,
                "full" if full else "new objects",
                frozen,
            )


def _settle_heap() -> tuple[float, int]:
    """Collect once, then freeze the survivors (they live until the next refresh); (seconds, objects frozen)."""
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - t0, gc.get_freeze_count()

    async def first(self, timeout: float) -> None:
        """Wait for the first refresh (tests, start-up)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._refreshed.wait(), timeout)


async def _in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a daemon thread, so pages are served meanwhile (sharing the GIL with it) and a stop does
    not wait for a snapshot being computed (``asyncio.to_thread``'s pool threads are joined at exit: at 10,000
    sites a SIGTERM waited for ~20 s of grading)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(setter: Callable[[Any], object], value: Any) -> None:
        if not done.done():
            setter(value)

    def work() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting task, which logs it
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                loop.call_soon_threadsafe(settle, done.set_exception, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, done.set_result, result)

    threading.Thread(target=work, name="console-grades", daemon=True).start()
    return await done


def units_of(user: users.User, config: SiteConfig, level: str) -> set[str] | None:
    """The stations or districts whose rollup rows ``user`` may see; ``None``: all of them (admin)."""
    if user.role == "admin":
        return None
    if user.role == "station":
        return set(user.stations) if level == "station" else set()
    if user.role == "district":
        if level == "district":
            return set(user.districts)
        return {s.station for s in config.sites.values() if s.station and s.district in user.districts}
    return set()


def visible_rollup(
    snap: Snapshot, user: users.User, config: SiteConfig, level: str, period: str
) -> list[dict[str, Any]]:
    allowed = units_of(user, config, level)
    rows = snap.rollups.get((level, period), [])
    return [r for r in rows if allowed is None or r[r["level"]] in allowed]


def visible_grades(snap: Snapshot, scope: frozenset[str]) -> list[SiteGrade]:
    """The grades of the sites in scope, the riskiest first."""
    return [snap.grades[s] for s in snap.ranked if s in scope]


def visible_rows(snap: Snapshot, scope: frozenset[str], limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """The shown form of the grades in scope, the riskiest first (at most ``limit``), and how many there are."""
    sites = [s for s in snap.ranked if s in scope]
    return [snap.rows[s] for s in sites[:limit]], len(sites)


def grade_row(g: SiteGrade) -> dict[str, Any]:
    return {
        "site": g.site,
        "station": g.station,
        "district": g.district,
        "grade": g.grade,
        "computed": g.computed,
        "points": g.points,
        "static_points": g.static_points,
        "dynamic_points": g.dynamic_points,
        "override": g.override.model_dump(mode="json") if g.override else None,
        "top": [c.model_dump(mode="json") for c in g.top],
        "alerts_considered": g.alerts_considered,
    }


def rollup_csv(rows: list[dict[str, Any]]) -> str:
    flat = rollup.to_csv_rows(rows)
    out = io.StringIO()
    if flat:
        w = csv.DictWriter(out, fieldnames=list(flat[0]))
        w.writeheader()
        w.writerows(flat)
    return out.getvalue()
