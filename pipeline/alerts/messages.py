"""What a message says: one text for SMS and robots, and a JSON body for signed webhooks (pure functions)."""

from __future__ import annotations

from collections import Counter
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.alerts.routing import Pending, Send
from pipeline.schemas import Alert, ms_to_iso

_KIND = {"open": "", "escalated": "ESCALATED ", "reminder": "REMINDER ", "resolved": "RESOLVED "}


def _when(ms: int, tz: ZoneInfo | None) -> str:
    if tz is None:
        return ms_to_iso(ms)
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(tz).strftime("%m-%d %H:%M")


def _line(p: Pending, tz: ZoneInfo | None) -> str:
    a = p.alert
    since = a.evidence.get("opened_ms")
    opened = _when(since if isinstance(since, int) else a.at_ms, tz)
    tail = f" cleared {_when(a.at_ms, tz)}" if p.kind == "resolved" else f" since {opened}"
    if a.evidence.get("withdrawn"):
        tail = " WITHDRAWN: late readings show it did not hold"
    elif a.evidence.get("retrospective"):
        # Found in data that arrived late (a store-and-forward upload after an outage, a reordered delivery):
        # say so, with the event times, so nobody reads it as happening now.
        start = _when(_iso_ms(a.opened_at), tz)
        end = f"and {_when(a.at_ms, tz)}" if a.resolved_at is not None else "and still at the latest reading"
        tail = f" RETROSPECTIVE (found in late data): between {start} {end}"
    return f"{_KIND.get(p.kind, '')}{a.severity.value.upper()} {a.rule} {a.site}/{a.subject}{tail}{_what(a)}"


def _what(a: Alert) -> str:
    """For rapid tests, what was found where: the sample, the test item, the value against its limit, the stall
    (a supervisor acts on the stall and the food, not on a sample id); and why it cleared."""
    if not a.rule.startswith("rapidtest."):
        return ""
    ev = a.evidence
    parts = [str(ev[k]) for k in ("sample_name", "test_item") if ev.get(k)]
    value, limit, unit = ev.get("value"), ev.get("limit"), ev.get("unit") or ""
    if value is not None:
        parts.append(f"{value}{unit}" + (f" (limit {limit}{unit})" if limit is not None else ""))
    if ev.get("stall"):
        parts.append(f"stall {ev['stall']}")
    if a.rule == "rapidtest.recheck_overdue" and a.state.value != "resolved":
        parts.append(f"no recheck within {ev.get('recheck_within_min')} min")
    if a.state.value == "resolved" and ev.get("reason"):
        parts.append(str(ev["reason"]).replace("_", " "))
    return f" ({', '.join(parts)})" if parts else ""


def _iso_ms(iso: str) -> int:
    from datetime import datetime

    return round(datetime.fromisoformat(iso).timestamp() * 1000)


def render_text(
    send: Send, *, link: str | None, code: str | None, summary_over: int, tz: ZoneInfo | None = None
) -> str:
    """One text for SMS and group robots. More than ``summary_over`` alerts become counts, not a list."""
    items = sorted(send.items, key=lambda p: (p.alert.severity.value != "critical", p.alert.site, p.key))
    sites = sorted({p.alert.site for p in items})
    if len(items) > summary_over:
        rules = Counter(p.alert.rule for p in items)
        kinds = Counter(p.kind for p in items)
        crit = sum(1 for p in items if p.critical)
        head = f"[Larder] {len(items)} alerts at {len(sites)} site{'s' if len(sites) != 1 else ''}"
        if crit:
            head += f" ({crit} critical)"
        body = ", ".join(f"{rule} x{n}" for rule, n in rules.most_common())
        shown = ", ".join(sites[:8]) + (f" +{len(sites) - 8} more" if len(sites) > 8 else "")
        extra = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()) if k != "open")
        text = f"{head}: {body}. Sites: {shown}."
        if extra:
            text += f" ({extra})"
    else:
        text = "[Larder] " + "; ".join(_line(p, tz) for p in items) + "."
    if link:
        text += f" Ack: {link}"
    if code:
        text += f" or reply ACK {code}"
    return text


def webhook_body(send: Send, *, text: str, link: str | None) -> dict[str, Any]:
    """The signed webhook's JSON: contract-4 alert records plus why this person is told."""
    return {
        "v": 1,
        "message_id": send.message_id,
        "recipient": {"name": send.person.name, "role": send.person.role},
        "text": text,
        "ack_url": link,
        "alerts": [{**p.alert.record(), "notification": p.kind, "step": p.step, "key": p.key} for p in send.items],
    }
