"""The one authority for broker logins (pipeline/stack/logins.py): registering adds, shrinking needs a yes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import Settings, load_settings
from pipeline.stack import StackError, logins, mosquitto


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setattr(mosquitto, "_files_dir", lambda settings: tmp_path / "mosquitto")  # not /var/lib
    return load_settings(state_dir=tmp_path / "state")


def users(tmp_path: Path) -> set[str]:
    return {line.split(":", 1)[0] for line in (tmp_path / "mosquitto" / "passwd").read_text().splitlines()}


def test_registering_never_drops_anyone(settings: Settings, tmp_path: Path) -> None:
    logins.register_devices(settings, {"a": "secret-aaaa"}, source="replay")
    change = logins.register_devices(settings, {"b": "secret-bbbb"})
    assert change.added == ["b"] and change.total == 2 and not change.reloaded
    assert logins.register_devices(settings, {"b": "secret-bbbb"}).added == []  # same secret: nothing to do
    assert logins.register_devices(settings, {"b": "secret-new!"}).updated == ["b"]
    logins.register_bridges(settings, ["1", "2"])
    assert users(tmp_path) == {"a", "b", "larder-bridge-1", "larder-bridge-2"}
    assert "secret" not in (tmp_path / "mosquitto" / "passwd").read_text(), "hashes only"
    acl = (tmp_path / "mosquitto" / "acl").read_text()
    # Two bridge instances, each reading the readings and the rapid-test results.
    assert "pattern write larder/v1/devices/%u/readings" in acl and acl.count("topic read") == 4
    assert "readwrite" not in acl and "#" not in acl.replace("# ", "")


def test_syncing_site_files_shrinks_only_when_told(settings: Settings, tmp_path: Path) -> None:
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    logins.register_devices(settings, {"manual": "secret-mmmm"})
    logins.sync_site_files(settings, {one: {"a": "secret-aaaa", "b": "secret-bbbb"}, two: {"c": "secret-cccc"}})
    change = logins.sync_site_files(settings, {one: {"a": "secret-aaaa"}})
    assert change.stale == {"b": str(one.resolve())} and change.revoked == []
    assert users(tmp_path) >= {"a", "b", "c", "manual"}, "nothing revoked without a yes"
    change = logins.sync_site_files(settings, {one: {"a": "secret-aaaa"}}, revoke=True)
    assert change.revoked == ["b"]
    assert users(tmp_path) >= {"a", "c", "manual"} and "b" not in users(tmp_path), "other files' devices stay"
    with pytest.raises(StackError, match="two site files"):
        logins.sync_site_files(settings, {one: {"a": "x" * 8}, two: {"a": "x" * 8}})
    with pytest.raises(StackError, match="reserved"):
        logins.register_devices(settings, {"larder-bridge-9": "secret-xxxx"})


def test_a_password_file_from_before_the_store_keeps_its_logins(settings: Settings, tmp_path: Path) -> None:
    passwd = tmp_path / "mosquitto" / "passwd"
    passwd.parent.mkdir(parents=True)
    passwd.write_text(f"larder-bridge:{mosquitto.hash_password('x')}\nold-dev:{mosquitto.hash_password('old-sec1')}\n")
    logins.register_bridges(settings, ["1"])
    assert users(tmp_path) == {"old-dev", "larder-bridge-1"}
    assert logins.registered(settings)[0] == {"old-dev": logins.IMPORTED}


def test_a_second_broker_of_one_state_folder_has_files_of_its_own(tmp_path: Path) -> None:
    base = load_settings(state_dir=tmp_path / "state")
    # Under pytest-xdist this process runs its own broker (tests/conftest.py): name both here.
    main = base.model_copy(update={"mqtt": base.mqtt.model_copy(update={"broker_id": ""})})
    second = base.model_copy(update={"mqtt": base.mqtt.model_copy(update={"broker_id": "gw1"})})
    a, b = mosquitto.paths(main), mosquitto.paths(second)
    assert a["pid"].name == "mosquitto.pid" and b["pid"].name == "mosquitto-gw1.pid"
    assert a["log"].name == "mosquitto.log" and b["log"].name == "mosquitto-gw1.log"
    for key in ("conf", "passwd", "acl", "logins", "data"):
        assert a[key] != b[key] and not b[key].is_relative_to(a[key].parent / "data"), key
    with pytest.raises(ValueError):
        load_settings(state_dir=tmp_path / "state", mqtt={"broker_id": "../etc"})
