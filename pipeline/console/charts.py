"""Server-side SVG charts: no JavaScript library, nothing to build, prints and works on any phone.

:func:`temperature_chart` draws the asset's temperature around an alert with its limits and the excursion
shaded; :func:`sparkline` is the 24 h curve on the site page. Output is a self-contained ``<svg>`` string; every
text in it is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from zoneinfo import ZoneInfo

Point = tuple[int, float]  # (ms, value)


@dataclass(frozen=True)
class Limit:
    label: str
    value: float
    kind: str = "high"  # high | low: colour and which side is outside


def _nice_range(lo: float, hi: float) -> tuple[float, float, float]:
    """Axis bounds and a tick step of 1, 2 or 5 x 10^n covering [lo, hi] with ~5 ticks."""
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    raw = (hi - lo) / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step, step


def temperature_chart(
    points: Sequence[Point],
    *,
    start_ms: int,
    end_ms: int,
    limits: Sequence[Limit] = (),
    shade: tuple[int, int] | None = None,
    marks: Sequence[tuple[int, str]] = (),
    tz: str = "UTC",
    width: int = 720,
    height: int = 260,
    title: str = "",
) -> str:
    left, right, top, bottom = 46, 12, 14, 30
    pw, ph = width - left - right, height - top - bottom
    values = [v for _, v in points] + [lim.value for lim in limits]
    lo, hi, step = _nice_range(min(values, default=0.0), max(values, default=10.0))
    span = max(1, end_ms - start_ms)

    def x(ms: int) -> float:
        return left + (ms - start_ms) / span * pw

    def y(v: float) -> float:
        return top + (hi - v) / (hi - lo) * ph

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" xmlns="http://www.w3.org/2000/svg"'
        f' aria-label="{escape(title or "temperature")}">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="plot"/>',
    ]
    if shade is not None:
        a, b = max(shade[0], start_ms), min(shade[1], end_ms)
        if b > a:
            parts.append(f'<rect x="{x(a):.1f}" y="{top}" width="{x(b) - x(a):.1f}" height="{ph}" class="excursion"/>')
    tick = lo
    while tick <= hi + 1e-9:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" class="ylab">{tick:g}</text>')
        tick += step
    zone = ZoneInfo(tz)
    hours = span / 3_600_000
    every = next(h for h in (0.25, 0.5, 1, 2, 3, 6, 12, 24, 48) if hours / h <= 7) * 3_600_000
    t = (start_ms // int(every) + 1) * int(every)
    while t < end_ms:
        label = datetime.fromtimestamp(t / 1000, tz=UTC).astimezone(zone).strftime("%H:%M")
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{top + ph}" class="grid"/>')
        parts.append(f'<text x="{x(t):.1f}" y="{height - 10}" class="xlab">{label}</text>')
        t += int(every)
    for lim in limits:
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y(lim.value):.1f}" y2="{y(lim.value):.1f}"'
            f' class="limit {lim.kind}"/>'
        )
        parts.append(
            f'<text x="{left + pw - 4}" y="{y(lim.value) - 4:.1f}" class="limlab {lim.kind}">'
            f"{escape(lim.label)} {lim.value:g} °C</text>"
        )
    for ms, label in marks:
        if start_ms <= ms <= end_ms:
            parts.append(f'<line x1="{x(ms):.1f}" x2="{x(ms):.1f}" y1="{top}" y2="{top + ph}" class="mark"/>')
            # Near the right edge the label goes to the left of its line, so it is not cut off.
            right_side = x(ms) < left + pw - 90
            anchor = f'x="{x(ms) + 3:.1f}"' if right_side else f'x="{x(ms) - 3:.1f}" text-anchor="end"'
            parts.append(f'<text {anchor} y="{top + 11}" class="marklab">{escape(label)}</text>')
    if points:
        path = " ".join(f"{'M' if i == 0 else 'L'}{x(ms):.1f},{y(v):.1f}" for i, (ms, v) in enumerate(points))
        parts.append(f'<path d="{path}" class="series"/>')
    else:
        parts.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" class="empty">no readings in this window</text>')
    parts.append("</svg>")
    return "".join(parts)


def sparkline(points: Sequence[Point], *, start_ms: int, end_ms: int, limits: Sequence[float] = ()) -> str:
    w, h, pad = 140, 30, 2
    if not points:
        return f'<svg class="spark" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg"></svg>'
    values = [v for _, v in points]
    lo, hi = min([*values, *limits]), max([*values, *limits])
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    span = max(1, end_ms - start_ms)

    def x(ms: int) -> float:
        return pad + (ms - start_ms) / span * (w - 2 * pad)

    def y(v: float) -> float:
        return pad + (hi - v) / (hi - lo) * (h - 2 * pad)

    lims = "".join(f'<line x1="0" x2="{w}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="limit"/>' for v in limits)
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(ms):.1f},{y(v):.1f}" for i, (ms, v) in enumerate(points))
    return (
        f'<svg class="spark" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">{lims}'
        f'<path d="{path}" class="series"/></svg>'
    )
