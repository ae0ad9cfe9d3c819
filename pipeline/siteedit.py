"""Editing the site file (contract 5) for ``larder devices``: the one writer of site files.

ruamel round-trip, so comments and layout survive; a ``.json`` site file stays JSON. Every edit validates the
result before it atomically replaces the file, and refuses to touch a file that is already broken. Reading the
file is :mod:`pipeline.siteconfig`; who may log in to the broker is ``pipeline.stack.logins``.
"""

from __future__ import annotations

import os
import secrets
from io import StringIO
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from pipeline import serde, siteconfig
from pipeline.siteconfig import SiteConfig, SiteConfigError


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


def _add(path: Path, site: str, section: str, ident: str, entry: CommentedMap) -> SiteConfig:
    """Add ``entry`` as ``sites.<site>.<section>.<ident>``; ids are unique across devices, cameras and
    instruments of every site (each is also a login or a signing identity)."""

    def change(doc: Any) -> None:
        node = _site(doc, path, site)
        if where := _taken(doc, ident):
            raise SiteConfigError(path, [f"{path}: {where}: {ident} already exists"])
        if node.get(section) is None:
            node[section] = CommentedMap()
        node[section][ident] = entry

    return _edit(path, change)


def add_device(
    path: Path, site: str, device: str, asset: str, secret: str, interval_s: float | None = None
) -> SiteConfig:
    entry = CommentedMap(asset=asset, secret=secret)
    if interval_s is not None:
        entry["interval_s"] = interval_s
    return _add(path, site, "devices", device, entry)


def add_camera(path: Path, site: str, camera: str, kitchen: str, secret: str) -> SiteConfig:
    return _add(path, site, "cameras", camera, CommentedMap(kitchen=kitchen, secret=secret))


def add_instrument(path: Path, site: str, instrument: str, kind: str, secret: str) -> SiteConfig:
    """A rapid-test instrument (contract 6) of type ``kind``."""
    return _add(path, site, "instruments", instrument, CommentedMap(type=kind, secret=secret))


def rotate_secret(path: Path, ident: str, secret: str) -> SiteConfig:
    def change(doc: Any) -> None:
        where = _taken(doc, ident)
        if where is None:
            raise SiteConfigError(path, [f"{path}: no device, camera or instrument {ident!r}"])
        _, site_id, section, _ = where.split(".", 3)
        entry = doc["sites"][site_id][section][ident]
        if "secret_ref" in entry:
            raise SiteConfigError(
                path,
                [f"{path}: {where}.secret_ref: the secret lives outside this file ({entry['secret_ref']})"],
            )
        entry["secret"] = secret

    return _edit(path, change)
