"""The rapid-tests concern (contract 6): one :class:`~pipeline.detectors.rapidtest.RapidTestDetector` and one state
per site, fed by the record batches of the rapid-tests topic (keyed by site). The ``rapidtest.*`` rules of a site
come from its ``rapid_tests:`` section of the site file, never from the result."""

from __future__ import annotations

from typing import Any

from pipeline.agents.core import Concern
from pipeline.agents.devices import UnknownSubject
from pipeline.detectors.rapidtest import RapidTestDetector, RapidTestState
from pipeline.settings import Settings
from pipeline.siteconfig import SiteConfig, load


def rapid_test_concern(cfg: SiteConfig) -> Concern[RapidTestState, Any]:
    def detector_for(site: str, _item: dict[str, Any] | None) -> RapidTestDetector:
        node = cfg.sites.get(site)
        if node is None:
            raise UnknownSubject(f"site {site!r} is not in the site configuration")
        rules = node.rapid_tests
        return RapidTestDetector(site, rules.recheck_within_min, rules.allowed_lateness_min)

    return Concern(
        name="rapidtests",
        kind="rapid_tests",
        key_field="site",
        time_field="ts_ms",
        on_item=RapidTestDetector.on_item,
        detector_for=detector_for,
        origin="hook",
        origin_field="instrument",
    )


def concerns(settings: Settings) -> list[Concern[Any, Any]]:
    """``larder worker`` entry point: the rapid-test rules of every site of ``settings.site_config``."""
    return [rapid_test_concern(load(settings.site_config))]
