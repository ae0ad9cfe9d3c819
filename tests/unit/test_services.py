"""pipeline.services without starting anything: port blocks, and replicas with identities of their own."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pipeline.services import Services, _ephemeral_range, free_port_block
from pipeline.settings import Settings


def test_a_port_block_is_free_and_below_the_ephemeral_range() -> None:
    low, _ = _ephemeral_range()
    for _ in range(20):
        base = free_port_block(9)
        # Inside the ephemeral range any outgoing connection could take a port between the check and the bind.
        assert base >= 10_000 and base + 9 <= low
        with socket.socket() as s:
            s.bind(("127.0.0.1", base + 8))


def test_replicas_get_their_own_bridge_instance_and_worker_data_folder(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    svc = Services(settings, tmp_path / "sites.yaml", "tp", replicas={"bridge": 2, "worker": 3})
    bridges = [svc._spec("bridge", r) for r in (1, 2)]
    workers = [svc._spec("worker", r) for r in (1, 2, 3)]
    assert [p.label for p in bridges + workers] == ["bridge", "bridge-2", "worker", "worker-2", "worker-3"]
    assert "--instance" not in bridges[0].argv  # the first keeps the run's instance (LARDER_INGEST__BRIDGE_INSTANCE)
    assert bridges[1].argv[-2:] == ["--instance", svc.bridge_instance_of(2)] != [svc.bridge_instance]
    dirs = [w.argv[w.argv.index("--data-dir") + 1] for w in workers[1:]]
    assert len(set(dirs)) == 2 and all(str(tmp_path) in d for d in dirs)  # distinct static-membership ids
    assert len({p.log for p in bridges + workers}) == 5
    assert svc.env()["LARDER_INGEST__BRIDGE_SHARED"] == "true"
    single = Services(settings, tmp_path / "sites.yaml", "tp")
    assert single.env().get("LARDER_INGEST__BRIDGE_SHARED") == os.environ.get("LARDER_INGEST__BRIDGE_SHARED")
