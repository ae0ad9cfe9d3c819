"""Daily local-time windows (defrost schedules, service hours) turned into UTC event-time intervals.

Pure and deterministic: the answer depends only on the zone's rules (tzdata) and ``t``. Windows are whole
minutes and every zone in use has whole-minute offsets, so the answer is the same for every instant of one UTC
minute: results are cached per minute, which makes repeated lookups on the hot path cost a dict hit.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

Windows = tuple[tuple[int, int], ...]

_MINUTE = 60_000


def _intervals(tz: ZoneInfo, windows: Windows, t_ms: int) -> list[tuple[int, int]]:
    local = datetime.fromtimestamp(t_ms / 1000, tz)
    base = datetime(local.year, local.month, local.day)
    out = []
    for day in (-1, 0, 1, 2):
        d0 = base + timedelta(days=day)
        for start, end in windows:
            s = (d0 + timedelta(minutes=start)).replace(tzinfo=tz)
            e_day = d0 if end > start else d0 + timedelta(days=1)
            e = (e_day + timedelta(minutes=end)).replace(tzinfo=tz)
            out.append((int(s.timestamp() * 1000), int(e.timestamp() * 1000)))
    return out


@lru_cache(maxsize=8192)
def _state_at_minute(zone: str, windows: Windows, minute: int) -> tuple[bool, int | None]:
    t = minute * _MINUTE
    ivs = _intervals(ZoneInfo(zone), windows, t)
    containing = [e for s, e in ivs if s <= t < e]
    if containing:
        # Overlapping or back-to-back windows: report the first end; the caller re-asks there.
        return True, min(containing)
    starts = [s for s, _ in ivs if s > t]
    return False, (min(starts) if starts else None)


def window_state(zone: str, windows: Windows, t_ms: int) -> tuple[bool, int | None]:
    """``(inside, next_change_ms)`` for the instant ``t_ms``: whether it lies in a window, and when that changes."""
    if not windows:
        return False, None
    return _state_at_minute(zone, windows, t_ms // _MINUTE)
