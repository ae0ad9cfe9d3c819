"""Site-file errors name file, line and field; `larder devices` edits keep comments; the registry reloads."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from pathlib import Path

import pytest

from pipeline import siteconfig, siteedit
from pipeline.ingest import registry
from pipeline.ingest.hooks import SeenEvents, sign, validate_events
from pipeline.siteconfig import SiteConfigError

SITE = """\
# Larder test site — this comment must survive edits
version: 1
sites:
  S1:
    assets:
      a1: { profile: chilled }   # cold room
      a2:
        profile: frozen
    devices:
      d1: { asset: a1, secret: "d1-secret-xyz" }
      d2: { asset: a2, secret_ref: "env:LARDER_TEST_D2" }
    kitchens:
      k1: {}
    cameras:
      cam-1: { kitchen: k1, secret: "cam-secret-123" }
  S2:
    assets:
      b1: { profile: pharma }
"""


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    path = tmp_path / "sites.yaml"
    path.write_text(SITE)
    return path


def _errors(text: str) -> list[str]:
    with pytest.raises(SiteConfigError) as err:
        siteconfig.parse(text, Path("sites.yaml"))
    return err.value.problems


@pytest.mark.parametrize(
    ("old", "new", "line", "field"),
    [
        ('d1: { asset: a1, secret: "d1-secret-xyz" }', 'd1: { asset: nope, secret: "d1-secret-xyz" }', 4, "sites.S1"),
        (
            'd1: { asset: a1, secret: "d1-secret-xyz" }',
            'd1: { asset: a1, secret: "short" }',
            10,
            "sites.S1.devices.d1.secret",
        ),
        ('d1: { asset: a1, secret: "d1-secret-xyz" }', "d1: { asset: a1 }", 10, "sites.S1.devices.d1"),
        ("        profile: frozen", "        profile: frozen\n        kind: spaceship", 9, "sites.S1.assets.a2.kind"),
        ("      k1: {}", "      k1: {}\n      'bad id!': {}", 14, "sites.S1.kitchens.bad id!"),
        ("version: 1", "version: 2", 2, "version"),
        ("    assets:\n      a1:", "    colour: red\n    assets:\n      a1:", 5, "sites.S1.colour"),
    ],
)
def test_errors_name_file_line_and_field(old: str, new: str, line: int, field: str) -> None:
    assert old in SITE
    problems = _errors(SITE.replace(old, new, 1))
    assert any(p.startswith(f"sites.yaml:{line}: {field}") for p in problems), problems


def test_yaml_syntax_error_names_the_line() -> None:
    problems = _errors(SITE.replace("      a2:\n", "      a2: [\n", 1))
    assert problems[0].startswith("sites.yaml:") and "not valid YAML" in problems[0]
    assert problems[0].split(":")[1] != "?"


def test_duplicate_device_across_sites_is_refused() -> None:
    text = SITE + '    devices:\n      d1: { asset: b1, secret: "another-secret" }\n'
    problems = _errors(text)
    assert any("d1 is declared in site S1 and in site S2" in p for p in problems)


def test_add_device_keeps_comments_and_validates(site_file: Path) -> None:
    config = siteedit.add_device(site_file, "S2", "d9", "b1", "d9-secret-abc")
    text = site_file.read_text()
    assert "# Larder test site — this comment must survive edits" in text
    assert "# cold room" in text
    assert dict((d, s) for d, s, _ in config.devices())["d9"] == "S2"
    assert siteconfig.load(site_file).sites["S2"].devices["d9"].secret == "d9-secret-abc"


def test_add_refuses_unknown_site_asset_and_duplicates(site_file: Path) -> None:
    before = site_file.read_text()
    with pytest.raises(SiteConfigError, match="no such site"):
        siteedit.add_device(site_file, "S7", "d9", "a1", "d9-secret-abc")
    with pytest.raises(SiteConfigError, match=r"sites\.S1: .*asset 'zz'"):
        siteedit.add_device(site_file, "S1", "d9", "zz", "d9-secret-abc")
    with pytest.raises(SiteConfigError, match="already exists"):
        siteedit.add_device(site_file, "S2", "cam-1", "b1", "d9-secret-abc")
    assert site_file.read_text() == before, "a refused edit leaves the file alone"


def test_add_camera_and_rotate_secret(site_file: Path) -> None:
    siteedit.add_camera(site_file, "S1", "cam-2", "k1", "cam2-secret-xyz")
    siteedit.rotate_secret(site_file, "cam-2", "cam2-new-secret")
    siteedit.rotate_secret(site_file, "d1", "d1-new-secret")
    config = siteconfig.load(site_file)
    assert config.sites["S1"].cameras["cam-2"].secret == "cam2-new-secret"
    assert config.sites["S1"].devices["d1"].secret == "d1-new-secret"
    with pytest.raises(SiteConfigError, match="secret_ref"):
        siteedit.rotate_secret(site_file, "d2", "whatever-secret")
    with pytest.raises(SiteConfigError, match="no device or camera"):
        siteedit.rotate_secret(site_file, "ghost", "whatever-secret")


def test_registry_enriches_from_the_file_and_reloads(site_file: Path) -> None:
    reg = registry.ReloadingRegistry(site_file)
    assert reg.current.devices["d1"].base == {"device": "d1", "site": "S1", "asset": "a1", "profile": "chilled"}
    assert reg.current.devices["d2"].profile == "frozen"
    assert reg.current.cameras["cam-1"].kitchen == "k1"
    # The registry holds camera secrets (to check signatures), never device ones (Mosquitto checks those).
    assert reg.current.cameras["cam-1"].secret == b"cam-secret-123"
    assert "cam-secret-123" not in repr(reg.current) and "cam-secret-123" not in str(reg.current.cameras)
    assert "d1-secret-xyz" not in repr(reg.current), "secrets never show in logs or reprs"
    assert reg.reload() is False, "unchanged file, nothing to do"

    siteedit.add_device(site_file, "S2", "d9", "b1", "d9-secret-abc")
    os.utime(site_file, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert reg.reload() is True
    assert reg.current.devices["d9"].profile == "pharma"

    site_file.write_text(site_file.read_text().replace("profile: pharma", "profile: [broken"))
    assert reg.reload() is False
    assert "d9" in reg.current.devices, "a broken edit keeps the last good registry"


def test_hook_signature_and_lru() -> None:
    body = b'{"event_id":"e1"}'
    expected = "sha256=" + hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(b"k", "1700000000", body) == expected
    seen = SeenEvents(2)
    seen.add(("c", "1"))
    seen.add(("c", "2"))
    assert ("c", "1") in seen  # refreshes "1"
    seen.add(("c", "3"))
    assert ("c", "2") not in seen and ("c", "1") in seen and ("c", "3") in seen


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"nope", "not_json"),
        (b'{"events": []}', "wrong_type"),
        (b'{"event_id": "e1", "ts": "2026-11-22T11:30:05Z", "type": "teleport"}', "wrong_type"),
        (b'{"event_id": "e1", "ts": "2026-11-22T11:30:05Z"}', "missing_field"),
        (b'{"event_id": "e1", "ts": "2026-11-22T11:30:05Z", "type": "person_count"}', "missing_field"),
        (b'{"event_id": "e1", "ts": "2026-11-22T11:30:05Z", "type": "fire", "confidence": 2}', "out_of_range"),
        (b'{"event_id": "e1", "ts": "2099-11-22T11:30:05Z", "type": "fire"}', "future_timestamp"),
        # NaN sends the body to Python's json, which reads this count as an integer (orjson: a float), and only
        # it can write the element back for the dead letter.
        (
            b'{"events": [{"event_id": "e1", "ts": "2026-11-22T11:30:05Z", "type": "person_count", '
            b'"count": 99999999999999999999999, "x": NaN}]}',
            "out_of_range",
        ),
    ],
)
def test_hook_body_validation(body: bytes, code: str) -> None:
    ok, bad = validate_events(body, 1_795_340_000_000, 300_000)
    assert ok == [] and [b[1] for b in bad] == [code]


def test_a_json_site_file_loads_edits_and_reports_like_yaml(site_file: Path, tmp_path: Path) -> None:
    """The same document as JSON (what a program writes for a large fleet): same config, edits stay JSON,
    errors still name line and field."""
    from ruamel.yaml import YAML

    from pipeline import serde, siteconfig

    as_json = tmp_path / "sites.json"
    as_json.write_bytes(serde.dumps_readable(YAML(typ="safe").load(site_file.read_text())))
    assert siteconfig.load(as_json) == siteconfig.load(site_file)

    siteedit.add_device(as_json, "S2", "d9", "b1", "d9-secret-abc")
    siteedit.rotate_secret(as_json, "d1", "d1-secret-new")
    doc = serde.loads(as_json.read_bytes())  # still JSON
    assert doc["sites"]["S2"]["devices"]["d9"] == {"asset": "b1", "secret": "d9-secret-abc"}
    assert registry.load_registry(as_json).devices["d9"].profile == "pharma"

    broken = as_json.read_text().replace('"asset": "b1"', '"asset": "nope"')
    line = next(i for i, t in enumerate(broken.splitlines(), 1) if '"S2":' in t)  # a site-level check
    as_json.write_text(broken)
    with pytest.raises(SiteConfigError) as err:
        siteconfig.load(as_json)
    assert err.value.problems == [
        f"{as_json}:{line}: sites.S2: device d9 names asset 'nope', which this site does not have"
    ]
    as_json.write_text('{\n  "version": 1,\n  "sites": {,}\n}\n')
    with pytest.raises(SiteConfigError) as err:
        siteconfig.load(as_json)
    assert err.value.problems[0].startswith(f"{as_json}:3: not valid JSON")
