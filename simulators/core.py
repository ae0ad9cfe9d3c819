"""What every simulator produces: contract-3 replay lines, ground truth, and a site configuration.

Simulators are pure generators. Simulated time is independent of wall time: a week of readings is generated in
well under a second and can be sent at any speed. The same seed gives byte-identical lines, truth and secrets.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline import serde
from pipeline.schemas import ReplayLine, ms_to_iso, to_ms
from pipeline.siteconfig import SiteConfig

LineKind = Literal["mqtt", "hook", "rapid_test", "end"]


@dataclass(frozen=True, slots=True)
class Line:
    """One contract-3 line: a device publish, a camera hook request, an instrument's rapid-test request
    (contract 6), or the end marker.

    ``source`` is the device id (mqtt), the camera id (hook) or the instrument id (rapid_test); ``body`` the
    payload or request body.
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
        if self.kind == "rapid_test":
            return {"at": at, "rapid_test": {"instrument": self.source, "body": self.body}}
        return {"at": at, "end": True}

    def dumps(self) -> bytes:
        return serde.dumps(self.to_json())

    @staticmethod
    def parse(raw: bytes | str) -> Line:
        """Validate one JSONL line against contract 3 (:class:`pipeline.schemas.ReplayLine`)."""
        obj = ReplayLine.model_validate(serde.loads(raw))
        at = to_ms(obj.at)
        if obj.mqtt is not None:
            return Line(at, "mqtt", obj.mqtt.device, obj.mqtt.payload)
        if obj.hook is not None:
            return Line(at, "hook", obj.hook.camera, obj.hook.body)
        if obj.rapid_test is not None:
            return Line(at, "rapid_test", obj.rapid_test.instrument, obj.rapid_test.body)
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
        from pipeline.schemas import _parse_ts

        def ms(v: Any) -> int | None:
            return None if v is None else to_ms(_parse_ts(v))

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


@dataclass
class Scenario:
    """A generated scenario: everything needed to drive the real path and judge the result."""

    name: str
    description: str
    config: SiteConfig
    start_ms: int
    end_ms: int
    lines: Iterable[Line]
    truth: list[Truth] = field(default_factory=list)
    #: The contract-5 document behind ``config``, ready to be written as YAML for the services.
    config_doc: dict[str, Any] = field(default_factory=dict)

    def iter_lines(self) -> Iterator[Line]:
        """The lines in ``at`` order, finished by one ``end`` line at the scenario's end."""
        last = self.start_ms
        for line in self.lines:
            last = max(last, line.at_ms)
            yield line
        yield Line(max(self.end_ms, last), "end")


def write_config(path: Path, doc: dict[str, Any]) -> None:
    """Write a contract-5 site file (mode 0600: it holds the generated device and camera secrets)."""
    import io

    from ruamel.yaml import YAML

    buf = io.StringIO()
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    yaml.dump(doc, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("# Generated by larder simulate; contains simulated device secrets.\n" + buf.getvalue())
    tmp.chmod(0o600)
    tmp.replace(path)


def secret_for(seed: int, ident: str) -> str:
    """A reproducible per-device/camera secret: the same seed gives the same credentials in every run."""
    return hashlib.blake2b(f"larder-sim|{seed}|{ident}".encode(), digest_size=16).hexdigest()


def merge(streams: Iterable[Iterable[Line]]) -> Iterator[Line]:
    """Merge per-device streams (each in ``at`` order) into one stream in ``at`` order; stable on ties."""
    return heapq.merge(*streams, key=lambda line: line.at_ms)


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
