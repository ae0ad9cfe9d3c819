"""The devices concern: cold chain (levels, cumulative, rate of rise, MKT, door, masks) and liveness (offline,
gaps, stuck, battery) share one :class:`~pipeline.detectors.device.DeviceDetector` and one state per device.

One detector and one state per device rather than one agent per rule family: both families read every
reading of the device, de-duplication by (device, seq) must happen once, and one table write per changed
device is half the changelog traffic of two. The detector's configuration comes from the site file
(:func:`pipeline.siteconfig.resolve_device_rules`), never from the reading, so a device's rules after a restart
are the same whether or not it has spoken since.
"""

from __future__ import annotations

from typing import Any

from pipeline.agents.core import Concern
from pipeline.detectors.device import DeviceDetector, DeviceState
from pipeline.settings import Settings
from pipeline.siteconfig import DeviceRulesKey, SiteConfig, device_rules_key, load, resolve_device_rules


class UnknownSubject(LookupError):
    """A subject the site configuration does not declare; its items are dead-lettered."""


def device_concern(cfg: SiteConfig) -> Concern[DeviceState, Any]:
    where = {dev_id: device_rules_key(cfg, site_id, dev_id) for dev_id, site_id, _ in cfg.devices()}
    classes: dict[DeviceRulesKey, type[DeviceDetector]] = {}

    def detector_for(device: str, _item: dict[str, Any] | None) -> DeviceDetector:
        key = where.get(device)
        if key is None:
            raise UnknownSubject(f"device {device!r} is not in the site configuration")
        cls = classes.get(key)
        if cls is None:
            cls = classes[key] = _shared_class(DeviceDetector(resolve_device_rules(cfg, key[0], device)))
        return _bind(cls, key[0], device)

    return Concern(
        name="devices",
        kind="readings",
        key_field="device",
        time_field="ts_ms",
        on_item=DeviceDetector.on_reading_dict,
        detector_for=detector_for,
        origin="mqtt",
        origin_field="device",
        state_to_bytes=DeviceDetector.state_to_bytes,
    )


def _shared_class(template: DeviceDetector) -> type[DeviceDetector]:
    """A subclass whose class attributes are ``template``'s derived rule fields, shared by every device with
    the same rules.

    Why: a ``DeviceDetector`` per device, as built from :func:`resolve_device_rules`, costs ~14 KB (its
    pydantic ``DeviceRules`` and ~45 derived fields) and ~1 ms to resolve; at 100k devices that is 1.4 GB
    and 100 s of start-up. The rules depend only on :func:`~pipeline.siteconfig.device_rules_key` (site,
    profile or customised asset, reporting interval) — the inputs of ``resolve_device_rules`` besides the
    id — so one resolution per such key suffices, and each device
    only needs its own ``site`` and ``subject`` (the only per-device fields the detector reads; ``config``
    is read for rule values only). Plain attribute lookups fall through to the class, so the detector's
    code runs unchanged and at the same speed.
    """
    fields = {k: v for k, v in vars(template).items() if k not in ("site", "subject")}
    return type(f"DeviceDetector_{template.config.profile}", (DeviceDetector,), fields)


def _bind(cls: type[DeviceDetector], site: str, device: str) -> DeviceDetector:
    detector = cls.__new__(cls)
    detector.site = site
    detector.subject = device
    return detector


def concerns(settings: Settings) -> list[Concern[Any, Any]]:
    """``larder worker`` entry point: the devices of ``settings.site_config``."""
    return [device_concern(load(settings.site_config))]
