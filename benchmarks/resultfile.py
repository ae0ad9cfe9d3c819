"""Where a benchmark run keeps its figures: ``benchmarks/results/<name>-<timestamp>.json``, committed, so every
figure quoted in BENCHMARKS.md or the README names a file that holds it."""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def save(name: str, data: Any) -> Path:
    """Write ``data`` (JSON; anything else as its ``str``) to a new result file of benchmark ``name``."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def machine(load_before: Any) -> dict[str, Any]:
    """The machine part of a result: cores, Python, the load average before the run and now, and when."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_before": load_before,
        "load_avg_end": os.getloadavg(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
