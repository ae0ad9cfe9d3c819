"""Is the machine quiet enough to measure? Two things have skewed earlier runs unnoticed: `larder` services left
running by an interrupted run (each still consuming, and a shared-subscription member taking its share), and
persistent MQTT sessions left behind, which queue every reading and make Mosquitto's autosave stall the broker
for seconds. Benchmarks print these warnings before they start and with their figures."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import psutil

from pipeline import stack
from pipeline.settings import Settings
from pipeline.stack import mosquitto

_SERVICES = ("bridge", "worker", "notifier", "sink", "hooks")
_MOSQUITTO_DB_WARN = 64 * 2**20


def require_stack(settings: Settings) -> None:
    """Exit with one line naming what is down, not a connection traceback, when the benchmark needs the running
    stack and it is not (healthy)."""
    down = [s.name for s in stack.status(settings) if not s.healthy]
    if down:
        sys.exit(f"the stack is not running or not healthy ({', '.join(down)}): run `larder stack up` first")


def warnings(settings: Settings) -> list[str]:
    out: list[str] = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["pid"] != me and len(cmd) >= 3 and cmd[1].endswith("/larder") and cmd[2] in _SERVICES:
            out.append(f"a `larder {cmd[2]}` is already running (pid {proc.info['pid']}): stop it for a quiet run")
    size = mosquitto.persisted_bytes(settings)
    if size > _MOSQUITTO_DB_WARN:
        out.append(
            f"Mosquitto's autosave holds {size / 2**20:,.0f} MB (messages queued for persistent sessions that are "
            "away; every autosave rewrites it and stalls the broker): drop stale sessions or restart it clean"
        )
    return out


def check(settings: Settings) -> list[str]:
    found = warnings(settings)
    for w in found:
        print(f"WARNING: {w}", file=sys.stderr, flush=True)
    return found


def unwind_on_sigterm() -> None:
    """Make SIGTERM (a CI timeout, `kill`) unwind like Ctrl-C, through the benchmark's finally blocks, so an
    interrupted run stops its services and drops its MQTT sessions instead of leaving them to the next one."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
