"""Fixtures shared by the integration tests of ingestion (bridge, edge cases, durability)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.settings import Settings
from pipeline.testing import IngestEnv, make_env
from pipeline.topics import Topics


@pytest.fixture
def env(live_stack: Settings, topics: Topics, tmp_path: Path) -> Iterator[IngestEnv]:
    """A site file of four fresh devices registered in the broker; bridges and hooks it started are stopped and
    their logins revoked afterwards. A module that needs other devices or cameras defines its own ``env``."""
    e = make_env(live_stack, topics, tmp_path, n_devices=4)
    yield e
    e.close()
