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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from pipeline.detectors.rules import DeviceRules, DeviceRuleSet, KitchenRules, KitchenRuleSet

if TYPE_CHECKING:
    from pipeline.siteconfig import SiteConfig, TimeWindow

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


def profile_patch(cfg: SiteConfig | None, name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The merged patch of a built-in or custom profile (custom ones may build on each other)."""
    if name in _seen:
        raise ProfileError(f"profile {name!r} is its own base ({' -> '.join((*_seen, name))})")
    custom = cfg.profiles.get(name) if cfg is not None else None
    if custom is None:
        if name in BUILTIN_PROFILES:
            return BUILTIN_PROFILES[name]
        known = sorted({*BUILTIN_PROFILES, *(cfg.profiles if cfg is not None else {})})
        raise ProfileError(f"unknown profile {name!r} (known: {', '.join(known)})")
    patch = patch_of(custom)
    base = patch.pop("base", None) or "chilled"
    return _merge(profile_patch(cfg, base, (*_seen, name)), patch)


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


def _windows(windows: list[TimeWindow]) -> tuple[tuple[int, int], ...]:
    return tuple((w.start.hour * 60 + w.start.minute, w.end.hour * 60 + w.end.minute) for w in windows)


#: What a device's resolved rules depend on besides its id: (site, customised asset or "", profile or "",
#: reporting interval, flag style).
DeviceRulesKey = tuple[str, str, str, float, str]


def device_rules_key(cfg: SiteConfig, site_id: str, device_id: str) -> DeviceRulesKey:
    """What a device's resolved rules depend on besides its id (which is context only): devices with equal
    keys get equal rule values, so a worker and the site file's validation resolve once per key.

    An asset with neither overrides nor a defrost schedule adds nothing to its profile, so it is keyed by the
    profile: a site with an asset per logger (one per cold room or fridge, the usual layout) resolves once
    per profile, not once per device (~1 ms and ~14 KB each)."""
    site = cfg.sites[site_id]
    dev = site.devices[device_id]
    asset = site.assets.get(dev.asset)
    if asset is not None and not asset.overrides.model_fields_set and not asset.defrost_schedule:
        return (site_id, "", asset.profile, dev.interval_s, dev.flags)
    return (site_id, dev.asset, "", dev.interval_s, dev.flags)


def resolve_device_rules(cfg: SiteConfig, site_id: str, device_id: str) -> DeviceRules:
    """The rules for one device: profile, then ``site.overrides.device``, then ``asset.overrides``."""
    site = cfg.sites[site_id]
    dev = site.devices[device_id]
    asset = site.assets[dev.asset]
    return device_rules_from(
        profile_patch(cfg, asset.profile),
        patch_of(site.overrides.device),
        patch_of(asset.overrides),
        site=site_id,
        device=device_id,
        profile=asset.profile,
        timezone=site.timezone,
        interval_s=dev.interval_s,
        defrost_schedule=_windows(asset.defrost_schedule),
        flags=dev.flags,
    )


def resolve_kitchen_rules(cfg: SiteConfig, site_id: str, kitchen_id: str) -> KitchenRules:
    """The rules for one kitchen: defaults, then ``site.overrides.kitchen``, then ``kitchen.overrides``."""
    site = cfg.sites[site_id]
    kitchen = site.kitchens[kitchen_id]
    # Starting from the full defaults also makes a partial hygiene severity map add to the default one.
    return kitchen_rules_from(
        patch_of(site.overrides.kitchen),
        patch_of(kitchen.overrides),
        site=site_id,
        kitchen=kitchen_id,
        timezone=site.timezone,
        service_hours=_windows(kitchen.service_hours),
    )
