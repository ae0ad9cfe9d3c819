"""Mosquitto from Debian's packages: its config, and the password file and ACL rendered from the registrations.

Contract 1: username = device id, password = device secret; a device may publish only to its own readings
topic. Each bridge instance has its own user that may only read readings. Who is registered is decided in one
place, :mod:`pipeline.stack.logins`; this module renders the files (atomically) and applies them with SIGHUP,
which Mosquitto answers by reloading them without dropping connections.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import secrets
import shutil
import signal
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.schemas import MAX_MESSAGE_BYTES
from pipeline.settings import Settings
from pipeline.stack.process import StackError, read_pid, run, start_daemon

#: Payloads the broker accepts at all (twice the validation limit; see render_conf).
BROKER_PAYLOAD_LIMIT = 2 * MAX_MESSAGE_BYTES
#: Mosquitto 2.x password hash: PBKDF2-SHA512, 101 iterations, 12-byte salt (what mosquitto_passwd writes).
_PBKDF2_ITERATIONS = 101


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS)
    return f"$7${_PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _files_dir(settings: Settings) -> Path:
    """Where the broker's own files live.

    Started as root, Mosquitto drops to the ``mosquitto`` user and re-reads the password file and ACL as that
    user on SIGHUP, so the files must sit where that user can reach them. Root's home (mode 0700) is not such
    a place: then they go under /var/lib/larder-mosquitto, one folder per state dir so stacks stay apart.
    """
    default = settings.state_dir / _name(settings)
    owner = _owner()
    if owner is None or _reachable(default, owner[0]):
        return default
    digest = hashlib.sha1(str(settings.state_dir.resolve()).encode()).hexdigest()[:10]
    return Path("/var/lib/larder-mosquitto") / digest / settings.mqtt.broker_id


def _name(settings: Settings) -> str:
    """``mosquitto``, or ``mosquitto-<id>`` for a second broker of the same state folder."""
    return f"mosquitto-{settings.mqtt.broker_id}" if settings.mqtt.broker_id else "mosquitto"


def _reachable(path: Path, uid: int) -> bool:
    """Can ``uid`` traverse every existing parent of ``path`` (others' or owner's x bit)?"""
    for parent in [*reversed(path.parents)]:
        try:
            st = parent.stat()
        except FileNotFoundError:
            return True
        if not (st.st_mode & 0o001 or (st.st_uid == uid and st.st_mode & 0o100)):
            return False
    return True


def paths(settings: Settings) -> dict[str, Path]:
    base = _files_dir(settings)
    return {
        "conf": base / "mosquitto.conf",
        "passwd": base / "passwd",
        "acl": base / "acl",
        "logins": base / "logins.json",
        "data": base / "data",
        "log": settings.log_dir / f"{_name(settings)}.log",
        "pid": settings.state_dir / "run" / f"{_name(settings)}.pid",
    }


def persisted_bytes(settings: Settings) -> int:
    """Size of the broker's last autosave: mostly messages queued for persistent sessions that are away.

    Large means a subscriber that will not come back (an interrupted benchmark, a retired bridge instance)
    still collects every reading; Mosquitto rewrites the whole file every autosave, stalling for seconds.
    """
    try:
        return (paths(settings)["data"] / "mosquitto.db").stat().st_size
    except OSError:
        return 0


def binary() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def install(settings: Settings) -> bool:
    """Install mosquitto, mosquitto-clients and kcat from apt when missing. Returns True if it installed."""
    if binary() and shutil.which("mosquitto_pub") and shutil.which("kcat"):
        return False
    apt = shutil.which("apt-get")
    if not apt:
        raise StackError(
            "mosquitto is not installed and apt-get is not available: install mosquitto, "
            "mosquitto-clients and kcat with your package manager"
        )
    sudo: list[str] = [] if os.geteuid() == 0 else ["sudo", "-n"]
    log = settings.log_dir / "install-mosquitto.log"
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    run([*sudo, apt, "update", "-qq"], log_file=log, env=env, what="apt-get update")
    run(
        [*sudo, apt, "install", "-y", "-qq", "mosquitto", "mosquitto-clients", "kcat"],
        log_file=log,
        env=env,
        what="apt-get install mosquitto mosquitto-clients kcat",
    )
    # Debian starts the packaged service on 1883 on install; it is not ours, so stop it where systemd runs.
    if shutil.which("systemctl") and Path("/run/systemd/system").exists():
        run(
            [*sudo, "systemctl", "disable", "--now", "mosquitto"],
            log_file=log,
            what="stop packaged mosquitto",
        )
    return True


def _owner() -> tuple[int, int] | None:
    """Mosquitto started as root drops to the ``mosquitto`` user, which must own its files."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` atomically with ``text``, owned by the broker's user when it runs as root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    owner = _owner()
    if owner:
        os.chown(tmp, *owner)
    tmp.replace(path)


READINGS_FILTER = "larder/v1/devices/+/readings"
RESULTS_FILTER = "larder/v1/instruments/+/results"


def render_acl(bridge_users: Iterable[str]) -> str:
    """Devices (and every other login that is not a bridge) publish to their own readings topic and read
    nothing; each bridge instance reads the readings.

    Mosquitto 2.0.11's ``acl_file`` does not check SUBSCRIBE at all (every SUBACK is granted, checked against
    the real broker): it checks each *delivery* against ``read`` rules. With no read rule for devices, a
    device's ``#``, ``$SYS/#`` or ``$share/<group>/...`` subscription is granted and receives nothing. A shared
    group would still give such a member its turn, and the broker drops the message it may not read, so the
    bridges' group name is a secret (``MqttSettings.shared_group``) and the default bridge subscription is not
    shared at all (docs/ingest.md).
    """
    lines = [
        "# Generated by larder from its registrations (pipeline/stack/logins.py); edits are overwritten.",
        "# Contract 1: a device publishes only as itself, to its own topic, and may read nothing.",
        "pattern write larder/v1/devices/%u/readings",
        "# Contract 6: a rapid-test instrument publishes its results only as itself.",
        "pattern write larder/v1/instruments/%u/results",
    ]
    for user in bridge_users:
        lines += ["", f"user {user}", f"topic read {READINGS_FILTER}", f"topic read {RESULTS_FILTER}"]
    return "\n".join(lines) + "\n"


def write_auth_files(
    settings: Settings,
    device_hashes: Mapping[str, str],
    bridge_hashes: Mapping[str, str],
    bridge_users: Iterable[str],
    *,
    passwd: Path | None = None,
    acl: Path | None = None,
) -> None:
    """Write the password file (``user:hash`` lines: bridges, then devices) and the ACL."""
    p = paths(settings)
    lines = [f"{u}:{h}" for u, h in bridge_hashes.items()]
    for device, hashed in device_hashes.items():
        if device in bridge_hashes:
            raise StackError(f"device id {device!r} collides with a bridge instance's MQTT user")
        lines.append(f"{device}:{hashed}")
    write_private(passwd or p["passwd"], "\n".join(lines) + "\n")
    write_private(acl or p["acl"], render_acl(bridge_users))


def running(settings: Settings) -> bool:
    return read_pid(paths(settings)["pid"]) is not None


def reload(settings: Settings) -> bool:
    pid = read_pid(paths(settings)["pid"])
    if pid is None:
        return False
    os.kill(pid, signal.SIGHUP)
    return True


def render_conf(settings: Settings, *, passwd: Path, acl: Path, data: Path, listen: str | None = None) -> str:
    m = settings.mqtt
    listener = f"{m.port} {listen if listen is not None else m.host}".strip()
    return f"""# Generated by larder; edits are overwritten.
per_listener_settings false
listener {listener}
allow_anonymous false
password_file {passwd}
acl_file {acl}
# A client's id is its login: a device cannot take over another client's session (a bridge's above all),
# and a bridge instance logs in as its own user (MqttSettings.bridge_login).
use_username_as_clientid true
persistence true
persistence_location {data}/
# Sessions, queues and in-flight messages are saved every {m.autosave_interval_s} s (and on SIGTERM): a kill -9 of the
# broker loses what it acknowledged since the last save and had not handed to the bridge (docs/ingest.md).
autosave_interval {m.autosave_interval_s}
# The default queue limit (1,000 per client) drops a persistent bridge's readings while it is away; this
# bound keeps them (see MqttSettings.max_queued_messages).
max_queued_messages {m.max_queued_messages}
max_queued_bytes {m.max_queued_bytes}
# The bridge acks only after Kafka has the batch, so the broker's in-flight window is what keeps the pipe
# full; the bridge bounds its own unacknowledged readings (ingest.max_inflight), the broker matches it.
max_inflight_messages {settings.ingest.max_inflight}
# The bridge refuses payloads over {MAX_MESSAGE_BYTES} bytes as too_large (a dead letter). The broker lets
# through twice that, so such a message reaches the bridge: a smaller packet limit made Mosquitto disconnect
# the device, which sent the message again for ever. Larger payloads are acknowledged and dropped by the
# broker (message_size_limit, logged); packets past max_packet_size still close the connection.
message_size_limit {BROKER_PAYLOAD_LIMIT}
max_packet_size {BROKER_PAYLOAD_LIMIT + 64 * 1024}
# Nagle's algorithm held QoS 1 acknowledgements back a median 44 ms in a burst of publishes; 0.7 ms without it.
set_tcp_nodelay true
log_dest stdout
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
"""


def render_for_container(
    settings: Settings, devices: Mapping[str, str], out: Path, data: Path, bridges: Iterable[str] = ()
) -> None:
    """Write mosquitto.conf, passwd and acl into ``out`` for a broker in another container (deploy/compose.yaml):
    the listener binds every interface there, and the file paths are the container's. Bridge instances:
    ``bridges``, or ``settings.ingest.bridge_instance``."""
    out.mkdir(parents=True, exist_ok=True)
    logins = dict(settings.mqtt.bridge_login(b) for b in (list(bridges) or [settings.ingest.bridge_instance]))
    write_auth_files(
        settings,
        {d: hash_password(secret) for d, secret in devices.items()},
        {user: hash_password(password) for user, password in logins.items()},
        list(logins),
        passwd=out / "passwd",
        acl=out / "acl",
    )
    conf = render_conf(settings, passwd=out / "passwd", acl=out / "acl", data=data, listen="")
    write_private(out / "mosquitto.conf", conf, mode=0o644)


def _conf_text(settings: Settings) -> str:
    p = paths(settings)
    return render_conf(settings, passwd=p["passwd"], acl=p["acl"], data=p["data"])


def conf_outdated(settings: Settings) -> bool:
    """Does the running broker's config differ from what this version renders?"""
    try:
        return paths(settings)["conf"].read_text() != _conf_text(settings)
    except OSError:
        return True


def start(settings: Settings) -> int:
    """Start the broker; its password file and ACL must be rendered already (``logins.ensure_rendered``)."""
    exe = binary()
    if not exe:
        raise StackError("mosquitto binary not found after install")
    p = paths(settings)
    p["data"].mkdir(parents=True, exist_ok=True)
    owner = _owner()
    if owner:
        os.chown(p["data"].parent, *owner)
        os.chown(p["data"], *owner)
        for f in p["data"].iterdir():
            os.chown(f, *owner)
    write_private(p["conf"], _conf_text(settings), mode=0o644)
    return start_daemon([exe, "-c", p["conf"]], pid_file=p["pid"], log_file=p["log"])
