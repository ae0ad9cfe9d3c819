"""Every verb a user can type has --help, and every `larder ...` command in deploy/compose.yaml exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main
from ruamel.yaml import YAML
from typer.testing import CliRunner

from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[2]


def _paths(group: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    # Typer ships its own click fork, so sub-groups are recognised by their `commands`, not by click's classes.
    out = []
    for name, cmd in getattr(group, "commands", {}).items():
        out.append((*prefix, name))
        out.extend(_paths(cmd, (*prefix, name)))
    return out


COMMANDS = _paths(typer.main.get_command(app))


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_verb_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_compose_runs_only_real_commands() -> None:
    compose = YAML(typ="safe").load((ROOT / "deploy" / "compose.yaml").read_text())
    used = []
    for name, svc in compose["services"].items():
        cmd = svc.get("command")
        if isinstance(cmd, list) and cmd and cmd[0] == "larder":
            verbs = tuple(a for a in cmd[1:3] if not a.startswith("-"))
            used.append((name, verbs))
    assert used, "compose.yaml runs no larder service"
    for name, verbs in used:
        assert verbs in COMMANDS, f"compose service {name} runs `larder {' '.join(verbs)}`, which does not exist"
        result = CliRunner().invoke(app, [*verbs, "--help"])
        assert result.exit_code == 0, f"compose service {name}: larder {' '.join(verbs)} --help failed"


def test_compose_uses_official_images() -> None:
    compose = YAML(typ="safe").load((ROOT / "deploy" / "compose.yaml").read_text())
    images = {svc.get("image") for svc in compose["services"].values()}
    assert {"apache/kafka:4.1.1", "influxdb:2.7", "eclipse-mosquitto:2.0"} <= images


SITES = """version: 1
sites:
  S1:
    assets:
      a1: { profile: chilled }
    devices:
      d1: { asset: a1, secret: "d1-secret-xyz" }
      d2: { asset: a1, secret_ref: "env:LARDER_TEST_UNSET_SECRET" }
"""


def test_devices_add_says_what_it_could_not_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No traceback and no false "reloaded": another device's unresolvable secret_ref does not block adding one;
    a stopped broker is said to be stopped; a broker login store that cannot be used fails with its path after
    the file was saved; the bridge's user names are refused before the file changes."""
    from pipeline.stack import mosquitto

    monkeypatch.setenv("LARDER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(mosquitto, "_files_dir", lambda settings: tmp_path / "mosquitto")  # not /var/lib
    monkeypatch.delenv("LARDER_TEST_UNSET_SECRET", raising=False)
    sites = tmp_path / "sites.yaml"
    sites.write_text(SITES)
    run = CliRunner().invoke
    args = ["devices", "add", "--site", "S1", "--asset", "a1", "--sites", str(sites)]

    result = run(app, [*args, "d3", "--secret", "d3-secret-xyz"])
    assert result.exit_code == 0, result.output
    assert "not running" in " ".join(result.output.split()) and "reloaded (SIGHUP)" not in result.output
    assert "d3:" in (tmp_path / "mosquitto" / "passwd").read_text()
    assert "d3-secret-xyz" not in (tmp_path / "mosquitto" / "passwd").read_text(), "hashes only"

    (tmp_path / "mosquitto" / "logins.json").write_text("{not json")
    result = run(app, [*args, "d4", "--secret", "d4-secret-xyz"])
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert "is damaged" in said and "Traceback" not in said
    assert "d4:" in sites.read_text(), "the file was saved; only the broker's logins were not"

    before = sites.read_text()
    for name in ("larder-bridge", "larder-bridge-2"):
        result = run(app, [*args, name, "--secret", "xx-secret-xyz"])
        assert result.exit_code == 1 and "bridge's MQTT user" in result.output
    assert sites.read_text() == before
