"""Contract 5: the example file loads, and mistakes are reported with file, line and field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline import siteconfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sites.yaml"


def test_example_site_file_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DEV_001", "DEV_002", "DEV_003", "CAM_07", "RT_01"):
        monkeypatch.setenv(f"LARDER_SECRET_{name}", f"secret-{name.lower()}")
    cfg = siteconfig.load(EXAMPLE)
    assert [d for d, _, _ in cfg.devices()] == ["dev-001", "dev-002", "dev-003"]
    assert cfg.device_secrets()["dev-002"] == "secret-dev_002"
    assert cfg.device_secrets()["rt-01"] == "secret-rt_01"  # instruments are MQTT users too (contract 6)
    assert [(i, s, x.type) for i, s, x in cfg.instruments()] == [("rt-01", "S01", "enzyme_inhibition")]
    site = cfg.sites["S01"]
    assert site.quiet_hours is not None and site.quiet_hours.start.hour == 22
    assert site.escalation.critical[0].roles == ["operator", "site_manager"]


def _problems(text: str) -> list[str]:
    with pytest.raises(siteconfig.SiteConfigError) as err:
        siteconfig.parse(text, Path("sites.yaml"))
    return err.value.problems


def test_error_names_line_and_field() -> None:
    text = """version: 1
sites:
  S01:
    assets:
      cr-1: { profile: chilled }
    devices:
      dev-1:
        asset: cr-1
        interval_s: -5
        secret: "long-enough-secret"
"""
    assert _problems(text) == ["sites.yaml:9: sites.S01.devices.dev-1.interval_s: Input should be greater than 0"]


def test_dangling_asset_and_duplicate_ids_are_refused() -> None:
    text = """sites:
  A:
    assets: {a1: {}}
    devices:
      d1: {asset: nope, secret: "0123456789"}
"""
    (problem,) = _problems(text)
    assert problem.startswith("sites.yaml:2: sites.A:") and "asset 'nope'" in problem
    dup = """sites:
  A:
    assets: {a1: {}}
    devices: {d1: {asset: a1, secret: "0123456789"}}
  B:
    assets: {a1: {}}
    devices: {d1: {asset: a1, secret: "0123456789"}}
"""
    (problem,) = _problems(dup)
    assert "d1 is declared in site A and in site B" in problem


def test_bad_yaml_and_missing_file() -> None:
    (problem,) = _problems("sites:\n  A: [unclosed\n")
    assert problem.startswith("sites.yaml:3: not valid YAML")
    with pytest.raises(siteconfig.SiteConfigError, match="no such site configuration file"):
        siteconfig.load(Path("/nonexistent/sites.yaml"))


def test_secret_must_be_given_once() -> None:
    text = "sites:\n  A:\n    assets: {a1: {}}\n    devices:\n      d1: {asset: a1}\n"
    (problem,) = _problems(text)
    assert "exactly one of 'secret' or 'secret_ref'" in problem and problem.startswith("sites.yaml:5:")


def test_kitchen_ids_are_unique_across_sites() -> None:
    text = """sites:
  A:
    kitchens: {k1: {}}
  B:
    kitchens: {k1: {}}
"""
    (problem,) = _problems(text)
    assert "kitchen k1 is declared in site A and in site B" in problem


def test_the_fast_loader_reads_what_the_round_trip_loader_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """libyaml's parser (the fast path) with ruamel's YAML 1.2 resolver: times such as 22:00 stay strings (YAML
    1.1 would read a sexagesimal 1320), yes/no/on/off stay strings, anchors and merge keys work."""
    for name in ("DEV_001", "DEV_002", "DEV_003", "CAM_07"):
        monkeypatch.setenv(f"LARDER_SECRET_{name}", f"secret-{name.lower()}")
    tricky = """version: 1
sites:
  S01:
    quiet_hours: 22:00-07:00
    assets:
      cr-1: &room { kind: cold_room, profile: chilled }
      on: { <<: *room, name: yes }
    devices:
      dev-1: { asset: cr-1, interval_s: 0o17, secret: "long-enough-secret" }
      no: { asset: "on", interval_s: 1_0, secret: off-is-a-secret-too }
"""
    fast = siteconfig.parse(tricky, EXAMPLE)
    assert fast == siteconfig._parse_for_errors(tricky, EXAMPLE)
    assert fast.sites["S01"].assets["on"].name == "yes" and fast.sites["S01"].assets["on"].profile == "chilled"
    assert [(d, dev.interval_s) for d, _, dev in fast.devices()] == [("dev-1", 15.0), ("no", 10.0)]
    assert fast.sites["S01"].quiet_hours is not None and fast.sites["S01"].quiet_hours.start.hour == 22
    assert siteconfig.parse(EXAMPLE.read_text(), EXAMPLE) == siteconfig._parse_for_errors(EXAMPLE.read_text(), EXAMPLE)


def test_what_libyaml_refuses_falls_back_to_the_round_trip_loader() -> None:
    """libyaml's scanner refuses ':' inside a plain scalar of a flow sequence; YAML 1.2 (ruamel) allows it, so
    the fast path must hand such a file to the round-trip loader, not report an error."""
    text = """version: 1
sites:
  S01:
    kitchens:
      k1: { name: main, service_hours: [06:00-09:00, 10:30-13:30] }
"""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError

    with pytest.raises(MarkedYAMLError):
        YAML(typ="safe", pure=False).load(text)
    cfg = siteconfig.parse(text, Path("sites.yaml"))
    assert [w.start.hour for w in cfg.sites["S01"].kitchens["k1"].service_hours] == [6, 10]


def test_unreadable_undecodable_and_control_characters_are_site_config_errors(tmp_path: Path) -> None:
    """Not only pydantic's and the YAML grammar's errors: what the reader refuses names the file and line too
    (the bridge keeps its last good registry on a SiteConfigError; anything else would stop it)."""
    good = "version: 1\nsites: {}\n"
    cases = {
        "gbk.yaml": (good + "# 冷库\n").encode("gbk"),  # a comment saved in the wrong encoding
        "control.yaml": (good + "x: \x07\n").encode(),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(siteconfig.SiteConfigError) as err:
            siteconfig.load(tmp_path / name)
        assert err.value.problems[0].startswith(f"{tmp_path / name}:3: "), err.value.problems
    locked = tmp_path / "locked.yaml"
    locked.write_text(good)
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):  # root reads anything: a directory is unreadable as a file for everyone
            locked = tmp_path
        with pytest.raises(siteconfig.SiteConfigError) as err:
            siteconfig.load(locked)
        assert "cannot read it" in err.value.problems[0]
    finally:
        (tmp_path / "locked.yaml").chmod(0o600)
