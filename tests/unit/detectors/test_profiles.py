"""Profile -> site -> asset merging, and validation errors that name the line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.schemas import Severity
from pipeline.siteconfig import SiteConfigError, parse, resolve_device_rules, resolve_kitchen_rules

YAML = """\
profiles:
  icecream:
    base: frozen
    high: {limit: -20}
sites:
  S01:
    timezone: Asia/Shanghai
    overrides:
      device: {door: {warn_min: 4}}
    assets:
      a1: {profile: icecream, overrides: {high: {delay_min: 7}}, defrost_schedule: ["02:00-02:30"]}
      a2: {profile: pharma}
    devices:
      d1: {asset: a1, secret: abcdefghij}
      d2: {asset: a2, secret: abcdefghij, interval_s: 30}
    kitchens:
      k1: {service_hours: ["10:00-14:00"], overrides: {unattended: {warn_min: 3}, hygiene: {severities: {phone: null}}}}
"""


def test_merge_order_and_context() -> None:
    cfg = parse(YAML, Path("s.yaml"))
    r = resolve_device_rules(cfg, "S01", "d1")
    assert (r.high.limit, r.high.delay_min) == (-20.0, 7.0)  # custom profile, then asset
    assert r.high_high.limit == -12.0 and r.high_high.severity is Severity.CRITICAL  # from frozen + defaults
    assert r.door.warn_min == 4.0  # site override
    assert r.defrost_schedule == ((120, 150),) and r.timezone == "Asia/Shanghai"
    p = resolve_device_rules(cfg, "S01", "d2")
    assert (p.low.limit, p.high.limit, p.interval_s, p.door.warn_min) == (2.0, 8.0, 30.0, 4.0)
    k = resolve_kitchen_rules(cfg, "S01", "k1")
    assert k.unattended.warn_min == 3.0 and k.unattended.critical_min == 15.0
    assert k.subject == "S01/k1" and k.service_hours == ((600, 840),)
    sev = {t.value: s for t, s in k.hygiene.severities.items()}
    assert sev["phone"] is None and sev["fire"] is Severity.CRITICAL


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("delay_min: 7", "delay_min: -7", "s.yaml:11: sites.S01.assets.a1.overrides.high.delay_min"),
        ("delay_min: 7", "dely_min: 7", "s.yaml:11: sites.S01.assets.a1.overrides.high.dely_min"),
        ("warn_min: 4", "warn_min: x", "s.yaml:9: sites.S01.overrides.device.door.warn_min"),
        ("limit: -20", "limit: cold", "s.yaml:4: profiles.icecream.high.limit"),
        ("profile: pharma", "profile: nope", "unknown profile 'nope'"),
    ],
)
def test_errors_name_line_and_field(old: str, new: str, expected: str) -> None:
    with pytest.raises(SiteConfigError) as exc:
        parse(YAML.replace(old, new), Path("s.yaml"))
    assert expected in str(exc.value)


def test_flag_style_is_per_device_default_snapshot() -> None:
    text = YAML.replace("interval_s: 30}", "interval_s: 30, flags: on_change}")
    cfg = parse(text, Path("s.yaml"))
    assert resolve_device_rules(cfg, "S01", "d1").flags == "snapshot"  # omitted: snapshot
    assert resolve_device_rules(cfg, "S01", "d2").flags == "on_change"
    with pytest.raises(SiteConfigError) as exc:
        parse(YAML.replace("interval_s: 30}", "interval_s: 30, flags: sometimes}"), Path("s.yaml"))
    assert "s.yaml:15: sites.S01.devices.d2.flags: Input should be 'snapshot' or 'on_change'" in str(exc.value)
