"""Rich consoles that read well in a log as on a terminal.

Rich sizes output to the terminal; when stdout is a file or a pipe (CI, `| tee`, a service log) it assumes 80
columns and cuts table cells with an ellipsis (``coldcha…``), so rule names and figures become unreadable
exactly where they are read later. Off a terminal the width is taken from ``COLUMNS`` when set, otherwise
wide enough for every table Larder prints; tables are not expanded, so they stay as narrow as their content.
"""

from __future__ import annotations

import os

from rich.console import Console

#: Off a terminal: wide enough for the widest table (the demo's ground-truth score, the stack status).
LOG_WIDTH = 200


def make_console(*, stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    columns = os.environ.get("COLUMNS", "")
    # soft_wrap: a message (a path, an error naming file and line) stays on one line; tables still fit the width.
    return Console(stderr=stderr, width=int(columns) if columns.isdigit() else LOG_WIDTH, soft_wrap=True)
