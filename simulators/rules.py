"""The rule semantics the simulators' ground truth is written against.

Ground truth comes from what the simulator *knows* (the true temperature, the door, the injected fault), read
through the documented meaning of each rule: an excursion is an alert only if it lasts the rule's delay, a
device is offline after its silence timeout, and so on. These numbers are the defaults of the built-in
profiles (see docs/simulators.md); a scenario that overrides a rule in its site file passes its own
:class:`RuleParams`, so the truth and the configuration can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pipeline.contracts import rules

HIGH = rules.COLDCHAIN_HIGH
LOW = rules.COLDCHAIN_LOW
DOOR = rules.COLDCHAIN_DOOR_OPEN
OFFLINE = rules.LIVENESS_OFFLINE
STUCK = rules.LIVENESS_STUCK
BATTERY = rules.LIVENESS_BATTERY_LOW
GAP = rules.LIVENESS_GAP
UNATTENDED = rules.KITCHEN_UNATTENDED
#: One rule per hygiene type: ``kitchen.hygiene.no_hat`` etc.
HYGIENE = rules.KITCHEN_HYGIENE


@dataclass(frozen=True)
class RuleParams:
    """The built-in ``chilled`` profile and kitchen defaults (pipeline/profiles.py, pipeline/detectors/rules.py)."""

    high_c: float = 8.0
    low_c: float = 0.0
    high_delay_s: float = 15 * 60
    door_delay_s: float = 5 * 60
    #: Offline after k x the device's reporting interval without data.
    offline_k: float = 2.0
    #: The default allowed lateness (1 min): liveness is judged this long after its deadline.
    allowed_lateness_s: float = 60.0
    #: EN 12830 maximum logging interval: a longer silence is a ``liveness.gap``.
    gap_max_s: float = 15 * 60
    stuck_after_s: float = 360 * 60
    battery_low: float = 0.2
    #: Maskable levels are deferred while a door or defrost flag is set (each for at most this long) and for
    #: the first hour of data (loading).
    door_mask_s: float = 15 * 60
    defrost_mask_s: float = 45 * 60
    startup_mask_s: float = 60 * 60
    unattended_after_s: float = 5 * 60
    #: A confident violation opens ``kitchen.hygiene.<type>`` at once; repeats of the type within this window
    #: fold into it, and it resolves when the window ends.
    hygiene_dedup_s: float = 10 * 60
    min_confidence: float = 0.6

    def with_overrides(self, **kw: Any) -> RuleParams:
        return replace(self, **kw)

    def delays(self, interval_s: float = 60.0) -> dict[str, float]:
        """Per rule, how long after the condition's onset the alert may open (the scorer's window)."""
        return {
            HIGH: self.high_delay_s,
            LOW: self.high_delay_s,
            DOOR: self.door_delay_s,
            OFFLINE: self.offline_k * interval_s,
            GAP: self.gap_max_s,
            STUCK: self.stuck_after_s,
            BATTERY: 0.0,
            UNATTENDED: self.unattended_after_s,
        }


DEFAULT = RuleParams()
