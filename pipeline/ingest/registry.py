"""Device and camera lookups built from the site configuration (contract 5), reloadable while running.

The bridge and the hooks never trust a device or camera for its site, asset, profile or kitchen: they look
it up here. The registry also edits the site file for ``larder devices`` (ruamel round-trip, so comments and
layout survive) and regenerates Mosquitto's password file and ACL from it.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from pipeline import serde, siteconfig
from pipeline.settings import Settings
from pipeline.siteconfig import SiteConfig, SiteConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    site: str
    asset: str
    profile: str
    #: The enrichment every reading of this device starts from (copied per reading, never mutated).
    base: dict[str, str] = field(compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class CameraInfo:
    site: str
    kitchen: str
    secret: bytes = field(repr=False, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class InstrumentInfo:
    site: str
    type: str
    secret: bytes = field(repr=False, compare=False, hash=False)


@dataclass(frozen=True)
class Registry:
    devices: dict[str, DeviceInfo]
    cameras: dict[str, CameraInfo]
    #: Rapid-test instruments (contract 6).
    instruments: dict[str, InstrumentInfo] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: SiteConfig) -> Registry:
        devices: dict[str, DeviceInfo] = {}
        for dev_id, site_id, dev in config.devices():
            profile = config.sites[site_id].assets[dev.asset].profile
            base = {"device": dev_id, "site": site_id, "asset": dev.asset, "profile": profile}
            devices[dev_id] = DeviceInfo(site_id, dev.asset, profile, base)
        cameras: dict[str, CameraInfo] = {}
        for cam_id, site_id, cam in config.cameras():
            try:
                secret = cam.resolve_secret().encode()
            except (KeyError, OSError) as exc:
                # One camera with a missing secret reference must not take the others down; it gets 401s.
                log.error("camera %s has no usable secret (%s); its requests will be refused", cam_id, exc)
                continue
            cameras[cam_id] = CameraInfo(site_id, cam.kitchen, secret)
        instruments: dict[str, InstrumentInfo] = {}
        for ins_id, site_id, ins in config.instruments():
            try:
                secret = ins.resolve_secret().encode()
            except (KeyError, OSError) as exc:
                log.error("instrument %s has no usable secret (%s); its requests will be refused", ins_id, exc)
                continue
            instruments[ins_id] = InstrumentInfo(site_id, ins.type, secret)
        return cls(devices, cameras, instruments)

    @classmethod
    def empty(cls) -> Registry:
        return cls({}, {})


def load_registry(path: Path) -> Registry:
    return Registry.from_config(siteconfig.load(path))


class ReloadingRegistry:
    """The current registry, re-read when the file changes (polled) or on demand (SIGHUP).

    A broken edit keeps the last good registry and logs the file:line:field problems, so a typo in the site
    file never stops ingestion.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self.current = Registry.empty()
        self.reload(force=True)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def reload(self, *, force: bool = False) -> bool:
        """Re-read if the file changed (or ``force``). Returns True when a new registry is in place."""
        stamp = self._file_stamp()
        if not force and stamp == self._stamp:
            return False
        self._stamp = stamp
        if stamp is None:
            log.warning("site configuration %s does not exist; every device is unknown", self.path)
            self.current = Registry.empty()
            return True
        try:
            self.current = load_registry(self.path)
        except SiteConfigError as exc:
            log.error("site configuration not reloaded, keeping the previous one:\n%s", exc)
            return False
        except Exception:  # anything else the file provokes must not stop ingestion either
            log.exception("site configuration %s not reloaded, keeping the previous one", self.path)
            return False
        log.info(
            "registry loaded from %s: %d devices, %d cameras",
            self.path,
            len(self.current.devices),
            len(self.current.cameras),
        )
        return True


# ---------------------------------------------------------------------------------------------------------------
# Editing the site file (larder devices ...)
# ---------------------------------------------------------------------------------------------------------------


def new_secret() -> str:
    return secrets.token_urlsafe(18)


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _edit(path: Path, change: Any) -> SiteConfig:
    """Load with comments, apply ``change(doc)``, validate the result, then replace the file atomically. A
    ``.json`` site file stays JSON (indented; JSON has no comments to keep)."""
    text = siteconfig.read_text(path)
    siteconfig.parse(text, path)  # refuse to edit a file that is already broken; the errors name the lines
    if siteconfig.is_json(path):
        doc = serde.loads(text)
        change(doc)
        new_text = serde.dumps_readable(doc).decode()
    else:
        yaml = _yaml()
        doc = yaml.load(text)
        change(doc)
        out = StringIO()
        yaml.dump(doc, out)
        new_text = out.getvalue()
    config = siteconfig.parse(new_text, path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new_text, encoding="utf-8")
    os.chmod(tmp, path.stat().st_mode & 0o777)
    tmp.replace(path)
    return config


def _site(doc: Any, path: Path, site: str) -> dict[str, Any]:
    sites = doc.get("sites") if isinstance(doc, dict) else None
    if not isinstance(sites, dict) or site not in sites:
        known = ", ".join(sites or {}) if isinstance(sites, dict) else ""
        raise SiteConfigError(path, [f"{path}: sites.{site}: no such site (known: {known or 'none'})"])
    node = sites[site]
    assert isinstance(node, dict)
    return node


def _taken(doc: Any, ident: str) -> str | None:
    for site_id, site in (doc.get("sites") or {}).items():
        for section in ("devices", "cameras", "instruments"):
            if ident in (site.get(section) or {}):
                return f"sites.{site_id}.{section}.{ident}"
    return None


def add_device(
    path: Path, site: str, device: str, asset: str, secret: str, interval_s: float | None = None
) -> SiteConfig:
    def change(doc: Any) -> None:
        node = _site(doc, path, site)
        if where := _taken(doc, device):
            raise SiteConfigError(path, [f"{path}: {where}: {device} already exists"])
        if node.get("devices") is None:
            node["devices"] = CommentedMap()
        entry = CommentedMap(asset=asset, secret=secret)
        if interval_s is not None:
            entry["interval_s"] = interval_s
        node["devices"][device] = entry

    return _edit(path, change)


def add_camera(path: Path, site: str, camera: str, kitchen: str, secret: str) -> SiteConfig:
    def change(doc: Any) -> None:
        node = _site(doc, path, site)
        if where := _taken(doc, camera):
            raise SiteConfigError(path, [f"{path}: {where}: {camera} already exists"])
        if node.get("cameras") is None:
            node["cameras"] = CommentedMap()
        node["cameras"][camera] = CommentedMap(kitchen=kitchen, secret=secret)

    return _edit(path, change)


def add_instrument(path: Path, site: str, instrument: str, kind: str, secret: str) -> SiteConfig:
    def change(doc: Any) -> None:
        node = _site(doc, path, site)
        if where := _taken(doc, instrument):
            raise SiteConfigError(path, [f"{path}: {where}: {instrument} already exists"])
        if node.get("instruments") is None:
            node["instruments"] = CommentedMap()
        node["instruments"][instrument] = CommentedMap(type=kind, secret=secret)

    return _edit(path, change)


def rotate_secret(path: Path, ident: str, secret: str) -> SiteConfig:
    def change(doc: Any) -> None:
        where = _taken(doc, ident)
        if where is None:
            raise SiteConfigError(path, [f"{path}: no device or camera (nor instrument) {ident!r}"])
        _, site_id, section, _ = where.split(".", 3)
        entry = doc["sites"][site_id][section][ident]
        if "secret_ref" in entry:
            raise SiteConfigError(
                path,
                [f"{path}: {where}.secret_ref: the secret lives outside this file ({entry['secret_ref']})"],
            )
        entry["secret"] = secret

    return _edit(path, change)


def apply_auth(settings: Settings, config: SiteConfig, extra: dict[str, str] | None = None) -> bool:
    """Regenerate Mosquitto's password file and ACL from the site file and SIGHUP the broker; returns whether
    a running broker was reloaded. ``KeyError``: a ``secret_ref`` that does not resolve (message names it)."""
    from pipeline.stack import mosquitto

    return mosquitto.write_auth(settings, {**(extra or {}), **config.device_secrets()})
