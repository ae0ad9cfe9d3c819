"""Alert rule ids (contract 4's ``rule``), one constant per rule: detectors, simulators, routing and tests import
these instead of spelling the strings, so a renamed or mistyped rule is an import error, not a silent miss.

The semantics of each rule are documented in ``docs/rules.md``. Hygiene rules are one per event type:
:func:`hygiene` builds ``kitchen.hygiene.<type>``.
"""

from __future__ import annotations

from typing import Final

COLDCHAIN_HIGH: Final = "coldchain.high"
COLDCHAIN_HIGH_HIGH: Final = "coldchain.high_high"
COLDCHAIN_LOW: Final = "coldchain.low"
COLDCHAIN_LOW_LOW: Final = "coldchain.low_low"
COLDCHAIN_RATE_OF_RISE: Final = "coldchain.rate_of_rise"
COLDCHAIN_CUMULATIVE: Final = "coldchain.cumulative"
COLDCHAIN_MKT: Final = "coldchain.mkt"
COLDCHAIN_DOOR_OPEN: Final = "coldchain.door_open"

LIVENESS_OFFLINE: Final = "liveness.offline"
LIVENESS_GAP: Final = "liveness.gap"
LIVENESS_STUCK: Final = "liveness.stuck"
LIVENESS_BATTERY_LOW: Final = "liveness.battery_low"

KITCHEN_UNATTENDED: Final = "kitchen.unattended"

RAPIDTEST_POSITIVE: Final = "rapidtest.positive"
RAPIDTEST_RECHECK_OVERDUE: Final = "rapidtest.recheck_overdue"
RAPIDTEST_CONFIRMED: Final = "rapidtest.confirmed"
#: Prefix of the per-type hygiene rules (``kitchen.hygiene.no_hat``, ...).
KITCHEN_HYGIENE: Final = "kitchen.hygiene"


def hygiene(event_type: str) -> str:
    """``kitchen.hygiene.<event_type>``."""
    return f"{KITCHEN_HYGIENE}.{event_type}"


#: Every fixed rule id (hygiene rules excluded: one per hygiene event type).
ALL: Final = (
    COLDCHAIN_HIGH,
    COLDCHAIN_HIGH_HIGH,
    COLDCHAIN_LOW,
    COLDCHAIN_LOW_LOW,
    COLDCHAIN_RATE_OF_RISE,
    COLDCHAIN_CUMULATIVE,
    COLDCHAIN_MKT,
    COLDCHAIN_DOOR_OPEN,
    LIVENESS_OFFLINE,
    LIVENESS_GAP,
    LIVENESS_STUCK,
    LIVENESS_BATTERY_LOW,
    KITCHEN_UNATTENDED,
    RAPIDTEST_POSITIVE,
    RAPIDTEST_RECHECK_OVERDUE,
    RAPIDTEST_CONFIRMED,
)
