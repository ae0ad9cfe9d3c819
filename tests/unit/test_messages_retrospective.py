"""A retrospective alert (found in late data) says so, with its event times; a withdrawn one says it is."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from pipeline.alerts.messages import render_text
from pipeline.alerts.routing import Pending, Person, Send
from pipeline.detectors.device import DeviceDetector
from pipeline.profiles import BUILTIN_PROFILES, device_rules_from
from pipeline.schemas import Severity
from pipeline.siteconfig import Recipient

T0 = 1_795_305_600_000  # 2026-11-22T00:00Z = 08:00 in Asia/Shanghai
M = 60_000


def _text(alert: object, kind: str) -> str:
    pending = Pending(key="k", alert=alert, kind=kind, step=0, enqueued_ms=0, not_before_ms=0)  # type: ignore[arg-type]
    person = Person(id="p", name="p", role="operator", recipient=Recipient(name="p"), rate_limit=10)
    send = Send(message_id="m", person=person, items=(pending,), at_ms=0)
    return render_text(send, link=None, code=None, summary_over=5, tz=ZoneInfo("Asia/Shanghai"))


def test_retrospective_and_withdrawn_messages() -> None:
    det = DeviceDetector(device_rules_from(BUILTIN_PROFILES["chilled"], site="S01", device="d1", profile="chilled"))
    found = det.resolve_alert(
        "coldchain.high",
        Severity.WARNING,
        opened=T0 + 130 * M,
        at=T0 + 182 * M,
        notify=True,
        evidence={"retrospective": True},
    )
    assert "RETROSPECTIVE (found in late data): between 11-22 10:10 and 11-22 11:02" in _text(found, "resolved")
    plain = found.model_copy(update={"evidence": {}})
    assert "RETROSPECTIVE" not in _text(plain, "resolved")
    gone = found.model_copy(update={"evidence": {"withdrawn": True, "retrospective": True}})
    assert "WITHDRAWN" in _text(gone, "resolved")
