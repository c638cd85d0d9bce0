"""Labels: ``POST /v1/models/{model}/feedback`` stores outcomes of earlier predictions.

An outcome names what it is about by the inference id a prediction returned (``request_id``,
also the ``X-Request-ID`` header) and the row inside that request, or by an entity key the
records carried. Labels are stored as Parquet beside the captured predictions
(``mlwp.monitoring.capture``) before the answer, so a 200 means stored. Sending a label again
is a no-op and sending a corrected one replaces it (readers keep the latest), so a client may
retry freely. A key needs the ``feedback:<model>`` or ``feedback:*`` scope (or ``admin``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool

from serving.api.deps import ApiKeyDep, ServicesDep
from serving.api.responses import OrjsonResponse
from serving.api.schemas import ERROR_RESPONSES
from serving.core.errors import Forbidden, InvalidInput, NotFound, Unavailable

log = structlog.get_logger("mlwp.serving.feedback")
router = APIRouter(tags=["feedback"])
MAX_LABELS = 10_000


class LabelIn(BaseModel):
    """One outcome: about ``inference_id`` (+ ``row``), or about ``entity_key``."""

    # a misspelt field ("labeltime") was dropped without a word: the label was stored with
    # label_time = now, which joins it to the entity's predictions made until now
    model_config = ConfigDict(extra="forbid")

    inference_id: str | None = Field(
        default=None, description="The request_id of the prediction (X-Request-ID)."
    )
    row: int | None = Field(
        default=None, ge=0, description="Row inside that request; 0 when omitted."
    )
    entity_key: str | int | None = Field(
        default=None, description="The entity the outcome is about, instead of an inference id."
    )
    label: float | str = Field(
        description="The outcome: a class of the model (as predicted) or a number."
    )
    label_time: datetime | None = Field(
        default=None, description="When the outcome happened (ISO 8601, UTC if no zone); now."
    )

    # pydantic's lax mode makes true an int (1) and 1.0 an int too: `entity_key: true` was
    # stored as key "1", which joins the predictions of entity "1", and `row: true` as row 1.
    @field_validator("entity_key", mode="before")
    @classmethod
    def _entity_key_is_text_or_integer(cls, value: Any) -> Any:
        if value is None or isinstance(value, str) or _integer(value):
            return value
        raise PydanticCustomError(
            "entity_key_type",
            "an entity key is a string or an integer, not {kind}",
            {"kind": _json_kind(value)},
        )

    @field_validator("row", mode="before")
    @classmethod
    def _row_is_no_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticCustomError(
                "row_type", "a row is an integer, not {kind}", {"kind": _json_kind(value)}
            )
        return value


class FeedbackRequest(BaseModel):
    """Outcomes of earlier predictions of one model."""

    labels: list[LabelIn] = Field(min_length=1, max_length=MAX_LABELS)


class FeedbackResponse(BaseModel):
    """How many labels were stored, and when."""

    model: str
    accepted: int
    received_at: str
    request_id: str | None


@router.post(
    "/v1/models/{model}/feedback",
    response_model=FeedbackResponse,
    responses=ERROR_RESPONSES,
)
async def send_feedback(
    model: str,
    request: Request,
    services: ServicesDep,
    key: ApiKeyDep,
    body: Annotated[FeedbackRequest, Body()],
) -> OrjsonResponse:
    """Store outcomes of earlier predictions, by inference id (+ row) or entity key."""
    from mlwp.errors import MlwpError
    from mlwp.monitoring.capture import MonitoringError, write_labels

    if not key.allows_feedback(model):
        raise Forbidden(
            key.refusal("send feedback for", model, "feedback"),
            code="feedback_scope_required",
        )
    state = services.models.get(model)
    if state is None and model not in services.settings.models:
        raise NotFound(
            f"unknown model {model!r}",
            code="unknown_model",
            details={"models": sorted(services.models.states)},
        )
    champion = state.champion if state is not None else None
    classes = champion.model.classes if champion is not None else None
    if champion is None:
        # Class values ("Yes") map to indices with the champion's classes, unknown until it
        # loads: refusing them as bad labels (422) told the client not to retry a label that
        # is right, and it was lost. Numbers need no classes and are stored as usual.
        named = next((label.label for label in body.labels if _class_value(label.label)), None)
        if named is not None:
            raise Unavailable(
                f"model {model!r} is not loaded yet, so label {named!r} cannot be mapped to "
                "its class index; retry (sending the same labels again is safe), or send "
                "class indices",
                code="model_not_loaded",
                headers={"Retry-After": "5"},
            )
    records: list[dict[str, Any]] = [label.model_dump() for label in body.labels]
    received_at = datetime.now(UTC)
    try:
        accepted, _ = await run_in_threadpool(
            write_labels,
            services.settings.capture_root,
            model,
            records,
            source="api",
            classes=classes,
            received_at=received_at,
        )
    except MonitoringError as exc:
        raise InvalidInput(exc.message, code=exc.code) from None
    except (OSError, MlwpError) as exc:
        log.error("feedback_write_failed", model=model, error=repr(exc))
        raise Unavailable(
            "labels could not be stored; retry (sending the same labels again is safe)",
            code="storage_unavailable",
            headers={"Retry-After": "5"},
        ) from None
    services.metrics.labels_received.labels(model).inc(accepted)
    return OrjsonResponse(
        {
            "model": model,
            "accepted": accepted,
            "received_at": received_at.isoformat(),
            "request_id": request.scope.get("state", {}).get("request_id"),
        }
    )


def _class_value(label: float | str) -> bool:
    """Whether ``label`` names a class (``"Yes"``) rather than giving a number (``"1"``)."""
    if not isinstance(label, str):
        return False
    try:
        float(label)
    except ValueError:
        return True
    return False


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_kind(value: Any) -> str:
    """What a JSON value is, for an error: ``a boolean (true)``, ``an object``."""
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, float):
        return f"a decimal number ({value!r})"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {value!r}"
