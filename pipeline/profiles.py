"""Built-in temperature profiles and the profile -> site -> asset (or kitchen) merge.

Built-ins (sources in ``docs/rules.md``):

* ``chilled`` 0..8 °C (GB/T 24616 chilled food logistics), with a cumulative ``>= 10 °C for 20 h`` budget;
* ``frozen`` <= -18 °C;
* ``kitchen_fridge`` <= 5 °C (FDA Food Code 3-501.16, cold holding at 41 °F);
* ``pharma`` 2..8 °C, with the WHO cumulative budget and MKT over 24 h.

A custom profile in the site file (``profiles: {name: {base: chilled, high: {limit: 6}}}``) starts from its
``base`` (default ``chilled``) and changes only the keys it names. Then the site's ``overrides.device`` and the
asset's ``overrides`` apply, in that order, again key by key. The same for kitchens with
``overrides.kitchen`` and ``kitchen.overrides``. Everything is validated by the models of
:mod:`pipeline.detectors.rules` when the site file loads, so a mistake is reported with its line and field.
The resolution for one device or kitchen of a site file (``resolve_device_rules`` ...) is in
:mod:`pipeline.siteconfig`, which validates with it: this module knows nothing of the site file's shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from pipeline.detectors.rules import DeviceRules, DeviceRuleSet, KitchenRules, KitchenRuleSet

_WHO_CUMULATIVE = {"limit": 10.0, "direction": "above", "budget_min": 1200.0, "window_min": 10080.0}

BUILTIN_PROFILES: dict[str, dict[str, Any]] = {
    "chilled": {
        "high": {"limit": 8.0, "delay_min": 15.0},
        "high_high": {"limit": 12.0, "delay_min": 5.0},
        "low": {"limit": 0.0, "delay_min": 15.0},
        "low_low": {"limit": -2.0, "delay_min": 5.0},
        "cumulative": _WHO_CUMULATIVE,
        "rate_of_rise": {"limit_c_per_min": 0.2},
        "mkt": {"limit": 8.0},
    },
    "frozen": {
        "high": {"limit": -18.0, "delay_min": 30.0},
        "high_high": {"limit": -12.0, "delay_min": 10.0},
        "rate_of_rise": {"limit_c_per_min": 0.3},
        "mkt": {"limit": -18.0},
        "masks": {"defrost_max_min": 60.0},
    },
    "kitchen_fridge": {
        "high": {"limit": 5.0, "delay_min": 30.0},
        "high_high": {"limit": 8.0, "delay_min": 10.0},
        "low_low": {"limit": -1.0, "delay_min": 30.0, "severity": "warning"},
        "mkt": {"limit": 5.0},
        "door": {"warn_min": 3.0, "critical_min": 10.0},
    },
    "pharma": {
        "high": {"limit": 8.0, "delay_min": 10.0},
        "high_high": {"limit": 12.0, "delay_min": 5.0},
        "low": {"limit": 2.0, "delay_min": 10.0},
        "low_low": {"limit": 0.0, "delay_min": 5.0},
        "cumulative": _WHO_CUMULATIVE,
        "rate_of_rise": {"limit_c_per_min": 0.2},
        "mkt": {"limit": 8.0, "deadband": 0.2},
        "masks": {"startup_min": 30.0},
    },
}


class ProfileError(ValueError):
    pass


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def patch_of(model: BaseModel) -> dict[str, Any]:
    """Only the keys a user actually wrote (recursively), in JSON form so they merge with plain dicts."""
    return model.model_dump(mode="json", exclude_unset=True)


def profile_patch(custom: Mapping[str, BaseModel], name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The merged patch of a built-in or custom profile (``custom``: the site file's ``profiles``, which may
    build on each other)."""
    if name in _seen:
        raise ProfileError(f"profile {name!r} is its own base ({' -> '.join((*_seen, name))})")
    mine = custom.get(name)
    if mine is None:
        if name in BUILTIN_PROFILES:
            return BUILTIN_PROFILES[name]
        known = sorted({*BUILTIN_PROFILES, *custom})
        raise ProfileError(f"unknown profile {name!r} (known: {', '.join(known)})")
    patch = patch_of(mine)
    base = patch.pop("base", None) or "chilled"
    return _merge(profile_patch(custom, base, (*_seen, name)), patch)


def device_rules_from(*patches: dict[str, Any], **context: Any) -> DeviceRules:
    """Defaults, then each patch in order (key by key), then the per-device context (site, device, ...)."""
    merged = DeviceRuleSet().model_dump(mode="json")
    for patch in patches:
        merged = _merge(merged, patch)
    DeviceRuleSet.model_validate(merged)  # the rule set alone, so a bad merge names a rule field
    return DeviceRules.model_validate(merged | context)


def kitchen_rules_from(*patches: dict[str, Any], **context: Any) -> KitchenRules:
    merged = KitchenRuleSet().model_dump(mode="json")
    for patch in patches:
        merged = _merge(merged, patch)
    KitchenRuleSet.model_validate(merged)
    return KitchenRules.model_validate(merged | context)
