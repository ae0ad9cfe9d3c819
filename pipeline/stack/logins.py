"""Who may log in to the local Mosquitto: the one authority (devices and bridge instances).

Before this module every writer (``stack up``, ``larder devices``, ``larder replay``, tests) regenerated the
password file from what *it* knew, so the last writer dropped everybody else's devices (issue 27, finding 3).
Now the registrations are one store, ``logins.json`` next to the broker's files, changed only under a lock and
only in the ways asked for:

* registering devices adds or updates them and never removes any;
* syncing site files (``stack up --sites A --sites B``) adds/updates their devices and finds the ones that
  were registered from those files but are gone from them: those are revoked only when the caller confirms
  (``--yes``), otherwise they keep their login and the caller prints them;
* revoking is explicit (:func:`revoke_devices`, :func:`revoke_bridges`).

The password file and ACL are rendered from the store after every change (:mod:`pipeline.stack.mosquitto`)
and a running broker reloads them on SIGHUP. Only password hashes are stored.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import serde
from pipeline.settings import Settings
from pipeline.stack import mosquitto
from pipeline.stack.process import StackError

_INSTANCE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # IngestSettings.bridge_instance's pattern
#: Where registrations came from when the source is not a site file.
MANUAL = "manual"
#: Devices found in a password file written before this store existed.
IMPORTED = "imported from the password file"


@dataclass
class Change:
    """What one registration call did (and, for a sync, what it would revoke)."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    #: Registered from a synced site file but gone from it; kept because the caller did not confirm.
    stale: dict[str, str] = field(default_factory=dict)
    bridges_added: list[str] = field(default_factory=list)
    reloaded: bool = False
    total: int = 0


@dataclass
class _Store:
    devices: dict[str, dict[str, str]]  # id -> {"hash": mosquitto $7$ hash, "source": where it came from}
    bridges: list[str]  # instance names
    saved: bool = False  # the files were rewritten: a running broker must reload them


def _store_path(settings: Settings) -> Path:
    return mosquitto.paths(settings)["logins"]


@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[_Store]:
    """Read-modify-write of the store under an exclusive lock; renders and reloads on the way out."""
    path = _store_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(".logins.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        store = _read(settings)
        before = serde.dumps({"d": store.devices, "b": store.bridges})
        yield store
        if serde.dumps({"d": store.devices, "b": store.bridges}) != before or not _rendered(settings):
            _save(settings, store)
            store.saved = True


def _read(settings: Settings) -> _Store:
    path = _store_path(settings)
    if path.exists():
        try:
            doc: Any = serde.loads(path.read_bytes())
            return _Store(dict(doc["devices"]), list(doc["bridges"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StackError(f"{path} is damaged ({exc!r}); fix or delete it, then `larder stack up --sites`") from None
    # First use on a stack whose password file predates the store: keep every login it has.
    devices: dict[str, dict[str, str]] = {}
    passwd = mosquitto.paths(settings)["passwd"]
    bridge_prefix = settings.mqtt.bridge_user
    with contextlib.suppress(OSError):
        for line in passwd.read_text().splitlines():
            user, sep, hashed = line.partition(":")
            if sep and not (user == bridge_prefix or user.startswith(f"{bridge_prefix}-")):
                devices[user] = {"hash": hashed, "source": IMPORTED}
    return _Store(devices, [])


def _rendered(settings: Settings) -> bool:
    p = mosquitto.paths(settings)
    return p["passwd"].exists() and p["acl"].exists()


def _save(settings: Settings, store: _Store) -> None:
    path = _store_path(settings)
    mosquitto.write_private(path, serde.dumps_readable({"devices": store.devices, "bridges": store.bridges}).decode())
    bridges = [settings.mqtt.bridge_login(b)[0] for b in store.bridges]
    users = {settings.mqtt.bridge_login(b)[0]: settings.mqtt.bridge_login(b)[1] for b in store.bridges}
    mosquitto.write_auth_files(
        settings,
        {d: e["hash"] for d, e in store.devices.items()},
        {u: mosquitto.hash_password(pw) for u, pw in users.items()},
        bridges,
    )


def _matches(hashed: str, secret: str) -> bool:
    """Does ``secret`` produce ``hashed`` (Mosquitto's ``$7$iterations$salt$digest``)?"""
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        mine = hashlib.pbkdf2_hmac("sha512", secret.encode(), base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(mine, base64.b64decode(digest))
    except ValueError:
        return False


def _check_id(settings: Settings, device: str) -> None:
    prefix = settings.mqtt.bridge_user
    if device == prefix or device.startswith(f"{prefix}-"):
        raise StackError(f"device id {device!r} is reserved for bridge instances (prefix {prefix}-)")


def _put(store: _Store, change: Change, device: str, secret: str, source: str) -> None:
    entry = store.devices.get(device)
    if entry is None:
        store.devices[device] = {"hash": mosquitto.hash_password(secret), "source": source}
        change.added.append(device)
    elif not _matches(entry["hash"], secret):
        store.devices[device] = {"hash": mosquitto.hash_password(secret), "source": source}
        change.updated.append(device)
    else:
        entry["source"] = source


@contextlib.contextmanager
def _changing(settings: Settings) -> Iterator[tuple[_Store, Change]]:
    """One change of the registrations: under the lock, rendered if anything changed, then a running broker
    reloads (SIGHUP) the new files. ``Change.reloaded``: a broker is running with the current files."""
    change = Change()
    with _locked(settings) as store:
        yield store, change
        change.total = len(store.devices)
    change.reloaded = mosquitto.reload(settings) if store.saved else mosquitto.running(settings)


def register_devices(settings: Settings, secrets: Mapping[str, str], *, source: str = MANUAL) -> Change:
    """Add or update these devices' logins; every other registration stays."""
    for device in secrets:
        _check_id(settings, device)
    with _changing(settings) as (store, change):
        for device, secret in secrets.items():
            _put(store, change, device, secret, source)
    return change


def sync_site_files(settings: Settings, files: Mapping[Path, Mapping[str, str]], *, revoke: bool = False) -> Change:
    """Register every device of these site files (``{file: {device: secret}}``). Devices registered from one of
    these files earlier and no longer in it are revoked only with ``revoke=True``; otherwise they stay and are
    listed in ``Change.stale``. Devices registered from anywhere else are never touched."""
    owner: dict[str, Path] = {}
    for path, secrets in files.items():
        for device in secrets:
            _check_id(settings, device)
            if device in owner and owner[device] != path:
                raise StackError(f"device {device} is in two site files: {owner[device]} and {path}")
            owner[device] = path
    sources = {str(p.resolve()) for p in files}
    with _changing(settings) as (store, change):
        for path, secrets in files.items():
            for device, secret in secrets.items():
                _put(store, change, device, secret, str(path.resolve()))
        for device, entry in sorted(store.devices.items()):
            if entry["source"] in sources and device not in owner:
                if revoke:
                    del store.devices[device]
                    change.revoked.append(device)
                else:
                    change.stale[device] = entry["source"]
    return change


def revoke_devices(settings: Settings, devices: Iterable[str]) -> Change:
    with _changing(settings) as (store, change):
        change.revoked = [d for d in devices if store.devices.pop(d, None) is not None]
    return change


def register_bridges(settings: Settings, instances: Iterable[str]) -> Change:
    """Give these bridge instances a login of their own (user ``<bridge_user>-<instance>``)."""
    with _changing(settings) as (store, change):
        for instance in instances:
            if not _INSTANCE.match(instance):
                raise StackError(f"bridge instance {instance!r}: use 1-64 of A-Z a-z 0-9 _ . -")
            if instance not in store.bridges:
                store.bridges.append(instance)
                change.bridges_added.append(instance)
    return change


def revoke_bridges(settings: Settings, instances: Iterable[str]) -> Change:
    gone = set(instances)
    with _changing(settings) as (store, change):
        change.revoked = [b for b in store.bridges if b in gone]
        store.bridges = [b for b in store.bridges if b not in gone]
    return change


def ensure_rendered(settings: Settings) -> None:
    """Write the password file and ACL from the store (a broker about to start reads them)."""
    with _locked(settings) as store:
        _save(settings, store)
        store.saved = True


def registered(settings: Settings) -> tuple[dict[str, str], list[str]]:
    """({device: source}, [bridge instances]) as the store has them now."""
    store = _read(settings)
    return {d: e["source"] for d, e in store.devices.items()}, list(store.bridges)
