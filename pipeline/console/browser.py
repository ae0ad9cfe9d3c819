"""The real browser the console's tests (and `larder console --screenshot`) drive: Debian's Chromium from apt.

Playwright's own ``playwright install`` downloads browsers from a host that is not reachable on the machines
Larder is built on, so the system Chromium is launched instead (``executable_path``), installed here on first
use the way ``larder stack up`` installs Mosquitto.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.settings import Settings
from pipeline.stack.process import StackError, apt_install

CHROMIUM = "/usr/bin/chromium"
#: No sandbox (tests run as root in containers), no GPU, and nothing that phones home during a test.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str | None:
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


def ensure_chromium(settings: Settings) -> str:
    """The Chromium binary, installed from apt (``chromium``, ~100 MB) when missing."""
    found = chromium()
    if found:
        return found
    log = settings.log_dir / "install-chromium.log"
    apt_install(
        ["chromium"],
        log,
        without_apt="chromium is not installed and apt-get is not available: install Chromium yourself",
    )
    found = chromium()
    if not found:
        raise StackError(f"apt-get installed chromium but {CHROMIUM} is missing; see {log}")
    return found
