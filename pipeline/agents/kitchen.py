"""The kitchens concern: unattended stoves and hygiene events, one
:class:`~pipeline.detectors.kitchen.KitchenDetector` and one state per kitchen, fed by the record batches of
camera events (keyed by kitchen id). De-duplication by (camera, event_id) lives in the kitchen's state."""

from __future__ import annotations

from typing import Any

from pipeline.agents.core import Concern
from pipeline.agents.devices import UnknownSubject
from pipeline.detectors.kitchen import KitchenDetector, KitchenState
from pipeline.settings import Settings
from pipeline.siteconfig import SiteConfig, load, resolve_kitchen_rules


def kitchen_concern(cfg: SiteConfig) -> Concern[KitchenState, Any]:
    sites_of: dict[str, list[str]] = {}
    for site_id, site in cfg.sites.items():
        for kitchen_id in site.kitchens:
            sites_of.setdefault(kitchen_id, []).append(site_id)

    def detector_for(kitchen: str, item: dict[str, Any] | None) -> KitchenDetector:
        sites = sites_of.get(kitchen, [])
        if item is not None and item.get("site") in sites:
            return KitchenDetector(resolve_kitchen_rules(cfg, item["site"], kitchen))
        if len(sites) != 1:
            # The kitchen-events topic and the state table are keyed by kitchen id alone.
            what = "is not in" if not sites else f"is in {len(sites)} sites of"
            raise UnknownSubject(f"kitchen {kitchen!r} {what} the site configuration")
        return KitchenDetector(resolve_kitchen_rules(cfg, sites[0], kitchen))

    return Concern(
        name="kitchens",
        kind="kitchen_events",
        key_field="kitchen",
        time_field="ts_ms",
        on_item=KitchenDetector.on_event_dict,
        detector_for=detector_for,
        origin="hook",
        origin_field="camera",
        side_kind="kitchen_verdicts",
        on_side_item=KitchenDetector.on_verdict_dict,
    )


def concerns(settings: Settings) -> list[Concern[Any, Any]]:
    """``larder worker`` entry point: the kitchens of ``settings.site_config``."""
    return [kitchen_concern(load(settings.site_config))]
