"""Device and camera lookups built from the site configuration (contract 5), reloadable while running.

The bridge and the hooks never trust a device or camera for its site, asset, profile or kitchen: they look
it up here. Editing the site file is :mod:`pipeline.siteedit`; who may log in to the broker is
:mod:`pipeline.stack.logins`; this module only reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import siteconfig
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
        cameras = {
            cam_id: CameraInfo(site_id, cam.kitchen, secret)
            for cam_id, site_id, cam in config.cameras()
            if (secret := _usable_secret("camera", cam_id, cam.resolve_secret)) is not None
        }
        instruments = {
            ins_id: InstrumentInfo(site_id, ins.type, secret)
            for ins_id, site_id, ins in config.instruments()
            if (secret := _usable_secret("instrument", ins_id, ins.resolve_secret)) is not None
        }
        return cls(devices, cameras, instruments)

    @classmethod
    def empty(cls) -> Registry:
        return cls({}, {})


def _usable_secret(kind: str, ident: str, resolve: Callable[[], str]) -> bytes | None:
    """A signer's secret, or ``None`` (logged) when its reference does not resolve: one camera or instrument with
    a missing secret must not take the others down; its requests get 401s."""
    try:
        return resolve().encode()
    except (KeyError, OSError) as exc:
        log.error("%s %s has no usable secret (%s); its requests will be refused", kind, ident, exc)
        return None


def load_registry(path: Path) -> Registry:
    return Registry.from_config(siteconfig.load(path))


class ReloadingRegistry:
    """The current registry, re-read when the file changes (polled) or on demand (SIGHUP).

    At start the file must load: a missing or broken one raises :class:`SiteConfigError` (file, line, field),
    so the service exits instead of running with no devices and dead-lettering every reading as
    ``unknown_device``. Afterwards a broken edit keeps the last good registry and logs the problems, so a typo
    in the site file never stops ingestion that is running.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = self._file_stamp()
        self.current = load_registry(path)  # raises: fail fast at start
        self._loaded()

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
            log.error("site configuration %s is gone; keeping the previous one", self.path)
            return False
        try:
            self.current = load_registry(self.path)
        except SiteConfigError as exc:
            log.error("site configuration not reloaded, keeping the previous one:\n%s", exc)
            return False
        except Exception:  # anything else the file provokes must not stop ingestion either
            log.exception("site configuration %s not reloaded, keeping the previous one", self.path)
            return False
        self._loaded()
        return True

    def _loaded(self) -> None:
        log.info(
            "registry loaded from %s: %d devices, %d cameras",
            self.path,
            len(self.current.devices),
            len(self.current.cameras),
        )
