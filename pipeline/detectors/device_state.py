"""One device's detector state (:class:`DeviceState`) and the fields of its mutable working copy, shared by the
rule-family modules (levels, aggregates, masks, liveness) that :class:`pipeline.detectors.device._Work` combines."""

from __future__ import annotations

from typing import Any, NamedTuple

from pipeline.detectors.base import Output
from pipeline.detectors.engine import NEG, EmitsInOrder

SEQ_WINDOW = 256
SEQ_MASK = (1 << SEQ_WINDOW) - 1
BUFFER_MAX = 128
BUCKETS = 24

# Condition slots in DeviceState.conds
HIGH, HIGH_HIGH, LOW, LOW_LOW, ROR = range(5)

BufItem = tuple[int, int, float, bool | None, bool | None, float | None]  # ts, seq, temp, door, defrost, battery
Cond = tuple[int | None, int | None, int | None, float]  # since, opened, clear_since, peak
Mask = tuple[int, tuple[str, ...], int, float, float]  # start, reasons, readings, min, max
Stuck = tuple[float, int, int | None]  # value, since, opened
Cum = tuple[int, tuple[int, ...], int, int, int | None]
Mkt = tuple[int, tuple[float, ...], float, int, int, int | None]
#: The rule fields of a state (everything the rules read and write; not the frontier, buffer, de-dup window or
#: liveness, which follow arrivals): last_ts, last_temp, door_since, defrost_since, startup_until, mask,
#: door_warn, door_crit, conds, ror_anchors, stuck, battery_open, cum, mkt, last_seq.
Ckpt = tuple[
    int,
    float,
    int | None,
    int | None,
    int,
    Mask | None,
    int | None,
    int | None,
    tuple[Cond | None, ...],
    tuple[tuple[int, float], ...],
    Stuck | None,
    int | None,
    Cum | None,
    Mkt | None,
    int,
]


class DeviceState(NamedTuple):
    """One device's detector state: plain values only (JSON via :mod:`pipeline.serde`)."""

    frontier: int = NEG
    max_ts: int = NEG
    seq_max: int = -1
    seq_bits: int = 0
    buf: tuple[BufItem, ...] = ()
    last_ts: int = NEG
    last_temp: float = 0.0
    offline_open: int | None = None
    gap_open: int | None = None
    door_since: int | None = None
    defrost_since: int | None = None
    startup_until: int = NEG
    #: (start, reasons, readings, min, max) of the masked interval in progress
    mask: Mask | None = None
    door_warn: int | None = None
    door_crit: int | None = None
    conds: tuple[Cond | None, ...] = (None, None, None, None, None)
    ror_anchors: tuple[tuple[int, float], ...] = ()
    #: (value, since, opened)
    stuck: Stuck | None = None
    battery_open: int | None = None
    #: (bucket index, completed bucket ms (<= 23), current bucket ms, accounted-to, opened)
    cum: Cum | None = None
    #: (bucket index, completed (weight, ms) pairs flattened, current weight, current ms, accounted-to, opened)
    mkt: Mkt | None = None
    late_count: int = 0
    #: The next timer deadline, cached so a tick that fires nothing is O(1) (derived; recomputed on change).
    due: int | None = None
    #: seq of the last applied reading (a jump over missing seqs opens a hole in the history)
    last_seq: int = -1
    #: The rule fields (:data:`RULE_FIELDS`) right after the last applied reading before the oldest open hole;
    #: ``None``: the current rule fields are that state (no hole, no timer fired since the last reading).
    ckpt: Ckpt | None = None
    #: Readings applied since ``ckpt`` (only while a hole is open), oldest first.
    hist: tuple[BufItem, ...] = ()
    #: Late readings within the history bound, waiting to be evaluated (at the next tick).
    pending: tuple[BufItem, ...] = ()


#: The names of the rule fields, in :data:`Ckpt` order.
RULE_FIELDS = (
    "last_ts",
    "last_temp",
    "door_since",
    "defrost_since",
    "startup_until",
    "mask",
    "door_warn",
    "door_crit",
    "conds",
    "ror_anchors",
    "stuck",
    "battery_open",
    "cum",
    "mkt",
    "last_seq",
)


class WorkFields(EmitsInOrder):
    """The attributes of the working copy (declared once for the rule-family mixins; the slots live in ``_Work``)."""

    # The device's DeviceDetector (rules and derived constants). Not imported: pipeline.detectors.device
    # imports these rule families; `_Work` there declares it with the detector's own type.
    d: Any
    out: list[Output]
    now: int
    due_ok: bool
    frontier: int
    max_ts: int
    seq_max: int
    seq_bits: int
    buf: tuple[BufItem, ...]
    last_ts: int
    last_temp: float
    offline_open: int | None
    gap_open: int | None
    door_since: int | None
    defrost_since: int | None
    startup_until: int
    mask: Mask | None
    door_warn: int | None
    door_crit: int | None
    conds: tuple[Cond | None, ...]
    ror_anchors: tuple[tuple[int, float], ...]
    stuck: Stuck | None
    battery_open: int | None
    cum: Cum | None
    mkt: Mkt | None
    late_count: int
    due: int | None
    last_seq: int
    ckpt: Ckpt | None
    hist: tuple[BufItem, ...]
    pending: tuple[BufItem, ...]
    #: Driven by the clock (a tick): silence deadlines may fire.
    clock: bool
    #: True in a re-run of the history: liveness (which follows arrivals) is left as it is.
    retro: bool
    #: In a re-run that gives up the oldest holes (history overflow): holes before this ts are not kept.
    abandon: int

    def restart_masked_delays(self, t: int) -> None:
        """A mask ended at ``t`` (called by the masks family, implemented by the levels family)."""
        raise NotImplementedError
