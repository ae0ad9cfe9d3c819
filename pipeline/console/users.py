"""The console's users file: who may log in, with which role, over which sites.

It lives next to the site file (``users.yaml`` in the same folder, or ``$LARDER_CONSOLE_USERS``), mode 0600,
and is edited with ``larder users add/passwd/remove/list``. Passwords are argon2id hashes (argon2-cffi defaults:
64 MiB, 3 passes); the file never holds a password.

Roles and their scope (which sites a user sees and may act on):

* ``admin`` -- every site.
* ``district`` -- every site whose ``district`` (site file) is one of the user's ``districts``.
* ``station`` -- every site whose ``station`` is one of the user's ``stations`` (a 市场监管所 sees only its sites).
* ``site_manager``, ``operator`` -- the sites listed in the user's ``sites``. With ``food_safety_officer: true``
  the user is the sites' food-safety officer (食品安全员) and signs off their daily records in the console.

::

    version: 1
    users:
      li.wei: {role: station, stations: [ST-Huangpu-1], password_hash: "$argon2id$..."}
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from pipeline.schemas import ID_PATTERN
from pipeline.siteconfig import SiteConfig

ConsoleRole = Literal["operator", "site_manager", "station", "district", "admin"]
CONSOLE_ROLES: tuple[ConsoleRole, ...] = ("operator", "site_manager", "station", "district", "admin")
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
MIN_PASSWORD = 10

_hasher = PasswordHasher()
#: Verified against when the user does not exist, so a wrong name costs the same time as a wrong password.
_DUMMY_HASH = _hasher.hash("not-a-password-of-anyone")


class UsersFileError(ValueError):
    pass


class User(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: ConsoleRole
    name: str = Field("", max_length=200, description="display name")
    password_hash: str = Field(repr=False)
    sites: list[str] = Field(default_factory=list)
    stations: list[str] = Field(default_factory=list)
    districts: list[str] = Field(default_factory=list)
    #: The site's food-safety officer (食品安全员): may sign off the daily records of the sites in ``sites``.
    food_safety_officer: bool = False

    @model_validator(mode="after")
    def _scope_given(self) -> User:
        need = {"operator": "sites", "site_manager": "sites", "station": "stations", "district": "districts"}
        field = need.get(self.role)
        if field and not getattr(self, field):
            raise ValueError(f"a {self.role} needs at least one entry in '{field}'")
        if self.food_safety_officer and self.role not in ("operator", "site_manager"):
            raise ValueError("food_safety_officer is a site's own staff: role operator or site_manager")
        if not self.password_hash.startswith("$argon2"):
            raise ValueError("password_hash must be an argon2 hash (use `larder users add` / `passwd`)")
        return self

    def scope(self, config: SiteConfig) -> frozenset[str]:
        """The ids of the sites this user sees."""
        if self.role == "admin":
            return frozenset(config.sites)
        if self.role == "district":
            return frozenset(s for s, site in config.sites.items() if site.district and site.district in self.districts)
        if self.role == "station":
            return frozenset(s for s, site in config.sites.items() if site.station and site.station in self.stations)
        return frozenset(s for s in self.sites if s in config.sites)


class UsersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    users: dict[str, User] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names(self) -> UsersFile:
        import re

        for name in self.users:
            if not re.match(USERNAME_PATTERN, name):
                raise ValueError(f"user name {name!r} must match {USERNAME_PATTERN}")
        return self


def default_path(site_config: Path) -> Path:
    env = os.environ.get("LARDER_CONSOLE_USERS")
    return Path(env) if env else site_config.resolve().parent / "users.yaml"


def load(path: Path) -> UsersFile:
    if not path.exists():
        return UsersFile()
    try:
        doc = YAML(typ="safe").load(path.read_text())
    except (YAMLError, UnicodeDecodeError) as exc:
        raise UsersFileError(f"{path}: not valid YAML: {exc}") from None
    try:
        return UsersFile.model_validate(doc or {})
    except ValidationError as exc:
        problems = [
            f"{path}: {'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        ]
        raise UsersFileError("\n".join(problems)) from None


def save(path: Path, users: UsersFile) -> None:
    """Write atomically with mode 0600 (the hashes are not secrets, but nobody else needs them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = {n: u.model_dump(exclude_defaults=True) | {"role": u.role} for n, u in users.users.items()}
    doc = {"version": 1, "users": entries}
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# larder console users: edit with `larder users add/passwd/remove`\n")
        yaml = YAML()
        yaml.default_flow_style = None
        yaml.dump(doc, fh)
    tmp.replace(path)


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UsersFileError(f"a password needs at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def verify(users: UsersFile, username: str, password: str) -> User | None:
    """The user if the password matches; the same work is done for an unknown name (no user enumeration)."""
    user = users.users.get(username)
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    return user


def check_scope_names(user: User, config: SiteConfig) -> list[str]:
    """Warnings for scope entries the site file does not know (a typo would silently show nothing)."""
    stations = {s.station for s in config.sites.values()}
    districts = {s.district for s in config.sites.values()}
    out: list[str] = []
    out += [f"site {s!r} is not in the site file" for s in user.sites if s not in config.sites]
    out += [f"station {s!r} is not named by any site" for s in user.stations if s not in stations]
    out += [f"district {d!r} is not named by any site" for d in user.districts if d not in districts]
    return out


def valid_ids(values: Iterable[str]) -> list[str]:
    import re

    bad = [v for v in values if not re.match(ID_PATTERN, v)]
    if bad:
        raise UsersFileError(f"not valid site ids: {', '.join(bad)}")
    return list(values)
