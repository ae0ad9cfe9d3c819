"""Tables printed off a terminal (CI, a log file, a pipe) keep their content whole."""

from __future__ import annotations

import io

import pytest
from rich.table import Table

from pipeline.terminal import LOG_WIDTH, make_console


def _score_table() -> Table:
    t = Table(title="alerts against the ground truth")
    for col in ("rule", "true", "detected", "false", "corroborating", "precision", "recall", "delay mean / max"):
        t.add_column(col)
    t.add_row("coldchain.cumulative_budget", "12", "12", "0", "3", "1.00", "1.00", "125 s / 310 s")
    return t


def test_off_a_terminal_a_wide_table_is_not_cut(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console()
    assert not console.is_terminal
    assert console.width == LOG_WIDTH
    console.print(_score_table())
    out = capsys.readouterr().out
    assert "coldchain.cumulative_budget" in out
    assert "corroborating" in out and "precision" in out
    assert "…" not in out


def test_columns_from_the_environment_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "132")
    assert make_console().width == 132


def test_a_plain_rich_console_would_cut_it() -> None:
    """The reason for make_console: rich's own default off a terminal is 80 columns."""
    buf = io.StringIO()
    from rich.console import Console

    Console(file=buf, width=80).print(_score_table())
    assert "…" in buf.getvalue()
