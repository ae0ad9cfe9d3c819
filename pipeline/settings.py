"""The one settings object, read at the edge (CLI entry points, test fixtures) and passed down.

Every field can be set from the environment with the ``LARDER_`` prefix; nested groups use ``__``,
e.g. ``LARDER_KAFKA__PORT=19092`` or ``LARDER_INFLUX__URL=https://eu-central-1-1.aws.cloud2.influxdata.com``.
Secrets that the local stack generates (InfluxDB password, bridge MQTT password, ack-link key) live in
``<state_dir>/secrets.json`` (mode 0600) and are merged in by :func:`load_settings` unless the
environment already sets them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline import serde


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "larder"


def _default_state() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "larder"


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Group):
    version: str = "4.1.1"
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    heap_mb: int = Field(512, le=512, description="the broker's -Xmx; the local stack is capped at 512 MB")
    bootstrap: str | None = Field(None, description="external brokers; when set, `stack` does not manage Kafka")
    brokers: int = Field(
        1,
        ge=1,
        le=5,
        description="local stack: KRaft nodes on loopback (node n listens on port + 2(n-1), controller likewise)",
    )
    replication: int | None = Field(
        None,
        ge=1,
        description="copies of each partition of Larder's topics; default min(3, brokers); set it for "
        "an external cluster (deploy/compose.yaml: 3)",
    )
    min_insync: int | None = Field(None, ge=1, description="topics' min.insync.replicas; default 2 with 3+ copies")

    def node_ports(self, node: int) -> tuple[int, int]:
        """(client port, controller port) of local node ``node`` (1-based)."""
        return self.port + 2 * (node - 1), self.controller_port + 2 * (node - 1)

    @property
    def bootstrap_servers(self) -> str:
        if self.bootstrap:
            return self.bootstrap
        return ",".join(f"{self.host}:{self.node_ports(n)[0]}" for n in range(1, self.brokers + 1))

    @property
    def replication_factor(self) -> int:
        """Copies of every partition: three where there are three brokers (a broker loss is then no outage)."""
        return self.replication or min(3, self.brokers)

    @property
    def min_insync_replicas(self) -> int:
        """With three copies, acks=all waits for two: one broker may fail without refusing writes or losing any."""
        return self.min_insync or (2 if self.replication_factor >= 3 else 1)


class InfluxSettings(_Group):
    version: str = "1.8.10"
    host: str = "127.0.0.1"
    port: int = 8086
    rpc_port: int = 8088
    url: str | None = Field(None, description="external InfluxDB (2.x/Cloud); when set, `stack` does not manage it")
    database: str = "larder"
    retention_policy: str = "autogen"
    org: str = "-"
    user: str = "larder"
    password: SecretStr | None = None
    token: SecretStr | None = Field(None, description="InfluxDB 2.x token; defaults to user:password (1.8)")
    bucket_override: str | None = Field(None, alias="bucket")

    @property
    def base_url(self) -> str:
        return self.url or f"http://{self.host}:{self.port}"

    @property
    def bucket(self) -> str:
        return self.bucket_override or f"{self.database}/{self.retention_policy}"

    def token_value(self) -> str:
        if self.token is not None:
            return self.token.get_secret_value()
        password = self.password.get_secret_value() if self.password else ""
        return f"{self.user}:{password}"


class MqttSettings(_Group):
    host: str = "127.0.0.1"
    port: int = 1883
    bridge_user: str = Field(
        "larder-bridge",
        description="prefix of the bridge instances' MQTT users: instance X logs in as <bridge_user>-X",
    )
    bridge_password: SecretStr | None = Field(
        None, description="master secret the bridge instances' passwords and shared group are derived from"
    )
    # Mosquitto drops queued QoS 1 messages past 1,000 per client by default; a bridge that is away for a
    # few minutes at fleet rates needs far more. 2 M messages / 512 MiB is ~30 min of 1,000 readings/s.
    max_queued_messages: int = 2_000_000
    max_queued_bytes: int = 512 * 1024 * 1024
    external: bool = Field(False, description="the broker is run elsewhere; `stack` does not manage it")
    # Two deployments must not share a broker: a bridge dead-letters every device its site file lacks. A second
    # broker on one host (one per parallel test process, or an MQTT tier of independent brokers) needs its own
    # password file, ACL, sessions, pid and log.
    broker_id: str = Field(
        "",
        pattern=r"^[A-Za-z0-9_-]{0,32}$",
        description="names a second broker on this host: its files in <state_dir>/mosquitto-<id>; default: none",
    )
    # Mosquitto keeps sessions, queued and in-flight messages in memory and writes them out every this many
    # seconds (and on SIGTERM). A kill -9 loses what it acknowledged to devices since the last save and had not
    # handed to the bridge yet (docs/ingest.md). Saving every N changes instead bounds that by a count, but each
    # save rewrites the whole state: with a bridge away and a growing queue that was measured to stall the broker
    # (891 saves in one test run; PUBACKs unprocessed for seconds, 13,872 readings delivered twice).
    autosave_interval_s: int = Field(
        10, gt=0, description="broker persistence: save every this many seconds (bounds a kill -9's loss)"
    )

    def bridge_login(self, instance: str) -> tuple[str, str]:
        """(user, password) of one bridge instance. Each instance has its own user (Mosquitto binds the client
        id to the user, so instances never take each other's sessions); the password is derived from the
        master secret, so the broker's registration and the bridge agree without storing one per instance."""
        return f"{self.bridge_user}-{instance}", self._derive(f"instance:{instance}")

    def shared_group(self) -> str:
        """The bridges' shared-subscription group: derived from the master secret, so no device can guess it
        (a member of the group takes its share of every reading)."""
        return f"larder-{self._derive('group')[:20]}"

    def _derive(self, what: str) -> str:
        if self.bridge_password is None:
            raise RuntimeError("no bridge master secret: load settings with pipeline.settings.load_settings()")
        key = self.bridge_password.get_secret_value().encode()
        return hmac.new(key, what.encode(), hashlib.sha256).hexdigest()[:32]


class IngestSettings(_Group):
    """`larder bridge` and `larder hooks` (see docs/ingest.md)."""

    # 20 ms: at 20,000 readings/s that makes records of ~100 readings per partition, which cost the worker
    # 57 µs a reading against 81 µs at 5 ms (~25 a record; benchmarks.detection), for 15 ms more latency.
    linger_ms: float = Field(20.0, ge=0, description="how long the bridge gathers readings before producing")
    max_inflight: int = Field(20_000, gt=0, description="bridge: messages received but not yet acked to MQTT")
    max_inflight_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="bridge: payload bytes of those messages (store-and-forward uploads carry up to 1,000 readings)",
    )
    max_batch_items: int = Field(2_000, gt=0, description="most items in one Kafka record (RecordBatch)")
    future_skew_s: float = Field(300.0, ge=0, description="readings/events further in the future are refused")
    ts_floor: AwareDatetime = Field(
        datetime(2000, 1, 1, tzinfo=UTC),
        description="readings/events timestamped before this are refused as bad_timestamp (clock never set)",
    )
    bridge_instance: str = Field(
        "1",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="this bridge's name; it logs in as <mqtt.bridge_user>-<instance> (registered by `stack up`)",
    )
    bridge_group: str | None = Field(
        None, description="shared-subscription group; default: derived from the bridge master secret (unguessable)"
    )
    bridge_shared: bool = Field(
        False,
        description="shared subscription (several bridges split the load; loses messages across a broker "
        "restart in Mosquitto 2.0.11, docs/ingest.md) or, by default, one bridge with a plain subscription",
    )
    bridge_metrics_port: int = 9480
    hooks_host: str = "127.0.0.1"
    hooks_port: int = 8480
    hooks_dedup_size: int = Field(100_000, gt=0, description="(camera, event id) pairs the hooks remember")


class NotifySettings(_Group):
    """`larder notifier`, `larder sink` and `larder api`: alert delivery and the InfluxDB sink (docs/alerts.md)."""

    sms_driver: Literal["http", "twilio"] = Field("http", description="generic templated HTTP gateway or Twilio")
    sms_url: str = Field("http://127.0.0.1:9400/sms", description="http driver: POST target; twilio: API base URL")
    sms_template: str = Field(
        '{"to": "{to}", "text": "{text}", "id": "{id}"}',
        description="http driver: JSON body; {to} {text} {id} in string values are replaced",
    )
    sms_token: SecretStr | None = Field(None, description="http driver: sent as 'Authorization: Bearer <token>'")
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr | None = None
    twilio_from: str = ""
    webhook_secret: SecretStr | None = Field(None, description="HMAC key for webhooks without their own secret")
    sms_reply_token: SecretStr | None = Field(None, description="shared secret the SMS gateway puts in reply URLs")
    public_url: str = Field("http://127.0.0.1:8490", description="base of the ack links in messages")
    api_host: str = "127.0.0.1"
    api_port: int = 8490
    link_ttl_s: int = Field(24 * 3600, gt=0, description="how long an ack link stays valid")
    group_window_s: float = Field(30.0, ge=0, description="notifications to one recipient within this go together")
    rate_limit: int = Field(6, gt=0, description="messages per recipient per rate window (overflow is merged)")
    rate_window_s: float = Field(3600.0, gt=0)
    summary_over: int = Field(5, gt=0, description="a message about more alerts than this becomes a summary")
    attempts_before_fallback: int = Field(3, gt=0)
    backoff_s: float = Field(1.0, gt=0, description="first retry delay; doubles up to backoff_max_s")
    backoff_max_s: float = Field(60.0, gt=0)
    http_timeout_s: float = Field(10.0, gt=0)
    sink_batch: int = Field(5_000, gt=0, description="points per InfluxDB write")
    sink_gzip: bool = True
    sink_linger_ms: int = Field(
        200, ge=0, description="the broker may hold the sink's fetch this long to fill it: fewer, larger writes"
    )


#: Food-safety records must be kept at least two years (GB 31605 / 日管控 records); Larder refuses less.
MIN_RETENTION_DAYS = 730


class ReportSettings(_Group):
    """The daily temperature record (`larder report`, docs/reports.md)."""

    retention_days: int = Field(
        3 * 365,
        ge=MIN_RETENTION_DAYS,
        description="kept this long: InfluxDB's retention policy for readings and the report archive; >= 2 years",
    )
    dir: Path | None = Field(None, description="report archive; default <state_dir>/reports")
    after_midnight_min: float = Field(
        30.0, ge=0, description="`report serve` makes a site's day this long after its local midnight (late data)"
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="processes that make a batch of records in parallel (`report serve`); a site's days stay in one, "
        "in order; rendering is CPU-bound, so about one per core",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LARDER_", env_nested_delimiter="__", frozen=True, extra="ignore")

    cache_dir: Path = Field(default_factory=_default_cache, description="downloads and builds, reusable")
    state_dir: Path = Field(default_factory=_default_state, description="data, logs, generated configs")
    site_config: Path = Field(Path("sites.yaml"), description="contract 5: sites, devices, cameras, recipients")
    topic_prefix: str = "larder"
    readings_partitions: int = 4
    kafka: KafkaSettings = KafkaSettings()
    influx: InfluxSettings = InfluxSettings()
    mqtt: MqttSettings = MqttSettings()
    ingest: IngestSettings = IngestSettings()
    notify: NotifySettings = NotifySettings()
    reports: ReportSettings = ReportSettings()
    ack_key: SecretStr | None = None

    @cached_property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @cached_property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @cached_property
    def conf_dir(self) -> Path:
        return self.state_dir / "conf"

    @property
    def report_dir(self) -> Path:
        return self.reports.dir or self.state_dir / "reports"


_SECRET_FIELDS = {
    ("influx", "password"): 24,
    ("mqtt", "bridge_password"): 24,
    ("", "ack_key"): 32,
}


def secrets_path(state_dir: Path) -> Path:
    return state_dir / "secrets.json"


def brokers_file(state_dir: Path) -> Path:
    """How many Kafka nodes `larder stack up` started: every later process finds all of them without a flag."""
    return state_dir / "conf" / "kafka" / "brokers"


def _recorded_brokers(state_dir: Path) -> int | None:
    try:
        return int(brokers_file(state_dir).read_text().strip())
    except (OSError, ValueError):
        return None


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, filling generated secrets from the state folder.

    Missing secrets are generated once and kept (0600), so every process on the machine agrees on them. The
    number of local Kafka nodes comes from the environment, else from what `larder stack up` recorded.
    """
    base = Settings(**overrides)  # type: ignore[arg-type]
    if "LARDER_KAFKA__BROKERS" not in os.environ and base.kafka.bootstrap is None:
        recorded = _recorded_brokers(base.state_dir)
        if recorded is not None and recorded != base.kafka.brokers:
            kafka = base.kafka.model_copy(update={"brokers": recorded})
            base = Settings(**{**base.model_dump(by_alias=True), "kafka": kafka.model_dump()})  # type: ignore[arg-type]
    path = secrets_path(base.state_dir)
    stored: dict[str, str] = serde.loads(path.read_bytes()) if path.exists() else {}
    changed = False
    update: dict[str, dict[str, object] | object] = {}
    for (group, name), size in _SECRET_FIELDS.items():
        key = f"{group}.{name}" if group else name
        current = getattr(getattr(base, group), name) if group else getattr(base, name)
        if current is not None:
            continue
        if key not in stored:
            stored[key] = secrets.token_urlsafe(size)
            changed = True
        if group:
            grp = update.setdefault(group, getattr(base, group).model_dump(by_alias=True))
            assert isinstance(grp, dict)
            grp[name] = stored[key]
        else:
            update[name] = stored[key]
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(serde.dumps(stored))
        tmp.chmod(0o600)
        tmp.replace(path)
    if not update:
        return base
    return Settings(**{**base.model_dump(by_alias=True), **update})  # type: ignore[arg-type]
