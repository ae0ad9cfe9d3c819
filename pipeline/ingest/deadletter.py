"""Dead-letter records (:class:`pipeline.schemas.DeadLetter`, version 1): the original bytes and the reason."""

from __future__ import annotations

import base64
from typing import Literal

from pipeline import serde


def dead_letter(
    *,
    source: Literal["mqtt", "hook"],
    reason_code: str,
    reason: str,
    arrived_ms: int,
    payload: bytes,
    device: str | None = None,
    camera: str | None = None,
    mqtt_topic: str | None = None,
    index: int | None = None,
    instrument: str | None = None,
) -> bytes:
    """Serialised DeadLetter; built as a dict because it runs on the bridge's error path at flood rates."""
    return serde.dumps(
        {
            "v": 1,
            "source": source,
            "reason_code": reason_code,
            "reason": reason,
            "arrived_ms": arrived_ms,
            "device": device,
            "camera": camera,
            "mqtt_topic": mqtt_topic,
            "index": index,
            "payload_b64": base64.b64encode(payload).decode(),
            **({"instrument": instrument} if instrument is not None else {}),
        }
    )
