"""The worker's outputs on the wire: their JSON (``records.encode``'s plain path for alerts and annotations must
give the bytes of ``model_dump(mode="json")``) and their partitions (``KafkaBatches.send_keyed`` must pick the
partition Kafka's default partitioner picks, where the notifier's own events of the same site go)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import serde
from pipeline.agents.faust.changelog import KafkaBatches
from pipeline.contracts import records
from pipeline.contracts.models import Alert, AlertState, Annotation, Severity
from pipeline.settings import load_settings

_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=8)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=6) | st.integers(0, 9), inner, max_size=3)
    ),
    max_leaves=8,
)
#: What a detector may put into evidence besides JSON's own types: enums, and (the fallback) a datetime.
_evidence = st.dictionaries(
    st.text(max_size=8),
    _json | st.sampled_from(list(Severity)) | st.datetimes(timezones=st.just(UTC)),
    max_size=4,
)


def _model_json(record: Any) -> bytes:
    return serde.dumps(record.model_dump(mode="json"))


@settings(max_examples=300, deadline=None)
@given(
    evidence=_evidence,
    severity=st.sampled_from(list(Severity)),
    state=st.sampled_from(list(AlertState)),
    resolved=st.none() | st.just("2026-12-06T01:00:00.000Z"),
    subject=st.text(min_size=1, max_size=12),
    notify=st.booleans(),
)
def test_an_alert_encodes_to_the_bytes_of_its_model(
    evidence: dict[str, Any], severity: Severity, state: AlertState, resolved: str | None, subject: str, notify: bool
) -> None:
    alert = Alert(
        alert_id="al-0123456789abcdef0123",
        rule="coldchain.high",
        severity=severity,
        site="S01",
        subject=subject,
        state=state,
        opened_at="2026-12-06T00:00:00.000Z",
        resolved_at=resolved,
        at_ms=1_796_000_000_000,
        notify=notify,
        evidence=evidence,
    )
    assert records.encode(alert) == _model_json(alert)
    # Built other ways, the fields are the same and so must be the bytes.
    copied = alert.model_copy(update={"state": AlertState.RESOLVED})
    assert records.encode(copied) == _model_json(copied)
    constructed = Alert.model_construct(**dict(alert))
    assert records.encode(constructed) == _model_json(constructed)
    assert records.read_alert(records.encode(alert)) == Alert.model_validate_json(_model_json(alert))


@settings(max_examples=200, deadline=None)
@given(detail=_evidence, kind=st.sampled_from(["masked", "gap", "late", "compliance_gap", "duplicate"]))
def test_an_annotation_encodes_to_the_bytes_of_its_model(detail: dict[str, Any], kind: Any) -> None:
    note = Annotation(kind=kind, site="S01", subject="dev-1", start_ms=1, end_ms=2, detail=detail)
    assert records.encode(note) == _model_json(note)


def test_a_datetime_in_the_evidence_takes_the_models_way() -> None:
    at = datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=UTC)
    note = Annotation(kind="gap", site="S01", subject="dev-1", start_ms=1, end_ms=2, detail={"at": at})
    assert serde.loads(records.encode(note))["detail"]["at"] == note.model_dump(mode="json")["detail"]["at"]


def test_the_plain_models_json_is_their_fields() -> None:
    """What lets ``encode`` dump their fields as they are: no alias, serializer or computed field, and no extra
    fields. One added to either model must take it out of ``PLAIN_JSON_MODELS``."""
    for model in records.PLAIN_JSON_MODELS:
        for name, info in model.model_fields.items():
            assert info.alias is None and info.serialization_alias is None, (model, name)
            assert not info.exclude, (model, name)
        decorators = model.__pydantic_decorators__
        assert not decorators.field_serializers and not decorators.model_serializers, model
        assert not model.model_computed_fields, model
        assert model.model_config.get("extra") in (None, "ignore"), model


class _Producer:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))


async def test_keyed_outputs_go_where_kafkas_default_partitioner_puts_them() -> None:
    keys = [f"S{i:03d}".encode() for i in range(200)] + ["食堂-1".encode(), b"x"]
    for partitions in (1, 3, 4, 12):
        batches = KafkaBatches(load_settings())
        sent: list[tuple[str, int, list[tuple[bytes, bytes]]]] = []

        async def ensure(n: int = partitions) -> Any:
            return _Producer(n)

        async def send(
            topic: str, partition: int, records: list[tuple[bytes, bytes]], sent: list[Any] = sent
        ) -> asyncio.Future[int]:
            sent.append((topic, partition, records))
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            fut.set_result(0)
            return fut

        batches._ensure = ensure  # type: ignore[method-assign]
        batches.send = send  # type: ignore[method-assign]
        pairs = [(k, b"v%d" % i) for i, k in enumerate(keys * 2)]
        futures = await batches.send_keyed("alerts", pairs)
        assert len(futures) == len(sent) == len({p for _, p, _ in sent}), "one batch a partition"
        every = list(range(partitions))
        reference = DefaultPartitioner()
        for topic, partition, batch in sent:
            assert topic == "alerts"
            assert all(reference(key, every, every) == partition for key, _ in batch)
        # Within a partition, in the order given.
        for _, partition, batch in sent:
            assert batch == [pair for pair in pairs if reference(pair[0], every, every) == partition]
