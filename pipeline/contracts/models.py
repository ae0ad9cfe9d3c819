"""The typed models behind every contract of Larder (part of :mod:`pipeline.contracts`).

Contracts 1-4 of the design (device payloads, camera hooks, replay files, alert records) and the internal
Kafka formats that other consumers may read (the reading/event batch envelope, dead letters, annotations,
deliveries). How those become Kafka record values and replay-file lines is in :mod:`pipeline.contracts.records`
and :mod:`pipeline.contracts.replay`. Contract 5, the site configuration, lives in :mod:`pipeline.siteconfig`
because it carries its own YAML loader. A change to anything here is a versioned change: bump the ``v`` field
and document it in the README.

Internal times are integer **milliseconds since the Unix epoch, UTC** (``*_ms`` fields): exact, cheap to
compare and hash, and identical in every process, so alert ids computed from them are reproducible.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
)

# ---------------------------------------------------------------------------------------------------------------
# Limits that are part of the contracts
# ---------------------------------------------------------------------------------------------------------------

#: EN 12830 measuring span for temperature recorders; anything outside is a broken sensor, not a reading.
TEMP_MIN_C = -80.0
TEMP_MAX_C = 85.0
#: The largest integer a field may carry (``seq``, ``count``): Kafka consumers, the worker's state and InfluxDB
#: read them as signed 64-bit integers.
SEQ_MAX = 2**63 - 1
#: Largest store-and-forward batch a device may send in one MQTT message (contract 1).
MAX_DEVICE_BATCH = 1000
#: Largest camera event batch in one hook request (contract 2).
MAX_HOOK_BATCH = 1000
#: Largest MQTT packet (Mosquitto's ``max_packet_size``) and hook request body. A refused one is kept whole in
#: its dead letter (base64: 4/3 of it), and a record of its readings or events is about its size, both under
#: Kafka's default ``message.max.bytes`` (1 MB). 1,000 readings of contract 1 take ~120 KB.
MAX_MESSAGE_BYTES = 512 * 1024
MAX_HOOK_BODY = MAX_MESSAGE_BYTES
#: Hook requests whose X-Larder-Timestamp is further than this from now are refused (contract 2).
HOOK_TIMESTAMP_WINDOW_S = 300
#: Identifiers of devices, cameras, sites, assets and kitchens: they become MQTT usernames and topic levels.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

MQTT_READINGS_TOPIC = "larder/v1/devices/{device}/readings"
HOOK_PATH = "/v1/kitchen/events"


def topic_id(template: str, topic: str) -> str | None:
    """The id an MQTT ``topic`` carries in the one ``{...}`` level of ``template`` (``MQTT_READINGS_TOPIC``,
    ``MQTT_RESULTS_TOPIC``), or ``None`` if the topic is not of that form or the id is empty or spans levels."""
    prefix, suffix = template.split("{", 1)[0], template.split("}", 1)[1]
    if topic.startswith(prefix) and topic.endswith(suffix):
        ident = topic[len(prefix) : len(topic) - len(suffix)]
        if ident and "/" not in ident:
            return ident
    return None


Id = Annotated[str, Field(pattern=ID_PATTERN)]


def to_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000) if value.tzinfo else int(value.replace(tzinfo=UTC).timestamp() * 1000)


def ms_to_iso(ms: int) -> str:
    """RFC 3339 in UTC with millisecond precision, the form every timeline and webhook shows."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_ts(value: Any) -> Any:
    """``ts`` is RFC 3339 *with a zone* or Unix seconds; a zoneless string is ambiguous and refused."""
    if isinstance(value, bool):
        raise ValueError("ts must be an RFC 3339 string or Unix seconds, not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("ts must be finite")
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:  # year past 9999 or before 1: not a time
            raise ValueError(f"ts is out of range: {value!r}") from exc
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"ts is not RFC 3339: {value!r}") from exc
        if parsed.tzinfo is None:
            raise ValueError("ts must carry a time zone (e.g. 'Z' or '+08:00')")
        return parsed
    raise ValueError("ts must be an RFC 3339 string or Unix seconds")


def ts_to_ms(value: Any) -> int:
    """A contract ``ts`` (RFC 3339 with a zone, or Unix seconds) as epoch milliseconds; ``ValueError`` if not one."""
    return to_ms(parse_ts(value))


EventTime = Annotated[datetime, BeforeValidator(parse_ts)]


# ---------------------------------------------------------------------------------------------------------------
# Contract 1: device -> MQTT
# ---------------------------------------------------------------------------------------------------------------


class DeviceReading(BaseModel):
    """One reading as a device publishes it to ``larder/v1/devices/<device-id>/readings`` (QoS 1)."""

    # allow_inf_nan=False: JSON parsers such as orjson refuse NaN, but Python's json and some firmware emit it.
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    ts: EventTime
    seq: StrictInt = Field(ge=0, le=SEQ_MAX)
    # Strict numbers: the contract says "number", so "3.4" (a string) or true is a wrong type, not a reading.
    temp_c: StrictFloat = Field(ge=TEMP_MIN_C, le=TEMP_MAX_C)
    humidity: StrictFloat | None = Field(None, ge=0, le=100)
    battery: StrictFloat | None = Field(None, ge=0, le=1)
    door_open: StrictBool | None = None
    defrost: StrictBool | None = None


class DeviceBatch(BaseModel):
    """A store-and-forward upload: up to :data:`MAX_DEVICE_BATCH` readings in any order.

    The bridge validates each element on its own, so one bad reading dead-letters only itself.
    """

    model_config = ConfigDict(extra="forbid")

    readings: list[Any] = Field(max_length=MAX_DEVICE_BATCH)


# ---------------------------------------------------------------------------------------------------------------
# Contract 2: camera -> hook
# ---------------------------------------------------------------------------------------------------------------


class KitchenEventType(StrEnum):
    PERSON_COUNT = "person_count"
    PERSON_PRESENT = "person_present"
    PERSON_ABSENT = "person_absent"
    STOVE_ON = "stove_on"
    STOVE_OFF = "stove_off"
    NO_HAT = "no_hat"
    NO_MASK = "no_mask"
    NO_UNIFORM = "no_uniform"
    SMOKING = "smoking"
    PHONE = "phone"
    RODENT = "rodent"
    BIN_OPEN = "bin_open"
    FIRE = "fire"


HYGIENE_TYPES = frozenset(
    {
        KitchenEventType.NO_HAT,
        KitchenEventType.NO_MASK,
        KitchenEventType.NO_UNIFORM,
        KitchenEventType.SMOKING,
        KitchenEventType.PHONE,
        KitchenEventType.RODENT,
        KitchenEventType.BIN_OPEN,
        KitchenEventType.FIRE,
    }
)


class CameraEvent(BaseModel):
    """One AI event from a bright-kitchen camera, as POSTed to ``/v1/kitchen/events``."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    event_id: str = Field(min_length=1, max_length=128)
    ts: EventTime
    type: KitchenEventType
    zone: str | None = Field(None, max_length=64)
    confidence: float | None = Field(None, ge=0, le=1)
    count: StrictInt | None = Field(None, ge=0, le=SEQ_MAX)
    image_url: str | None = Field(None, max_length=2048)

    def model_post_init(self, __context: Any) -> None:
        if self.type is KitchenEventType.PERSON_COUNT and self.count is None:
            raise ValueError("person_count events need 'count'")


class CameraEventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Any] = Field(min_length=1, max_length=MAX_HOOK_BATCH)


# ---------------------------------------------------------------------------------------------------------------
# Internal Kafka formats (versioned, readable by other consumers)
# ---------------------------------------------------------------------------------------------------------------


class Reading(BaseModel):
    """A validated reading, enriched from the registry (site/asset/profile never come from the device).

    Field names are short on purpose: hundreds of these travel in one Kafka record.
    """

    model_config = ConfigDict(frozen=True)

    device: str
    site: str
    asset: str
    profile: str
    seq: int
    ts_ms: int
    temp_c: float
    humidity: float | None = None
    battery: float | None = None
    door_open: bool | None = None
    defrost: bool | None = None
    received_ms: int


class KitchenEvent(BaseModel):
    """A validated camera event, enriched with the camera's site and kitchen from the registry."""

    model_config = ConfigDict(frozen=True)

    camera: str
    site: str
    kitchen: str
    event_id: str
    ts_ms: int
    type: KitchenEventType
    zone: str | None = None
    confidence: float | None = None
    count: int | None = None
    image_url: str | None = None
    received_ms: int


BATCH_VERSION = 1


class RecordBatch(BaseModel):
    """The value of one Kafka record on the readings and kitchen-events topics (version 1).

    ``{"v": 1, "kind": "readings", "items": [<Reading>, ...]}``, or
    ``{"v": 1, "kind": "tick", "now_ms": ...}``. Every item of one record belongs to the
    record's partition (``murmur2(key) mod partitions`` with key = device id for readings, kitchen id for
    kitchen events), so a subject's items keep their order and any Kafka client finds its partition. The
    Kafka record key is the key of the first item; consumers must use each item's own key.
    """

    v: Literal[1] = 1
    kind: Literal["readings", "kitchen_events", "kitchen_verdicts", "rapid_tests", "tick"]
    items: list[dict[str, Any]] = Field(default_factory=list)
    #: Only on ``tick`` records: the replay clock's time. Replay publishes one tick into every partition once
    #: everything sent before that instant is in Kafka, so timers fire at the recording's times.
    now_ms: int | None = None


class KitchenVerdict(BaseModel):
    """An item of a ``kitchen_verdicts`` record on the kitchen-events topic: a person's verdict on a hygiene alert,
    routed to the kitchen's partition so the kitchen rules see it in log order with the camera events.

    Written by the console (never by the hooks: a camera cannot judge its own alerts). The accountable record
    is the verdicts topic's; this copy only feeds the rules (:meth:`KitchenDetector.on_verdict_dict`). It takes
    effect on arrival and does not move the kitchen's event-time clock (a verdict is wall-clock, the events may
    be a replayed day)."""

    model_config = ConfigDict(frozen=True)

    kitchen: str
    site: str
    alert_id: str
    verdict: Literal["confirmed", "false_positive"]
    by: str = ""
    at_ms: int


class DeadLetter(BaseModel):
    """What the dead-letter topic holds: the original bytes and why they were refused (version 1)."""

    v: Literal[1] = 1
    source: Literal["mqtt", "hook"]
    reason_code: str
    reason: str
    arrived_ms: int
    device: str | None = None
    camera: str | None = None
    mqtt_topic: str | None = None
    index: int | None = Field(None, description="position inside a store-and-forward or hook batch")
    payload_b64: str
    #: A rapid-test instrument (contract 6); absent on older dead letters.
    instrument: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# Contract 4: alert records and lifecycle events
# ---------------------------------------------------------------------------------------------------------------


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertState(StrEnum):
    OPEN = "open"
    ESCALATED = "escalated"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


def alert_id(rule: str, subject: str, opened_ms: int) -> str:
    """Deterministic id: the same rule, subject and opening event time give the same id in every run."""
    digest = hashlib.blake2b(f"{rule}|{subject}|{opened_ms}".encode(), digest_size=10).hexdigest()
    return f"al-{digest}"


class Alert(BaseModel):
    """Contract 4, one lifecycle event of an alert (keyed by site on the alerts topic).

    ``at_ms`` is the event time of this transition; ``opened_at``/``resolved_at`` are RFC 3339 in UTC.
    Detectors emit ``open`` and ``resolved``; the notifier adds ``escalated`` and ``acknowledged``.
    """

    model_config = ConfigDict(frozen=True)

    alert_id: str
    rule: str
    severity: Severity
    site: str
    subject: str
    state: AlertState
    opened_at: str
    resolved_at: str | None = None
    at_ms: int
    notify: bool = True
    evidence: dict[str, Any] = Field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The public contract-4 shape (timeline, webhooks, API)."""
        return {
            "alert_id": self.alert_id,
            "rule": self.rule,
            "severity": self.severity.value,
            "site": self.site,
            "subject": self.subject,
            "state": self.state.value,
            "opened_at": self.opened_at,
            "resolved_at": self.resolved_at,
            "evidence": self.evidence,
        }


class Annotation(BaseModel):
    """Something true about the data that is not an alert: a masked interval, a gap, late data."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["masked", "gap", "late", "compliance_gap", "duplicate"]
    site: str
    subject: str
    start_ms: int
    end_ms: int
    detail: dict[str, Any] = Field(default_factory=dict)


class Ack(BaseModel):
    """An acknowledgement on the acks topic (keyed by site): who owns the alert now and the corrective action.

    ``token_id`` names the ack link that was used, so a replayed link is refused; ``via`` says how it came in.
    """

    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    alert_id: str
    site: str
    by: str = Field(max_length=200)
    role: str | None = None
    via: Literal["link", "api", "sms", "console"]
    note: str = Field("", max_length=2000, description="corrective action, kept for HACCP records")
    at_ms: int
    token_id: str | None = None


class Delivery(BaseModel):
    """One record of the delivery ledger on the deliveries topic (keyed by ``message_id``), version 1.

    ``planned`` is written (acks=all) before the first send and carries the notification keys
    ``<alert>|<step>|<recipient>`` the message covers and its exact text, so a restarted notifier resends the
    same message with the same idempotency key and never plans those keys again. ``attempt`` records every try
    (channel, status, latency); ``delivered`` / ``failed`` close the message. See docs/alerts.md.
    """

    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    kind: Literal["planned", "attempt", "delivered", "failed"]
    message_id: str
    at_ms: int
    recipient: str = Field(description="recipient id (a hash; names and addresses stay in the site file)")
    recipient_name: str = ""
    role: str = ""
    site: str = Field("", description="the site, or '*' for a message about several sites")
    rule: str = Field("", description="the rule, or '*' for a message about several rules")
    severity: str = ""
    keys: list[str] = Field(default_factory=list)
    alert_ids: list[str] = Field(default_factory=list)
    channels: list[str] = Field(default_factory=list, description="planned: primary first, then fallbacks")
    text: str = ""
    channel: str | None = None
    status: Literal["ok", "retry", "error", "skipped"] | None = None
    http_status: int | None = None
    latency_ms: float | None = None
    attempt: int | None = None
    error: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# Contract 3: replay file lines
# ---------------------------------------------------------------------------------------------------------------


class ReplayMqtt(BaseModel):
    device: str
    payload: Any


class ReplayHook(BaseModel):
    camera: str
    body: Any


class ReplayRapidTest(BaseModel):
    """A contract-6 request: ``instrument`` signs ``body`` (one result or ``{"results": [...]}``)."""

    instrument: str
    body: Any


class ReplayLine(BaseModel):
    """One JSONL line of a recording: ``at`` is when it was sent; exactly one of mqtt/hook/rapid_test/end."""

    model_config = ConfigDict(extra="forbid")

    at: EventTime
    mqtt: ReplayMqtt | None = None
    hook: ReplayHook | None = None
    rapid_test: ReplayRapidTest | None = None
    end: bool | None = None

    def model_post_init(self, __context: Any) -> None:
        given = sum(x is not None for x in (self.mqtt, self.hook, self.rapid_test, self.end))
        if given != 1:
            raise ValueError("a replay line holds exactly one of 'mqtt', 'hook', 'rapid_test' or 'end'")
