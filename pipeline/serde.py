"""The one place that turns bytes into Python values and back (orjson).

Everything that crosses a process boundary — Kafka records, hook bodies, webhooks, replay files — goes
through these two functions, so number formatting and timestamp encoding are identical everywhere.
"""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError

_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=_OPTS)


_PLAIN_OPTS = _OPTS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def dumps_plain(value: Any) -> bytes:
    """Like :func:`dumps` for JSON's own types (and enums, tuples), but a datetime or a dataclass raises
    ``TypeError`` instead of being converted: a caller falls back to its model's own JSON form for those."""
    return orjson.dumps(value, option=_PLAIN_OPTS)


def dumps_readable(value: Any) -> bytes:
    """Indented, with a final newline: for files people read and diff (a JSON site file)."""
    return orjson.dumps(value, option=_OPTS | orjson.OPT_INDENT_2) + b"\n"


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    return orjson.loads(data)
