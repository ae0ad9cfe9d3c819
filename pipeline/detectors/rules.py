"""Rule configuration models: what a profile, a site and an asset (or kitchen) may set.

Every duration is in **minutes** (floats allowed), every temperature in °C. Each section model has a default
for every field, so the same model validates a *partial* override (``asset.overrides``): merging uses
pydantic's ``model_fields_set`` (``model_dump(exclude_unset=True)``), so only the keys a user wrote override
the profile. :mod:`pipeline.profiles` holds the built-in profiles and the merge; ``docs/rules.md`` documents
the exact semantics of each rule.

``DeviceRuleSet`` / ``KitchenRuleSet`` are the overridable parts; ``DeviceRules`` / ``KitchenRules`` add the
per-subject context the detectors need (site, subject, time zone, schedules, reporting interval), which only
:func:`pipeline.siteconfig.resolve_device_rules` fills in, never a user.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.schemas import HYGIENE_TYPES, KitchenEventType, Severity

FlagStyle = Literal["snapshot", "on_change"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LevelRule(_Model):
    """One level (LL, L, H or HH). ``limit: null`` disables it.

    High levels breach when ``temp > limit`` and clear when ``temp <= limit - deadband``; low levels breach when
    ``temp < limit`` and clear when ``temp >= limit + deadband``.
    """

    limit: float | None = None
    delay_min: float = Field(15.0, ge=0, description="the breach must hold this long (event time) to open")
    deadband: float = Field(0.5, ge=0, description="hysteresis band in °C")
    clear_delay_min: float = Field(5.0, ge=0, description="the clear condition must hold this long to resolve")
    severity: Severity = Severity.WARNING
    notify: bool = True
    notify_on_clear: bool = True
    maskable: bool = Field(True, description="door, defrost and start-up masks defer this level")


class CumulativeRule(_Model):
    """Time at or beyond ``limit`` summed over a rolling window (WHO-style cumulative exposure budget)."""

    limit: float | None = None
    direction: Literal["above", "below"] = "above"
    budget_min: float = Field(1200.0, gt=0)
    window_min: float = Field(10080.0, gt=0)
    severity: Severity = Severity.WARNING
    notify: bool = True
    notify_on_clear: bool = False


class RateOfRiseRule(_Model):
    """Sustained rise in °C per minute, measured over ``window_min`` (early compressor failure)."""

    limit_c_per_min: float | None = None
    window_min: float = Field(10.0, gt=0)
    delay_min: float = Field(10.0, ge=0)
    clear_delay_min: float = Field(10.0, ge=0)
    severity: Severity = Severity.WARNING
    notify: bool = True
    notify_on_clear: bool = False
    maskable: bool = True


class MktRule(_Model):
    """Mean kinetic temperature over a rolling window, evaluated at each of its 24 bucket boundaries."""

    limit: float | None = None
    window_min: float = Field(1440.0, gt=0)
    delta_h_kj_per_mol: float = Field(83.144, gt=0)
    deadband: float = Field(0.5, ge=0)
    min_coverage: float = Field(0.5, gt=0, le=1, description="share of the window that must hold data")
    severity: Severity = Severity.WARNING
    notify: bool = True
    notify_on_clear: bool = False


class DoorRule(_Model):
    warn_min: float | None = Field(5.0, ge=0)
    critical_min: float | None = Field(15.0, ge=0)
    notify_on_clear: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> DoorRule:
        if self.warn_min is not None and self.critical_min is not None and self.critical_min < self.warn_min:
            raise ValueError("critical_min must not be shorter than warn_min")
        return self


class MaskRule(_Model):
    """How long each cause may mask maskable levels at most (a stuck door or defrost flag cannot hide a fault)."""

    door_max_min: float = Field(15.0, ge=0)
    defrost_max_min: float = Field(45.0, ge=0)
    startup_min: float = Field(60.0, ge=0, description="loading window after first data or after offline")


class LivenessRule(_Model):
    offline_k: float = Field(2.0, gt=0, description="offline after k x the device's interval without data")
    gap_max_min: float = Field(15.0, gt=0, description="EN 12830 maximum logging interval for this asset")
    stuck_min: float | None = Field(360.0, gt=0)
    stuck_epsilon: float = Field(0.0, ge=0)
    battery_low: float | None = Field(0.2, ge=0, le=1)
    battery_deadband: float = Field(0.05, ge=0)


class DeviceRuleSet(_Model):
    """The overridable device rules: a profile, a site's ``overrides.device`` and an asset's ``overrides``."""

    allowed_lateness_min: float = Field(1.0, ge=0, le=60)
    high: LevelRule = LevelRule()
    high_high: LevelRule = LevelRule(delay_min=5.0, severity=Severity.CRITICAL)
    low: LevelRule = LevelRule(maskable=False)
    low_low: LevelRule = LevelRule(delay_min=5.0, severity=Severity.CRITICAL, maskable=False)
    cumulative: CumulativeRule = CumulativeRule()
    rate_of_rise: RateOfRiseRule = RateOfRiseRule()
    mkt: MktRule = MktRule()
    door: DoorRule = DoorRule()
    masks: MaskRule = MaskRule()
    liveness: LivenessRule = LivenessRule()


class ProfileDef(DeviceRuleSet):
    """A custom profile in the site file: ``base`` (a built-in or earlier custom profile) plus changes."""

    base: str | None = None


class DeviceRules(DeviceRuleSet):
    """Everything one device's detector needs, resolved (see :func:`pipeline.siteconfig.resolve_device_rules`)."""

    site: str = ""
    device: str = ""
    profile: str = ""
    timezone: str = "UTC"
    interval_s: float = Field(60.0, gt=0)
    #: Daily local-time defrost windows as (start, end) minutes after midnight; end < start wraps midnight.
    defrost_schedule: tuple[tuple[int, int], ...] = ()
    #: How the device reports ``door_open`` / ``defrost``: ``snapshot`` (every reading carries them; omitted =
    #: false) or ``on_change`` (sent when they change; omitted = unchanged). The site file's ``devices.<id>.flags``.
    flags: FlagStyle = "snapshot"


_DEFAULT_HYGIENE: dict[KitchenEventType, Severity | None] = {t: Severity.WARNING for t in HYGIENE_TYPES}
_DEFAULT_HYGIENE |= {
    KitchenEventType.RODENT: Severity.CRITICAL,
    KitchenEventType.FIRE: Severity.CRITICAL,
}


class UnattendedRule(_Model):
    warn_min: float = Field(5.0, ge=0)
    critical_min: float = Field(15.0, ge=0)
    cook_zones: tuple[str, ...] = ("cook",)
    notify_on_clear: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> UnattendedRule:
        if self.critical_min < self.warn_min:
            raise ValueError("critical_min must not be shorter than warn_min")
        return self


class HygieneRule(_Model):
    min_confidence: float = Field(0.6, ge=0, le=1)
    dedup_min: float = Field(10.0, gt=0)
    #: Severity per hygiene type; a type missing here is not alerted. Partial maps merge over the defaults.
    severities: dict[KitchenEventType, Severity | None] = Field(default_factory=lambda: dict(_DEFAULT_HYGIENE))
    notify: bool = True

    @model_validator(mode="after")
    def _hygiene_only(self) -> HygieneRule:
        bad = [t.value for t in self.severities if t not in HYGIENE_TYPES]
        if bad:
            raise ValueError(f"not hygiene event types: {', '.join(sorted(bad))}")
        return self


class KitchenRuleSet(_Model):
    allowed_lateness_min: float = Field(1.0, ge=0, le=60)
    unattended: UnattendedRule = UnattendedRule()
    hygiene: HygieneRule = HygieneRule()


class KitchenRules(KitchenRuleSet):
    site: str = ""
    kitchen: str = ""
    timezone: str = "UTC"
    #: Daily local-time service windows (minutes after midnight); empty means always in service.
    service_hours: tuple[tuple[int, int], ...] = ()

    @property
    def subject(self) -> str:
        return f"{self.site}/{self.kitchen}"
