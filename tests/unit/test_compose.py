"""deploy/compose.yaml rendered as Docker Compose would (anchors and merge keys resolved, ``${VAR}``
interpolated from deploy/.env.example filled in, ``deploy.replicas`` expanded into identical containers): no two
containers may share an MQTT client id, a state folder or a Kafka consumer identity, and Kafka must be a
three-node cluster with replicated topics. No Docker engine runs here, so this checks what the file asks for."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?:(:-|:\?)([^}]*))?\}")


def _env_example() -> dict[str, str]:
    env = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key] = value or f"test-{key.lower()}"
    return env


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, op, arg = m.group(1), m.group(2), m.group(3)
            if env.get(name):
                return env[name]
            if op == ":?":
                raise AssertionError(f"compose would refuse to start: {arg}")
            return arg or ""

        return _VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    return value


@dataclass(frozen=True)
class Container:
    service: str
    replica: int
    hostname: str | None
    env: dict[str, str]
    command: list[str]
    volumes: list[str]

    def option(self, flag: str) -> str | None:
        return self.command[self.command.index(flag) + 1] if flag in self.command else None

    def mounted_at(self, target: str) -> str | None:
        for v in self.volumes:
            source, _, rest = v.partition(":")
            if rest.split(":")[0] == target:
                return source
        return None


def render(path: Path, env: dict[str, str]) -> list[Container]:
    doc = _interpolate(YAML(typ="safe").load(path.read_text()), env)
    out = []
    for name, svc in doc["services"].items():
        replicas = int((svc.get("deploy") or {}).get("replicas", 1))
        command = svc.get("command") or []
        command = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
        environment = {str(k): str(v) for k, v in (svc.get("environment") or {}).items()}
        for i in range(1, replicas + 1):
            out.append(Container(name, i, svc.get("hostname"), environment, command, list(svc.get("volumes") or [])))
    return out


@pytest.fixture(scope="module")
def containers() -> list[Container]:
    return render(DEPLOY / "compose.yaml", _env_example())


def _larder(containers: list[Container], verb: str) -> list[Container]:
    return [c for c in containers if c.command[:2] == ["larder", verb]]


def test_every_bridge_has_its_own_mqtt_client_id(containers: list[Container]) -> None:
    bridges = _larder(containers, "bridge")
    assert bridges, "the production file runs a bridge"
    # The bridge logs in as larder-bridge-<instance> (the broker binds the client id to the login); the instance
    # comes from --instance or the environment.
    instances = [c.option("--instance") or c.env.get("LARDER_INGEST__BRIDGE_INSTANCE", "1") for c in bridges]
    ids = [f"larder-bridge-{i}" for i in instances]
    assert len(set(ids)) == len(ids), f"bridges sharing a client id: {ids}"
    # Each has a login: the config service renders one per instance.
    config = next(c for c in containers if c.command[:3] == ["larder", "stack", "render-mosquitto"])
    logins = {config.command[i + 1] for i, a in enumerate(config.command) if a == "--bridge"}
    assert set(instances) <= logins, f"bridge instances without a broker login: {set(instances) - logins}"
    # Two bridges on plain subscriptions would each get every reading: more than one must share the load.
    if len(bridges) > 1:
        assert all("--shared" in c.command for c in bridges), "several bridges need --shared"


def test_no_two_workers_share_a_state_folder_or_a_consumer_identity(containers: list[Container]) -> None:
    workers = _larder(containers, "worker")
    assert len(workers) >= 2
    state = [c.env["LARDER_STATE_DIR"] for c in workers]
    volumes = [c.mounted_at(s) for c, s in zip(workers, state, strict=True)]
    assert all(v is not None for v in volumes), "a worker's tables must survive a container restart (a volume)"
    assert len(set(volumes)) == len(volumes), f"workers sharing a state volume: {volumes}"
    hosts = [c.hostname for c in workers]
    assert None not in hosts and len(set(hosts)) == len(hosts), f"workers need distinct hostnames: {hosts}"


def test_no_two_larder_containers_share_a_named_state_volume(containers: list[Container]) -> None:
    seen: dict[str, str] = {}
    for c in containers:
        if c.command[:1] != ["larder"] or "LARDER_STATE_DIR" not in c.env:
            continue
        source = c.mounted_at(c.env["LARDER_STATE_DIR"])
        if source is None:
            continue  # the container's own filesystem: never shared
        key = f"{c.service}#{c.replica}"
        assert source not in seen, f"{key} and {seen.get(source)} share state volume {source}"
        seen[source] = key


def test_kafka_is_a_three_node_cluster_with_replicated_topics(containers: list[Container]) -> None:
    nodes = [c for c in containers if "KAFKA_NODE_ID" in c.env]
    assert sorted(c.env["KAFKA_NODE_ID"] for c in nodes) == ["1", "2", "3"]
    assert len({c.mounted_at("/var/lib/kafka/data") for c in nodes}) == 3
    for c in nodes:
        assert c.env["KAFKA_MIN_INSYNC_REPLICAS"] == "2" and c.env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert len(c.env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == 3
    larder = next(iter(_larder(containers, "worker")))
    assert len(larder.env["LARDER_KAFKA__BOOTSTRAP"].split(",")) == 3
    assert larder.env["LARDER_KAFKA__REPLICATION"] == "3" and larder.env["LARDER_KAFKA__MIN_INSYNC"] == "2"


def test_the_old_file_would_have_failed(tmp_path: Path) -> None:
    """What this test exists for: `deploy.replicas: 2` gives two bridges one client id and two workers one volume."""
    old = tmp_path / "compose.yaml"
    old.write_text(
        "x: &l\n  environment: {LARDER_STATE_DIR: /var/lib/larder}\n  volumes: ['larder-state:/var/lib/larder']\n"
        "services:\n"
        "  cfg: {<<: *l, command: [larder, stack, render-mosquitto, --bridge, '1']}\n"
        "  bridge: {<<: *l, command: [larder, bridge, --shared], deploy: {replicas: 2}}\n"
        "  worker: {<<: *l, command: [larder, worker], deploy: {replicas: 2}}\n"
    )
    rendered = render(old, {})
    with pytest.raises(AssertionError):
        test_every_bridge_has_its_own_mqtt_client_id(rendered)
    with pytest.raises(AssertionError):
        test_no_two_workers_share_a_state_folder_or_a_consumer_identity(rendered)
