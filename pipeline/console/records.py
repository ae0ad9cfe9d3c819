"""Records the console writes to Kafka (version 1, keyed by site), next to the :class:`~pipeline.schemas.Ack` it
writes on the acks topic exactly as the ack link does.

* :class:`AuditRecord` on the audit topic: every action a console user takes (and every login, refused login and
  refused request), who, when, what, from where. The sink writes it to InfluxDB (measurement ``audit``).
* :class:`VerdictRecord` on the verdicts topic: a hygiene alert marked confirmed or a false positive. Readers fold
  it into the alert through :func:`pipeline.detectors.kitchen.apply_verdict`.
* :class:`ResolutionRecord` on the resolutions topic: the corrective action and the disposition of the food
  (HACCP), which closes the case in the console.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline import serde
from pipeline.schemas import Ack
from pipeline.sinks import lineproto
from pipeline.topics import Topics

Disposition = Literal["use", "use_within", "discard"]


class AuditRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    at_ms: int
    user: str = Field(max_length=200)
    role: str = ""
    action: str = Field(description="login, login_failed, logout, ack, resolve, verdict, denied, csrf_refused")
    ok: bool = True
    remote: str = Field("", description="client address as the console saw it (X-Forwarded-For when trusted)")
    user_agent: str = Field("", max_length=300)
    site: str = ""
    alert_id: str = ""
    detail: dict[str, Any] = Field(default_factory=dict)


class VerdictRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    alert_id: str
    site: str
    verdict: Literal["confirmed", "false_positive"]
    by: str = Field(max_length=200)
    role: str = ""
    note: str = Field("", max_length=2000)
    at_ms: int


class ResolutionRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    alert_id: str
    site: str
    by: str = Field(max_length=200)
    role: str = ""
    corrective_action: str = Field(min_length=1, max_length=2000)
    disposition: Disposition
    #: ``use_within``: hours the food may still be used (e.g. 4 h for chilled food that warmed up).
    use_within_h: float | None = Field(None, gt=0, le=24 * 30)
    quantity: float | None = Field(None, ge=0)
    unit: str = Field("", max_length=20)
    at_ms: int

    @model_validator(mode="after")
    def _limit_needed(self) -> ResolutionRecord:
        if self.disposition == "use_within" and self.use_within_h is None:
            raise ValueError("disposition 'use_within' needs use_within_h (hours)")
        return self


# -- InfluxDB points (written by `larder sink`; schema in docs/console.md) --------------------------------------


def ack_line(ack: Ack) -> str:
    """``ack`` -- tags ``site, via, role``; fields ``alert_id, by, note, token_id``; time = ``at_ms``."""
    return lineproto.record_line(
        "ack",
        {"site": ack.site, "via": ack.via, "role": ack.role},
        {"alert_id": ack.alert_id, "by": ack.by, "note": ack.note, "token_id": ack.token_id},
        lineproto.sub_ms(ack.at_ms, ack.alert_id, ack.via, ack.by, ack.token_id),
    )


def audit_line(a: AuditRecord) -> str:
    """``audit`` -- tags ``action, ok, role, site``; fields ``user, remote, user_agent, alert_id, detail``."""
    return lineproto.record_line(
        "audit",
        {"action": a.action, "ok": "true" if a.ok else "false", "role": a.role, "site": a.site},
        {
            "user": a.user,
            "remote": a.remote,
            "user_agent": a.user_agent,
            "alert_id": a.alert_id or None,
            "detail": serde.dumps(a.detail).decode(),
        },
        lineproto.sub_ms(a.at_ms, a.user, a.action, a.alert_id, a.remote),
    )


def verdict_line(v: VerdictRecord) -> str:
    return lineproto.record_line(
        "verdict",
        {"site": v.site, "verdict": v.verdict, "role": v.role},
        {"alert_id": v.alert_id, "by": v.by, "note": v.note},
        lineproto.sub_ms(v.at_ms, v.alert_id, v.verdict, v.by),
    )


def resolution_line(r: ResolutionRecord) -> str:
    return lineproto.record_line(
        "resolution",
        {"site": r.site, "disposition": r.disposition, "role": r.role},
        {
            "alert_id": r.alert_id,
            "by": r.by,
            "corrective_action": r.corrective_action,
            "use_within_h": r.use_within_h,
            "quantity": r.quantity,
            "unit": r.unit or None,
        },
        lineproto.sub_ms(r.at_ms, r.alert_id, r.by),
    )


def sink_lines(topics: Topics, topic: str, data: Any) -> list[str] | None:
    """The sink's lines for a console-side topic, or ``None`` if ``topic`` is not one of them."""
    if topic == topics.acks:
        return [ack_line(Ack.model_validate(data))]
    if topic == topics.audit:
        return [audit_line(AuditRecord.model_validate(data))]
    if topic == topics.verdicts:
        return [verdict_line(VerdictRecord.model_validate(data))]
    if topic == topics.resolutions:
        return [resolution_line(ResolutionRecord.model_validate(data))]
    return None
