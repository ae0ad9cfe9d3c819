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
from collections.abc import Iterator, Mapping
from datetime import time as dtime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from pipeline import serde
from pipeline.detectors.rules import DeviceRules, DeviceRuleSet, FlagStyle, KitchenRules, KitchenRuleSet, ProfileDef
from pipeline.profiles import ProfileError, device_rules_from, kitchen_rules_from, patch_of, profile_patch
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


class Instrument(SecretRef):
    """A rapid-test instrument (contract 6): its id is the hook's X-Larder-Instrument and its MQTT user name."""

    type: Literal["enzyme_inhibition", "colloidal_gold", "fluorescence", "spectrophotometer", "other"] = "other"
    name: str = ""


class RapidTestRules(_Model):
    """``rapidtest.*`` rules of a site (docs/rules.md)."""

    recheck_within_min: float = Field(240, gt=0, description="a positive or suspect must be rechecked within this")
    allowed_lateness_min: float = Field(5, ge=0, description="how long results wait for earlier ones in event time")


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


#: What a site is, for the static part of its risk grade (docs/grading.md); entered by the station.
BusinessType = Literal[
    "school_canteen",
    "kindergarten_canteen",
    "elderly_care_canteen",
    "hospital_canteen",
    "central_kitchen",
    "group_meal_supplier",
    "restaurant",
    "takeaway",
    "cold_store",
    "retail",
    "other",
]
#: Consumers less able to bear a foodborne illness; any one raises the static part of the grade.
VulnerableGroup = Literal["children", "students", "elderly", "patients", "pregnant"]


class GradingProfile(_Model):
    """The station's static facts about a site for its risk grade (all optional; docs/grading.md)."""

    business_type: BusinessType | None = None
    floor_area_m2: float | None = Field(None, gt=0, description="business floor area in square metres")
    diners_per_day: int | None = Field(None, ge=0, description="meals served on a typical day")
    vulnerable_consumers: list[VulnerableGroup] = Field(default_factory=list)


class Site(_Model):
    name: str = ""
    timezone: str = "Asia/Shanghai"
    station: str = Field("", description="the 市场监管所 (market supervision station) responsible")
    district: str = Field("", description="the district market supervision bureau")
    #: On the daily record's header (pipeline.reports): the food business licence number (食品经营许可证号)
    #: and/or the unified social credit code (统一社会信用代码).
    licence_no: str = Field("", max_length=64, description="food business licence number (许可证号)")
    credit_code: str = Field("", max_length=64, description="unified social credit code (统一社会信用代码)")
    quiet_hours: TimeWindow | None = None
    assets: dict[Id, Asset] = Field(default_factory=dict)
    devices: dict[Id, Device] = Field(default_factory=dict)
    kitchens: dict[Id, Kitchen] = Field(default_factory=dict)
    cameras: dict[Id, Camera] = Field(default_factory=dict)
    instruments: dict[Id, Instrument] = Field(default_factory=dict)
    rapid_tests: RapidTestRules = Field(default_factory=lambda: RapidTestRules())
    recipients: dict[Role, list[Recipient]] = Field(default_factory=dict)
    escalation: EscalationPolicy = Field(default_factory=lambda: EscalationPolicy())
    #: Rule overrides for every asset (``device``) and kitchen (``kitchen``) of the site, under the asset's own.
    overrides: SiteOverrides = Field(default_factory=lambda: SiteOverrides())
    #: Static facts for the risk grade, entered by the station (docs/grading.md); optional.
    grading: GradingProfile = Field(default_factory=lambda: GradingProfile())

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
            for dev in [*site.devices, *site.cameras, *site.instruments]:
                if dev in seen:
                    raise ValueError(
                        f"{dev} is declared in site {seen[dev]} and in site {site_id}; "
                        "device, camera and instrument ids are MQTT/hook usernames and must be unique"
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

    def instruments(self) -> Iterator[tuple[str, str, Instrument]]:
        for site_id, site in self.sites.items():
            for ins_id, ins in site.instruments.items():
                yield ins_id, site_id, ins

    def device_secrets(self) -> dict[str, str]:
        """Every MQTT user's secret: devices (contract 1) and rapid-test instruments (contract 6)."""
        out = {dev_id: dev.resolve_secret() for dev_id, _, dev in self.devices()}
        out.update((ins_id, ins.resolve_secret()) for ins_id, _, ins in self.instruments())
        return out


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


def write_site_file(path: Path, doc: Mapping[str, Any], *, header: str = "") -> Path:
    """Write a new site file from ``doc`` (YAML, keys in the order given): atomically, mode 0600 because it holds
    device and camera secrets, creating its folder. The one writer of generated site files (simulators, tests,
    benchmarks); ``header`` becomes comment lines at the top."""
    import io

    buf = io.StringIO()
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.dump(_plain(doc), buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    tmp.write_text(comments + buf.getvalue())
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def _plain(value: Any) -> Any:
    """Plain dicts and lists (a tuple or another mapping would be written with a Python tag)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------------
# Rules of one device or kitchen: profile -> site overrides -> asset (kitchen) overrides (see pipeline.profiles)
# ---------------------------------------------------------------------------------------------------------------


def _windows(windows: list[TimeWindow]) -> tuple[tuple[int, int], ...]:
    return tuple((w.start.hour * 60 + w.start.minute, w.end.hour * 60 + w.end.minute) for w in windows)


#: What a device's resolved rules depend on besides its id: (site, customised asset or "", profile or "",
#: reporting interval, flag style).
DeviceRulesKey = tuple[str, str, str, float, str]


def device_rules_key(cfg: SiteConfig, site_id: str, device_id: str) -> DeviceRulesKey:
    """What a device's resolved rules depend on besides its id (which is context only): devices with equal
    keys get equal rule values, so a worker and the site file's validation resolve once per key.

    An asset with neither overrides nor a defrost schedule adds nothing to its profile, so it is keyed by the
    profile: a site with an asset per logger (one per cold room or fridge, the usual layout) resolves once
    per profile, not once per device (~1 ms and ~14 KB each)."""
    site = cfg.sites[site_id]
    dev = site.devices[device_id]
    asset = site.assets.get(dev.asset)
    if asset is not None and not asset.overrides.model_fields_set and not asset.defrost_schedule:
        return (site_id, "", asset.profile, dev.interval_s, dev.flags)
    return (site_id, dev.asset, "", dev.interval_s, dev.flags)


def resolve_device_rules(cfg: SiteConfig, site_id: str, device_id: str) -> DeviceRules:
    """The rules for one device: profile, then ``site.overrides.device``, then ``asset.overrides``."""
    site = cfg.sites[site_id]
    dev = site.devices[device_id]
    asset = site.assets[dev.asset]
    return device_rules_from(
        profile_patch(cfg.profiles, asset.profile),
        patch_of(site.overrides.device),
        patch_of(asset.overrides),
        site=site_id,
        device=device_id,
        profile=asset.profile,
        timezone=site.timezone,
        interval_s=dev.interval_s,
        defrost_schedule=_windows(asset.defrost_schedule),
        flags=dev.flags,
    )


def resolve_kitchen_rules(cfg: SiteConfig, site_id: str, kitchen_id: str) -> KitchenRules:
    """The rules for one kitchen: defaults, then ``site.overrides.kitchen``, then ``kitchen.overrides``."""
    site = cfg.sites[site_id]
    kitchen = site.kitchens[kitchen_id]
    # Starting from the full defaults also makes a partial hygiene severity map add to the default one.
    return kitchen_rules_from(
        patch_of(site.overrides.kitchen),
        patch_of(kitchen.overrides),
        site=site_id,
        kitchen=kitchen_id,
        timezone=site.timezone,
        service_hours=_windows(kitchen.service_hours),
    )
