"""Request and response schemas as shown in OpenAPI (the hot path does not build them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

# The body's routing key: a string, or a number used as its decimal text; the code's rule is
# ``serving.api.routes.predict.routing_key``.
ROUTING_KEY_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}],
    "description": "Optional sticky routing key (same as the X-Routing-Key header): a string, "
    "or a number taken as its decimal text.",
}


class PredictRequest(BaseModel):
    """Rows to score, as records of raw features."""

    data: list[dict[str, Any]] = Field(
        min_length=1, description="Records: one object of features per row."
    )
    routing_key: str | float | None = None  # shown as ROUTING_KEY_SCHEMA

    @classmethod
    def openapi_schema(cls, routing_field: str, max_rows: int) -> dict[str, Any]:
        """The body's schema as the service checks it: 1 to ``max_rows`` records, and the
        routing key under its configured field name."""
        schema = cls.model_json_schema()
        properties = schema["properties"]
        properties["data"]["maxItems"] = max_rows
        properties.pop("routing_key")
        properties[routing_field] = dict(ROUTING_KEY_SCHEMA)
        return schema


class PredictResponse(BaseModel):
    """Scores of the rows, in order, with the variant and version that produced them."""

    predictions: list[Any]
    probabilities: list[Any] | None = None
    model: str
    model_version: str
    variant: str
    request_id: str
    timestamp: str
    cached: bool = False


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None
    request_id: str | None = None
    timestamp: str


class ErrorResponse(BaseModel):
    """The error body of every failed request."""

    error: ErrorDetail


class HealthResponse(BaseModel):
    status: str
    detail: dict[str, Any] | None = None


class SyncInfo(BaseModel):
    """One registry sync of the service."""

    id: int
    state: str = Field(description="queued, running or finished")
    trigger: str = Field(description="start, poll or reload: what asked for it first")
    requested_at: str
    started_at: str | None
    finished_at: str | None
    joined: int = Field(description="How many later requests joined it")
    error: str | None = Field(description="An unexpected failure of the sync itself")


class ModelsResponse(BaseModel):
    """Every served model: variants, versions, traffic, signature and load errors."""

    models: list[dict[str, Any]]
    default_model: str | None
    registry_error: str | None
    missing_models: dict[str, str] = {}
    last_sync: str | None
    syncs: dict[str, SyncInfo | None] = Field(
        default_factory=dict, description="The running, queued and last finished sync"
    )


class ReloadResponse(BaseModel):
    """The sync that will serve this request and what serves now (its result when done)."""

    status: str = Field(description="started, queued (behind a running sync) or joined")
    done: bool
    sync: SyncInfo
    registry_error: str | None
    models: dict[str, Any]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Malformed request",
        401: "Missing or invalid API key",
        403: "The key's scopes do not cover this model or route",
        404: "Unknown model",
        408: "The body did not arrive in time (body_timeout_seconds)",
        413: "Body too large or too many rows",
        422: "A row or field is invalid",
        429: "Rate limit exceeded (see Retry-After)",
        503: "The model is not loaded yet",
    }.items()
}
