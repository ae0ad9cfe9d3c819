"""Every service starts against an EMPTY state folder, as on a fresh machine.

A folder that only an earlier run had created (the worker's table folder's parent) once broke `make demo` and
`make test` on a new machine while every used machine passed. Here each service gets a state folder that does
not exist yet; its secrets come from the environment, as in a production deployment, and the stack it talks
to is the session's."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from pipeline.services import SERVICES, Services
from pipeline.settings import Settings
from pipeline.topics import Topics
from tests.agents_support import write_sites

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _secret(value: object) -> str:
    assert value is not None
    return str(value.get_secret_value())  # type: ignore[attr-defined]


def test_every_service_starts_in_an_empty_state_folder(live_stack: Settings, topics: Topics, tmp_path: Path) -> None:
    fresh = tmp_path / "never-created" / "state"
    assert not fresh.parent.exists()
    s = live_stack
    env = {
        "LARDER_STATE_DIR": str(fresh),
        "LARDER_MQTT__BRIDGE_PASSWORD": _secret(s.mqtt.bridge_password),
        "LARDER_INFLUX__PASSWORD": _secret(s.influx.password),
        "LARDER_ACK_KEY": _secret(s.ack_key),
    }
    sites = write_sites(tmp_path / "sites.yaml", ["dev-fresh-1"])
    svc = Services(
        s,
        sites,
        topics.prefix,
        clock="live",
        names=SERVICES,
        bridge_instance=f"fresh-{uuid.uuid4().hex[:8]}",
        extra_env=env,
        worker_store="rocksdb",  # the production store: its table folder is what a fresh machine lacked
    )
    with svc:
        time.sleep(3.0)  # past start-up: a service that fails on its first use of a folder dies here
        svc.check_alive()
        assert [p.name for p in svc.processes] == list(SERVICES)
    worker_tables = fresh / "data" / "worker" / f"{topics.prefix}-worker"
    assert worker_tables.is_dir(), "the worker keeps its tables under the state folder it was given"
