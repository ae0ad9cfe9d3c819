"""Contract 6: rapid-test results (快检数据实时上传) from registered instruments.

An instrument posts one result, or ``{"results": [...]}``, to ``POST /v1/rapid-tests`` signed like contract 2
(headers ``X-Larder-Instrument``, ``X-Larder-Timestamp``, ``X-Larder-Signature``; per-instrument secret,
300 s window), or publishes the same body over MQTT as its own user to ``larder/v1/instruments/<id>/results``.
Site and instrument type come from the site file (``instruments:``), never from the body.

:func:`validate_results` turns a body into enriched items (what the ``rapid-tests`` topic carries in
:class:`~pipeline.schemas.RecordBatch` records of kind ``rapid_tests``) and refusals with the stable reason codes
of :mod:`pipeline.ingest.validate`. Rapid tests arrive at a few per minute per site, so the pydantic model *is*
the validator here (no hand-written fast path as for readings).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError, model_validator

from pipeline.ingest.validate import (
    FUTURE_TIMESTAMP,
    INVALID,
    MISSING_FIELD,
    WRONG_TYPE,
    Refused,
    batch_elements,
    describe,
    element_bytes,
    reason_code_for,
)
from pipeline.schemas import ID_PATTERN, EventTime, to_ms

RAPID_TEST_PATH: Final = "/v1/rapid-tests"
MQTT_RESULTS_TOPIC: Final = "larder/v1/instruments/{instrument}/results"
#: Most results in one request or MQTT message.
MAX_RESULTS_BATCH: Final = 200
#: The RecordBatch ``kind`` of the rapid-tests topic.
KIND: Final = "rapid_tests"


class Outcome(StrEnum):
    NEGATIVE = "negative"
    POSITIVE = "positive"
    #: Near the limit / a faint line: treated like a positive until a recheck says otherwise.
    SUSPECT = "suspect"


class Stage(StrEnum):
    INITIAL = "initial"
    RECHECK = "recheck"
    #: A laboratory result on the same sample (e.g. GB 23200 by LC-MS/MS after a rapid-test positive).
    LAB_CONFIRMED = "lab_confirmed"


class ResultType(StrEnum):
    QUALITATIVE = "qualitative"
    QUANTITATIVE = "quantitative"


class DispositionAction(StrEnum):
    REMOVED_FROM_SALE = "removed_from_sale"
    DESTROYED = "destroyed"
    RETURNED_TO_SUPPLIER = "returned_to_supplier"


class Disposition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    action: DispositionAction
    quantity_kg: StrictFloat | StrictInt | None = Field(None, ge=0, le=1_000_000)


Text = Field(min_length=1, max_length=128)


class RapidTestResult(BaseModel):
    """One result as an instrument sends it (contract 6)."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    #: Unique per instrument: the de-duplication key (an instrument retries with the same id).
    result_id: str = Field(min_length=1, max_length=128)
    sample_id: str = Field(pattern=ID_PATTERN)
    sample_name: str = Text
    food_category: str = Text
    test_item: str = Text
    method: str = Text
    result_type: ResultType
    result: Outcome
    stage: Stage = Stage.INITIAL
    tested_at: EventTime
    operator: str = Text
    stall: str | None = Field(None, max_length=64)
    supplier: str | None = Field(None, max_length=128)
    trace_code: str | None = Field(None, max_length=128)
    value: StrictFloat | StrictInt | None = None
    unit: str | None = Field(None, max_length=16)
    limit: StrictFloat | StrictInt | None = None
    limit_basis: str | None = Field(None, max_length=64)
    disposition: Disposition | None = None

    @model_validator(mode="after")
    def _quantitative_has_value(self) -> RapidTestResult:
        if self.result_type is ResultType.QUANTITATIVE and (self.value is None or self.unit is None):
            raise ValueError("a quantitative result needs 'value' and 'unit'")
        return self


def validate_results(body: bytes, now_ms: int, skew_ms: int) -> tuple[list[tuple[int, RapidTestResult]], list[Refused]]:
    """Body -> ([(index, result)], [refusals]). Pure: ``now_ms`` is passed in. One bad element of a batch
    refuses only itself."""
    elements, bad = batch_elements(body, "results", MAX_RESULTS_BATCH)
    ok: list[tuple[int, RapidTestResult]] = []
    for index, element in elements:
        raw = body if index is None else element_bytes(element)
        if not isinstance(element, dict):
            bad.append((index, WRONG_TYPE, "a result must be a JSON object", raw))
            continue
        try:
            result = RapidTestResult.model_validate(element)
        except ValidationError as exc:
            first = exc.errors()[0]
            code = reason_code_for(first)
            if first["type"] == "value_error" and not first["loc"] and "needs" in first["msg"]:
                code = MISSING_FIELD
            if first["loc"] and first["loc"][0] == "tested_at" and code == INVALID:
                code = "bad_timestamp"
            bad.append((index, code, describe(first), raw))
            continue
        ts_ms = to_ms(result.tested_at)
        if ts_ms > now_ms + skew_ms:
            bad.append((index, FUTURE_TIMESTAMP, f"tested_at: {ts_ms - now_ms} ms in the future", raw))
            continue
        ok.append((index if index is not None else 0, result))
    return ok, bad


def enrich(
    result: RapidTestResult, *, instrument: str, instrument_type: str, site: str, received_ms: int
) -> dict[str, Any]:
    """The item the rapid-tests topic carries: the result plus what the registry says about its instrument."""
    return {
        "instrument": instrument,
        "instrument_type": instrument_type,
        "site": site,
        **result.model_dump(mode="json", exclude_none=True, exclude={"tested_at"}),
        "ts_ms": to_ms(result.tested_at),
        "received_ms": received_ms,
    }
