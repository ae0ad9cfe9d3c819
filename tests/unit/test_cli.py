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
