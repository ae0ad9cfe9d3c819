"""The Go toolchain for what the stack builds from source (InfluxDB 1.8 from the module proxy, the benchmarks'
load generator): one place for finding ``go`` and for the build environment, so every build is static
(``CGO_ENABLED=0``), uses the installed toolchain as is (``GOTOOLCHAIN=local``: no download of another one)
and keeps its module and build caches under the cache directory, where a fresh clone finds them again."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.stack.process import StackError


def go_binary() -> str:
    go = shutil.which("go") or next((g for g in ("/usr/local/go/bin/go",) if Path(g).exists()), None)
    if not go:
        raise StackError("Go is needed to build InfluxDB 1.8 and the load generator from source: install golang")
    return go


def go_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    """Variables for ``go build``/``go install`` (the caller merges them over ``os.environ``)."""
    cache = cache_dir / "go"
    return {
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
        "GOMODCACHE": str(cache / "mod"),
        "GOCACHE": str(cache / "build"),
        **extra,
    }
