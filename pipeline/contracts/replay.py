"""Contract 3, the replay file (JSONL), and the ground-truth file that goes with a simulated recording.

``larder simulate`` and ``larder record`` write these files, ``larder replay`` and the scorer read them; the
line format is validated by :class:`~pipeline.contracts.models.ReplayLine`. Ground truth (:class:`Truth`) is the
list of alerts a simulated scenario must produce, one JSON object a line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline import serde
from pipeline.contracts.models import ReplayLine, ms_to_iso, to_ms, ts_to_ms

LineKind = Literal["mqtt", "hook", "end"]


@dataclass(frozen=True, slots=True)
class Line:
    """One contract-3 line: a device publish, a camera hook request, or the end marker.

    ``source`` is the device id (mqtt) or the camera id (hook); ``body`` the payload or hook body.
    """

    at_ms: int
    kind: LineKind
    source: str = ""
    body: Any = None

    def to_json(self) -> dict[str, Any]:
        at = ms_to_iso(self.at_ms)
        if self.kind == "mqtt":
            return {"at": at, "mqtt": {"device": self.source, "payload": self.body}}
        if self.kind == "hook":
            return {"at": at, "hook": {"camera": self.source, "body": self.body}}
        return {"at": at, "end": True}

    def dumps(self) -> bytes:
        return serde.dumps(self.to_json())

    @staticmethod
    def parse(raw: bytes | str) -> Line:
        """Validate one JSONL line against contract 3 (:class:`~pipeline.contracts.models.ReplayLine`)."""
        obj = ReplayLine.model_validate(serde.loads(raw))
        at = to_ms(obj.at)
        if obj.mqtt is not None:
            return Line(at, "mqtt", obj.mqtt.device, obj.mqtt.payload)
        if obj.hook is not None:
            return Line(at, "hook", obj.hook.camera, obj.hook.body)
        return Line(at, "end")


@dataclass(frozen=True, slots=True)
class Truth:
    """One alert the scenario must produce: the physical onset of the condition and when it ended.

    ``opened_at_ms`` is the event time at which the condition began (e.g. the first reading above the limit);
    a detector may open the alert up to ``max_delay_s`` later (its rule's delay). ``resolved_at_ms`` is None
    when the condition still holds at the end of the scenario.
    """

    rule: str
    subject: str
    site: str
    opened_at_ms: int
    resolved_at_ms: int | None
    max_delay_s: float = 0.0
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": self.rule,
            "subject": self.subject,
            "site": self.site,
            "opened_at": ms_to_iso(self.opened_at_ms),
            "resolved_at": ms_to_iso(self.resolved_at_ms) if self.resolved_at_ms is not None else None,
            "max_delay_s": self.max_delay_s,
        }
        if self.note:
            out["note"] = self.note
        return out

    @staticmethod
    def from_json(obj: dict[str, Any]) -> Truth:
        def ms(v: Any) -> int | None:
            return None if v is None else ts_to_ms(v)

        opened = ms(obj["opened_at"])
        assert opened is not None
        return Truth(
            rule=obj["rule"],
            subject=obj["subject"],
            site=obj["site"],
            opened_at_ms=opened,
            resolved_at_ms=ms(obj.get("resolved_at")),
            max_delay_s=float(obj.get("max_delay_s", 0.0)),
            note=obj.get("note", ""),
        )


def write_lines(path: Path, lines: Iterable[Line]) -> int:
    n = 0
    with path.open("wb") as f:
        for line in lines:
            f.write(line.dumps() + b"\n")
            n += 1
    return n


def read_lines(path: Path) -> Iterator[Line]:
    """Read a contract-3 file, naming the line number of anything that is not a valid replay line."""
    with path.open("rb") as f:
        for no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield Line.parse(raw)
            except Exception as exc:
                raise ValueError(f"{path}:{no}: not a contract-3 replay line: {exc}") from None


def write_truth(path: Path, truth: Iterable[Truth]) -> None:
    path.write_bytes(b"".join(serde.dumps(t.to_json()) + b"\n" for t in truth))


def read_truth(path: Path) -> list[Truth]:
    out = []
    for no, raw in enumerate(path.read_bytes().splitlines(), 1):
        if raw.strip():
            try:
                out.append(Truth.from_json(serde.loads(raw)))
            except Exception as exc:
                raise ValueError(f"{path}:{no}: not a ground-truth line: {exc}") from None
    return out
