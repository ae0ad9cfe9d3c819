"""Where a benchmark run keeps its figures: ``benchmarks/results/<name>-<timestamp>.json``, committed, so every
figure quoted in BENCHMARKS.md or the README names a file that holds it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def save(name: str, data: Any) -> Path:
    """Write ``data`` (JSON; anything else as its ``str``) to a new result file of benchmark ``name``."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path
