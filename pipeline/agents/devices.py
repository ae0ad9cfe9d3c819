"""The devices concern: cold chain (levels, cumulative, rate of rise, MKT, door, masks) and liveness (offline,
gaps, stuck, battery) share one :class:`~pipeline.detectors.device.DeviceDetector` and one state per device.

One detector and one state per device rather than one agent per rule family: both families read every
reading of the device, de-duplication by (device, seq) must happen once, and one table write per changed
device is half the changelog traffic of two. The detector's configuration comes from the site file
(:func:`pipeline.profiles.resolve_device_rules`), never from the reading, so a device's rules after a restart
are the same whether or not it has spoken since.
"""

from __future__ import annotations

from typing import Any

from pipeline.agents.core import Concern
from pipeline.detectors.device import DeviceDetector, DeviceState
from pipeline.profiles import resolve_device_rules
from pipeline.settings import Settings
from pipeline.siteconfig import SiteConfig, load


class UnknownSubject(LookupError):
    """A subject the site configuration does not declare; its items are dead-lettered."""


def device_concern(cfg: SiteConfig) -> Concern[DeviceState, Any]:
    site_of = {dev_id: site_id for dev_id, site_id, _ in cfg.devices()}

    def detector_for(device: str, _item: dict[str, Any] | None) -> DeviceDetector:
        site = site_of.get(device)
        if site is None:
            raise UnknownSubject(f"device {device!r} is not in the site configuration")
        return DeviceDetector(resolve_device_rules(cfg, site, device))

    return Concern(
        name="devices",
        kind="readings",
        key_field="device",
        time_field="ts_ms",
        on_item=DeviceDetector.on_reading_dict,
        detector_for=detector_for,
        origin="mqtt",
        origin_field="device",
    )


def concerns(settings: Settings) -> list[Concern[Any, Any]]:
    """``larder worker`` entry point: the devices of ``settings.site_config``."""
    return [device_concern(load(settings.site_config))]
