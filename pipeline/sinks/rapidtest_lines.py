"""InfluxDB points for rapid-test results (contract 6): measurement ``rapid_test``.

Tags (what dashboards and the daily record group by): ``site``, ``instrument``, ``test_item``, ``outcome`` (the
result: ``result`` is a column name of Flux tables),
``stage``. Fields: ``result_id``, ``sample_id`` (results of one sample share it: the link), ``sample_name``,
``food_category``, ``stall``, ``supplier``, ``trace_code``, ``method``, ``value``, ``unit``, ``limit``,
``limit_basis``, ``operator``, ``disposition``, ``quantity_kg``. Time: ``tested_at`` in nanoseconds plus a
sub-millisecond offset from the result id (:func:`~pipeline.sinks.lineproto.sub_ms`), so two results of one
instrument in the same millisecond are two points, and a result written twice stays one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.sinks.lineproto import line, sub_ms


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def rapid_test_line(item: Mapping[str, Any]) -> str | None:
    ts = item.get("ts_ms")
    result_id = item.get("result_id")
    if type(ts) is not int or not isinstance(result_id, str):
        return None  # the worker dead-letters such items; the sink only skips them
    disposition = item.get("disposition")
    disposition = disposition if isinstance(disposition, dict) else {}
    return line(
        "rapid_test",
        {
            "site": _str(item.get("site")),
            "instrument": _str(item.get("instrument")),
            "test_item": _str(item.get("test_item")),
            "outcome": _str(item.get("result")),
            "stage": _str(item.get("stage")) or "initial",
        },
        {
            "result_id": result_id,
            "sample_id": _str(item.get("sample_id")),
            "sample_name": _str(item.get("sample_name")),
            "food_category": _str(item.get("food_category")),
            "stall": _str(item.get("stall")),
            "supplier": _str(item.get("supplier")),
            "trace_code": _str(item.get("trace_code")),
            "method": _str(item.get("method")),
            "value": _num(item.get("value")),
            "unit": _str(item.get("unit")),
            "limit": _num(item.get("limit")),
            "limit_basis": _str(item.get("limit_basis")),
            "operator": _str(item.get("operator")),
            "disposition": _str(disposition.get("action")),
            "quantity_kg": _num(disposition.get("quantity_kg")),
        },
        sub_ms(ts, item.get("instrument"), result_id),
    )


def rapid_test_lines(value: Mapping[str, Any]) -> Iterable[str]:
    """Lines for one RecordBatch record of the rapid-tests topic; ticks give none."""
    if value.get("kind") != "rapid_tests":
        return
    for item in value.get("items", ()):
        if isinstance(item, Mapping) and (out := rapid_test_line(item)) is not None:
            yield out
