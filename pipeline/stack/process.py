"""Background service processes: start detached, remember by pid file, stop without leaving orphans."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROLL_BYTES = 64 * 1024 * 1024


class StackError(RuntimeError):
    """A service could not be installed or started; the message names the log to read."""


def read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running.
    with contextlib.suppress(FileNotFoundError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def start_daemon(
    argv: Sequence[str | os.PathLike[str]],
    *,
    pid_file: Path,
    log_file: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` in its own session, output appended to ``log_file``; the pid goes to ``pid_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if file_size(log_file) > ROLL_BYTES:
        # Mosquitto logs every connection; a load test writes tens of MB. One old file is kept per start.
        log_file.replace(log_file.with_name(log_file.name + ".1"))
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def stop_pid(pid: int, *, timeout: float = 20.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not pid_alive(pid):
                return
            time.sleep(0.1)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], *, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_file: Path,
    env: dict[str, str] | None = None,
    what: str,
    timeout: float = 1800,
) -> None:
    """Run an install step to completion, its output appended to ``log_file``; raise with the log's tail."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n$ {' '.join(map(str, argv))}\n".encode())
        log.flush()
        result = subprocess.run(
            [str(a) for a in argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            timeout=timeout,
            check=False,
        )
    if result.returncode != 0:
        raise StackError(f"{what} failed (exit {result.returncode}); see {log_file}:\n{tail(log_file)}")


def apt_install(packages: Sequence[str], log_file: Path, *, without_apt: str) -> list[str]:
    """``apt-get update`` then ``apt-get install`` of ``packages`` (through ``sudo -n`` unless root), logged to
    ``log_file``. Without apt-get: a :class:`StackError` with the message ``without_apt`` (what to install by
    hand). Returns the sudo prefix used, for the caller's own follow-up steps."""
    apt = shutil.which("apt-get")
    if not apt:
        raise StackError(without_apt)
    sudo: list[str] = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    run([*sudo, apt, "update", "-qq"], log_file=log_file, env=env, what="apt-get update")
    run(
        [*sudo, apt, "install", "-y", "-qq", *packages],
        log_file=log_file,
        env=env,
        what=f"apt-get install {' '.join(packages)}",
    )
    return sudo


def tail_bytes(path: Path, max_bytes: int = 64 * 1024) -> bytes:
    """The end of ``path`` (service logs grow large; never read them whole)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            return fh.read()
    except FileNotFoundError:
        return b""


def tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(tail_bytes(path).decode(errors="replace").splitlines()[-lines:])


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def wait_for_service(
    check: Callable[[], bool],
    *,
    pid: int | None,
    logs: Sequence[Path],
    stall_timeout: float,
    cap: float,
    on_wait: Callable[[float], None] | None = None,
    interval: float = 0.3,
    report_every: float = 10.0,
) -> str | None:
    """Wait for ``check``; None once it passes, else why not.

    A service that is still writing its log is still working (Kafka loading thousands of partitions after an
    unclean stop takes minutes), so this gives up only after ``stall_timeout`` seconds without log output, after
    ``cap`` seconds in all, or at once when ``pid`` has exited. ``on_wait(elapsed)`` is called every
    ``report_every`` seconds for progress output.
    """
    t0 = time.monotonic()
    last_growth, sizes = t0, [file_size(p) for p in logs]
    next_report = t0 + report_every
    while True:
        if check():
            return None
        now = time.monotonic()
        if pid is not None and not pid_alive(pid):
            return f"it exited after {now - t0:.0f} s"
        grown = [file_size(p) for p in logs]
        if grown != sizes:
            last_growth, sizes = now, grown
        if now - last_growth > stall_timeout:
            return f"no answer and no log output for {stall_timeout:g} s"
        if now - t0 > cap:
            return f"no answer within {cap:g} s"
        if on_wait is not None and now >= next_report:
            on_wait(now - t0)
            next_report = now + report_every
        time.sleep(interval)
