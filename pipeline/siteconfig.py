"""Contract 5: the site configuration file (YAML), validated on load with errors that name file, line, field.

One file describes every site: its assets (cold rooms, trucks, fridges) with their temperature profile and
overrides, the devices that watch them, the kitchens and their cameras, the people to tell by role, and how
alerts escalate. Device and camera secrets are either inline (``secret:``) or a reference
(``secret_ref: env:NAME`` or ``secret_ref: file:/path``) so the file itself can be committed.

The complete, commented example is ``examples/sites.yaml``; the README documents every field.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from datetime import time as dtime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from pipeline import serde
from pipeline.detectors.rules import DeviceRuleSet, FlagStyle, KitchenRuleSet, ProfileDef
from pipeline.schemas import Id

Role = Literal["operator", "site_manager", "station", "district"]
Channel = Literal["sms", "webhook", "dingtalk", "wecom"]
ROLES: tuple[Role, ...] = ("operator", "site_manager", "station", "district")


class SiteConfigError(ValueError):
    """A site file that cannot be used; ``str()`` lists each problem as ``file:line: field: message``."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _parse_hhmm(value: str) -> dtime:
    try:
        hh, mm = value.strip().split(":")
        return dtime(int(hh), int(mm))
    except ValueError as exc:
        raise ValueError(f"expected HH:MM, got {value!r}") from exc


class TimeWindow(_Model):
    """A daily local-time window ``"HH:MM-HH:MM"``; an end before the start wraps past midnight."""

    start: dtime
    end: dtime

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            if "-" not in value:
                raise ValueError(f"expected 'HH:MM-HH:MM', got {value!r}")
            a, b = value.split("-", 1)
            return {"start": _parse_hhmm(a), "end": _parse_hhmm(b)}
        return value

    def contains(self, t: dtime) -> bool:
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end


class SecretRef(_Model):
    secret: str | None = Field(None, min_length=8, repr=False)
    secret_ref: str | None = Field(None, pattern=r"^(env|file):.+$")

    @model_validator(mode="after")
    def _one_secret(self) -> SecretRef:
        if (self.secret is None) == (self.secret_ref is None):
            raise ValueError("give exactly one of 'secret' or 'secret_ref' (env:NAME or file:/path)")
        return self

    def resolve_secret(self) -> str:
        if self.secret is not None:
            return self.secret
        assert self.secret_ref is not None
        kind, _, ref = self.secret_ref.partition(":")
        if kind == "env":
            value = os.environ.get(ref)
            if value is None:
                raise KeyError(f"secret_ref {self.secret_ref}: environment variable {ref} is not set")
            return value
        return Path(ref).read_text().strip()


class Device(SecretRef):
    asset: Id
    interval_s: float = Field(60.0, gt=0, description="how often the device reports; liveness uses k x this")
    #: How the logger reports ``door_open`` / ``defrost``: ``snapshot`` (every reading carries its flags, an
    #: omitted one is false: periodic loggers) or ``on_change`` (sent when they change, omitted = unchanged:
    #: contact sensors and loggers that send flags only when true must not use it). docs/rules.md, "Flags".
    flags: FlagStyle = "snapshot"


class Asset(_Model):
    name: str = ""
    kind: Literal["cold_room", "freezer", "reefer_truck", "fridge", "display", "pharma_fridge", "other"] = "other"
    profile: str = "chilled"
    #: Per-asset rule overrides, merged key by key over the profile (see :mod:`pipeline.profiles`).
    overrides: DeviceRuleSet = Field(default_factory=DeviceRuleSet)
    defrost_schedule: list[TimeWindow] = Field(default_factory=list)


class Kitchen(_Model):
    name: str = ""
    service_hours: list[TimeWindow] = Field(default_factory=list)
    #: Kitchen rule overrides (unattended T1/T2, hygiene thresholds), see :mod:`pipeline.profiles`.
    overrides: KitchenRuleSet = Field(default_factory=KitchenRuleSet)


class Camera(SecretRef):
    kitchen: Id
    zone: str = "cook"


class Recipient(_Model):
    name: str
    phone: str | None = Field(None, pattern=r"^\+?[0-9 ()-]{5,20}$")
    webhook: str | None = None
    dingtalk: str | None = None
    wecom: str | None = None
    channels: list[Channel] = Field(default_factory=lambda: list[Channel](["sms"]))
    #: HMAC key for this recipient's webhook (``env:NAME`` or ``file:/path``); else notify.webhook_secret.
    webhook_secret_ref: str | None = Field(None, pattern=r"^(env|file):.+$")
    #: Messages per notify.rate_window_s for this recipient; else notify.rate_limit.
    rate_limit: int | None = Field(None, gt=0)


class EscalationStep(_Model):
    after_min: float = Field(ge=0, description="minutes after opening, while unacknowledged")
    roles: list[Role]


class EscalationPolicy(_Model):
    warning: list[EscalationStep] = Field(
        default_factory=lambda: [
            EscalationStep(after_min=0, roles=["operator"]),
            EscalationStep(after_min=15, roles=["site_manager"]),
            EscalationStep(after_min=60, roles=["station"]),
        ]
    )
    critical: list[EscalationStep] = Field(
        default_factory=lambda: [
            EscalationStep(after_min=0, roles=["operator", "site_manager"]),
            EscalationStep(after_min=10, roles=["station"]),
            EscalationStep(after_min=30, roles=["district"]),
        ]
    )
    reminder_min: float = Field(30, gt=0, description="repeat to the current step while unacknowledged")


class SiteOverrides(_Model):
    device: DeviceRuleSet = Field(default_factory=DeviceRuleSet)
    kitchen: KitchenRuleSet = Field(default_factory=KitchenRuleSet)


class Site(_Model):
    name: str = ""
    timezone: str = "Asia/Shanghai"
    station: str = Field("", description="the 市场监管所 (market supervision station) responsible")
    district: str = Field("", description="the district market supervision bureau")
    quiet_hours: TimeWindow | None = None
    assets: dict[Id, Asset] = Field(default_factory=dict)
    devices: dict[Id, Device] = Field(default_factory=dict)
    kitchens: dict[Id, Kitchen] = Field(default_factory=dict)
    cameras: dict[Id, Camera] = Field(default_factory=dict)
    recipients: dict[Role, list[Recipient]] = Field(default_factory=dict)
    escalation: EscalationPolicy = Field(default_factory=lambda: EscalationPolicy())
    #: Rule overrides for every asset (``device``) and kitchen (``kitchen``) of the site, under the asset's own.
    overrides: SiteOverrides = Field(default_factory=lambda: SiteOverrides())

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _references(self) -> Site:
        for dev_id, dev in self.devices.items():
            if dev.asset not in self.assets:
                raise ValueError(f"device {dev_id} names asset {dev.asset!r}, which this site does not have")
        for cam_id, cam in self.cameras.items():
            if cam.kitchen not in self.kitchens:
                raise ValueError(f"camera {cam_id} names kitchen {cam.kitchen!r}, which this site does not have")
        return self


class SiteConfig(_Model):
    version: Literal[1] = 1
    #: Custom profiles by name; built-ins (chilled, frozen, kitchen_fridge, pharma) need no entry.
    profiles: dict[Id, ProfileDef] = Field(default_factory=dict)
    sites: dict[Id, Site] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _globally_unique(self) -> SiteConfig:
        seen: dict[str, str] = {}
        for site_id, site in self.sites.items():
            for dev in [*site.devices, *site.cameras]:
                if dev in seen:
                    raise ValueError(
                        f"{dev} is declared in site {seen[dev]} and in site {site_id}; "
                        "device and camera ids are MQTT/hook usernames and must be unique"
                    )
                seen[dev] = site_id
        kitchens: dict[str, str] = {}
        for site_id, site in self.sites.items():
            for kitchen in site.kitchens:
                if kitchen in kitchens:
                    raise ValueError(
                        f"kitchen {kitchen} is declared in site {kitchens[kitchen]} and in site {site_id}; kitchen ids "
                        "key the kitchen-events partitions and the worker's kitchen state, so they must be unique"
                    )
                kitchens[kitchen] = site_id
        return self

    @model_validator(mode="after")
    def _rules_resolve(self) -> SiteConfig:
        # Profiles and overrides merge only here; a bad profile name or a merge that breaks a rule names the asset.
        from pipeline.profiles import ProfileError, device_rules_key, resolve_device_rules

        # One resolution per rules key (site, profile or customised asset, interval), not per device.
        resolved: set[tuple[str, str, str, float, str]] = set()
        for site_id, site in self.sites.items():
            for dev_id, dev in site.devices.items():
                key = device_rules_key(self, site_id, dev_id)
                if key in resolved:
                    continue
                resolved.add(key)
                try:
                    resolve_device_rules(self, site_id, dev_id)
                except (ProfileError, ValidationError) as exc:
                    raise ValueError(f"site {site_id} asset {dev.asset} (device {dev_id}): {exc}") from None
        return self

    # -- lookups used by the bridge, hooks and agents ----------------------------------------------------------

    def devices(self) -> Iterator[tuple[str, str, Device]]:
        for site_id, site in self.sites.items():
            for dev_id, dev in site.devices.items():
                yield dev_id, site_id, dev

    def cameras(self) -> Iterator[tuple[str, str, Camera]]:
        for site_id, site in self.sites.items():
            for cam_id, cam in site.cameras.items():
                yield cam_id, site_id, cam

    def device_secrets(self) -> dict[str, str]:
        return {dev_id: dev.resolve_secret() for dev_id, _, dev in self.devices()}


# ---------------------------------------------------------------------------------------------------------------
# Loading with line numbers
# ---------------------------------------------------------------------------------------------------------------


def _line_of(doc: Any, loc: tuple[int | str, ...]) -> int | None:
    """Follow a pydantic error location through ruamel's round-trip nodes to a 1-based line number."""
    node, line = doc, None
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            pos = node.lc.key(part)
            line = pos[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    return line


def parse(text: str, path: Path) -> SiteConfig:
    """Validate the site file's text; :class:`SiteConfigError` names file, line and field of every problem.

    The fast path is libyaml's parser (``ruamel.yaml.clib``) with ruamel's YAML 1.2 resolver, the same values
    as the round-trip loader at ~4x its speed (with one rule resolution per rules key in the validator,
    100,000 devices on a few assets load in 16.6 s instead of 93 s; with an asset each, 22.4 s of parsing and
    2.1 s of validation: BENCHMARKS.md). It keeps no line numbers, so a file that does not validate, or that
    libyaml refuses, is parsed again by the round-trip loader for its messages.
    """
    if is_json(path):
        return _parse_json(text, path)
    try:
        doc = YAML(typ="safe", pure=False).load(text)
        return SiteConfig.model_validate({} if doc is None else doc)
    except (YAMLError, ValidationError):
        return _parse_for_errors(text, path)


def is_json(path: Path) -> bool:
    """A ``.json`` site file holds the same document as JSON: what a program generating a large fleet's file
    writes, and parsed ~200x faster than YAML (100,000 devices: 0.1 s against 22 s)."""
    return path.suffix.lower() == ".json"


def _parse_json(text: str, path: Path) -> SiteConfig:
    try:
        doc = serde.loads(text)
    except serde.JSONDecodeError as exc:
        raise SiteConfigError(path, [f"{path}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})"]) from None
    try:
        return SiteConfig.model_validate(doc)
    except ValidationError:
        # JSON is YAML 1.2: the round-trip loader reads the same document and knows every value's line.
        return _parse_for_errors(text, path)


def _parse_for_errors(text: str, path: Path) -> SiteConfig:
    yaml = YAML(typ="rt")
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else "?"
        raise SiteConfigError(path, [f"{path}:{line}: not valid YAML: {exc.problem}"]) from None
    except ReaderError as exc:  # a character YAML does not allow (e.g. a control character)
        line = text.count("\n", 0, exc.position) + 1
        raise SiteConfigError(path, [f"{path}:{line}: not valid YAML: {exc.reason} {exc.character!r}"]) from None
    except YAMLError as exc:
        raise SiteConfigError(path, [f"{path}: not valid YAML: {exc}"]) from None
    if doc is None:
        doc = CommentedMap()
    try:
        return SiteConfig.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            line = _line_of(doc, loc)
            field = ".".join(str(p) for p in loc) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{path}:{line if line else '?'}: {field}: {msg}")
        raise SiteConfigError(path, problems) from None


def load(path: Path) -> SiteConfig:
    """Parse and validate the site file. The result is immutable and cached while the file is unchanged: a
    worker builds several concerns from one file, and parsing 10,000 devices takes seconds."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SiteConfigError(path, [f"{path}: no such site configuration file"]) from None
    return _load(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _load(path: Path, _mtime_ns: int, _size: int) -> SiteConfig:
    return parse(read_text(path), path)


def read_text(path: Path) -> str:
    """The site file's text; a missing, unreadable or non-UTF-8 file is a :class:`SiteConfigError` too."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SiteConfigError(path, [f"{path}: no such site configuration file"]) from None
    except OSError as exc:
        raise SiteConfigError(path, [f"{path}: cannot read it: {exc.strerror or exc}"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SiteConfigError(
            path, [f"{path}:{line}: not UTF-8 (byte {data[exc.start]:#04x}); save the file as UTF-8"]
        ) from None
