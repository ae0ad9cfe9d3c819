"""`larder users add/passwd/list/remove`: the real CLI (typer runner), a site file and a users file on disk."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.console import users

SITES = {"version": 1, "sites": {"S1": {"station": "Huangpu Station", "district": "Central"}, "S2": {}}}


def run(*args: str, stdin: str = "") -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args), input=stdin)
    return r.exit_code, r.output


def test_users_cli_round_trip(tmp_path: Path) -> None:
    sites = tmp_path / "sites.json"
    sites.write_text(json.dumps(SITES))
    uf = tmp_path / "users.yaml"
    common = ["--sites", str(sites), "--users", str(uf)]
    code, out = run(
        "users",
        "add",
        "li",
        "--role",
        "station",
        "--station",
        "Huangpu Station",
        "--password-stdin",
        *common,
        stdin="a-long-password\n",
    )
    assert code == 0, out
    assert users.verify(users.load(uf), "li", "a-long-password") is not None
    assert "a-long-password" not in uf.read_text() and "$argon2id$" in uf.read_text()
    code, out = run("users", "add", "x", "--role", "station", "--password-stdin", *common, stdin="a-long-password\n")
    assert code == 1 and "stations" in out  # a station user without a station
    code, out = run("users", "add", "y", "--role", "admin", "--password-stdin", *common, stdin="short\n")
    assert code == 1 and "at least 10" in out
    code, out = run(
        "users",
        "add",
        "z",
        "--role",
        "operator",
        "--site",
        "S9",
        "--password-stdin",
        *common,
        stdin="a-long-password\n",
    )
    assert code == 0 and "S9" in out and "not in the site file" in out  # saved, with a warning
    code, out = run("users", "list", *common)
    assert code == 0 and "li" in out and "station" in out
    code, out = run("users", "passwd", "li", "--password-stdin", *common, stdin="another-password\n")
    assert code == 0 and users.verify(users.load(uf), "li", "another-password") is not None
    code, out = run("users", "remove", "li", *common)
    assert code == 0 and "li" not in users.load(uf).users
    code, out = run("users", "remove", "li", *common)
    assert code == 1 and "no user" in out
    code, out = run("console", "--help")
    assert code == 0 and "--secure-cookies" in out
