"""The real browser the console's tests (and `larder console --screenshot`) drive: Debian's Chromium from apt.

Playwright's own ``playwright install`` downloads browsers from a host that is not reachable on the machines
Larder is built on, so the system Chromium is launched instead (``executable_path``), installed here on first
use the way ``larder stack up`` installs Mosquitto.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.settings import Settings
from pipeline.stack.process import StackError, run

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
    apt = shutil.which("apt-get")
    if not apt:
        raise StackError("chromium is not installed and apt-get is not available: install Chromium yourself")
    sudo: list[str] = [] if os.geteuid() == 0 else ["sudo", "-n"]
    log = settings.log_dir / "install-chromium.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    run([*sudo, apt, "update", "-qq"], log_file=log, env=env, what="apt-get update")
    run([*sudo, apt, "install", "-y", "-qq", "chromium"], log_file=log, env=env, what="apt-get install chromium")
    found = chromium()
    if not found:
        raise StackError(f"apt-get installed chromium but {CHROMIUM} is missing; see {log}")
    return found
