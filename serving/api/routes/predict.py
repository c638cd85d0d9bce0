"""Predictions: ``POST /v1/models/{model}/predict`` and ``POST /predict`` (the default model).

The routes are :class:`~serving.api.keyed_route.KeyedRoute` s (no per-request dependency
solving). The hot path reads the raw body, parses it with orjson and checks the rows against the
model's compiled feature list; no pydantic model is built per row. Small batches are scored
on the event loop (a thread hop costs more than an XGBoost call on a few rows), larger ones
in the thread pool.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from mlwp.model.features import RecordError
from mlwp.model.record_encoder import Fallback
from serving.api.deps import ApiKeyDep
from serving.api.keyed_route import KeyedRoute
from serving.api.middleware import header
from serving.api.responses import OrjsonResponse, now_iso
from serving.api.schemas import ERROR_RESPONSES, PredictResponse
from serving.core.config import ServingSettings
from serving.core.errors import (
    BadRequest,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from serving.core.metrics import child
from serving.core.state import Services
from serving.models.manager import ModelState, Variant
from serving.services.cache import cache_key
from serving.services.capture import Captured, now_ms

log = structlog.get_logger("mlwp.serving.predict")
router = APIRouter(tags=["predictions"], route_class=KeyedRoute)

_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}
        },
    }
}


@router.post(
    "/v1/models/{model}/predict",
    response_model=PredictResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_BODY,
)
async def predict_model(model: str, request: Request, key: ApiKeyDep) -> OrjsonResponse:
    """Score rows with the model's A/B-routed variant."""
    services: Services = request.app.state.services
    if not key.allows_model(model):
        raise Forbidden(key.refusal("use", model, "model"), code="model_scope_required")
    return await _predict(services, request, model)


@router.post(
    "/predict", response_model=PredictResponse, responses=ERROR_RESPONSES, openapi_extra=_BODY
)
async def predict_default(request: Request, key: ApiKeyDep) -> OrjsonResponse:
    """Score rows with the default model's A/B-routed variant."""
    services: Services = request.app.state.services
    model = services.models.default_model
    if model is None:
        raise Unavailable("no model is loaded yet", code="model_not_loaded")
    if not key.allows_model(model):
        raise Forbidden(key.refusal("use", model, "model"), code="model_scope_required")
    return await _predict(services, request, model)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body from the ASGI messages (``request.stream()`` is an async generator, which
    costs more than reading a one-message body)."""
    receive = request.receive
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"request body exceeds {limit} bytes", details={"max_body_bytes": limit}
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _state(services: Services, model: str) -> ModelState:
    state = services.models.get(model)
    if state is None or state.router is None:
        if model in services.settings.models or (state is not None):
            raise Unavailable(
                f"model {model!r} is not loaded yet",
                code="model_not_loaded",
                headers={"Retry-After": "5"},
            )
        raise NotFound(
            f"unknown model {model!r}",
            code="unknown_model",
            details={"models": sorted(services.models.states)},
        )
    return state


def _parse(body: bytes, max_rows: int, routing_field: str) -> tuple[list[Any], str | None]:
    if not body:
        raise BadRequest(
            'empty body: send {"data": [{feature: value, ...}, ...]}', code="empty_body"
        )
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise InvalidInput(
            "body must be an object with a 'data' list of records",
            details=[{"row": None, "field": "data"}],
        )
    data = payload.get("data")
    if not isinstance(data, list):
        raise InvalidInput(
            "field 'data' must be a list of records", details=[{"row": None, "field": "data"}]
        )
    if not data:
        raise InvalidInput(
            "field 'data' is empty: send at least one record",
            details=[{"row": None, "field": "data"}],
        )
    if len(data) > max_rows:
        raise PayloadTooLarge(
            f"{len(data)} rows exceed the limit of {max_rows} per request",
            code="too_many_rows",
            details={"rows": len(data), "max_rows": max_rows},
        )
    return data, routing_key(payload.get(routing_field), routing_field)


def routing_key(value: Any, field: str) -> str | None:
    """The body's routing key: a string, or a number taken as its decimal text (``7`` and
    ``7.0`` are the same key, as they are the same JSON number); null is no key. The same
    rule is the schema's (``serving.api.schemas.ROUTING_KEY_SCHEMA``)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    raise InvalidInput(
        f"field {field!r} must be a string or a number, got {type(value).__name__}",
        details=[{"row": None, "field": field}],
    )


def _score(variant: Variant, data: list[Any]) -> dict[str, Any]:
    try:
        result = variant.model.predict(data)
    except RecordError as exc:
        # The model checks every record while building its arrays, so the hot path validates
        # nothing twice; only a refused request pays for the full list of problems.
        problems = variant.schema.errors(data) or [
            {"row": exc.row, "field": exc.field, "message": str(exc)}
        ]
        raise InvalidInput(problems[0]["message"], details=problems) from None
    return {
        "predictions": _plain(result.predictions),
        "probabilities": _plain(result.probabilities),
    }


def _score_decoded(variant: Variant, records: list[Any], body: bytes) -> dict[str, Any]:
    """:func:`_score` of records from :func:`_decode` (and the body they came from)."""
    try:
        result = variant.model.predict_decoded(records)
    # A value an operation refuses (a text no cast reads) or its float arithmetic does:
    # the usual path reads or reports it, as it does for records it parsed itself.
    except (Fallback, ArithmeticError):
        return _score(variant, orjson.loads(body)["data"])
    return {
        "predictions": _plain(result.predictions),
        "probabilities": _plain(result.probabilities),
    }


def _plain(values: Any) -> Any:
    if values is None:
        return None
    tolist = getattr(values, "tolist", None)
    return tolist() if tolist is not None else values


def _decode(
    state: ModelState, body: bytes, settings: ServingSettings
) -> tuple[list[Any], Any] | None:
    """The body's records decoded straight into typed fields (``mlwp.model.json_records``)
    and its routing field's value, when every variant of the model reads the same record
    fields and the body is one the usual path would take as it is: a non-empty ``data``
    within ``max_rows``, nothing but the model's fields. None: parse it the usual way,
    which answers the same or names the problem."""
    decoder = None
    for variant in state.variants.values():
        own = variant.model.json_records
        if own is None or (decoder is not None and own.record_type is not decoder.record_type):
            return None
        decoder = own
    if decoder is None or len(body) < decoder.min_bytes:
        return None
    try:
        records, (routing,) = decoder.decode(body, "data", (settings.routing_field,))
    except Fallback:
        return None
    if not records or len(records) > settings.max_rows:
        return None
    return records, routing


async def _predict(services: Services, request: Request, model: str) -> OrjsonResponse:
    settings = services.settings
    state = _state(services, model)
    body = await _read_body(request, settings.max_body_bytes)
    # the cache keys parsed records: with a cache, the usual parse
    decoded = _decode(state, body, settings) if services.cache is None else None
    if decoded is None:
        data: list[Any] | None
        data, routing = _parse(body, settings.max_rows, settings.routing_field)
        rows = len(data)
    else:
        data = None
        records, routing = decoded
        routing = routing_key(routing, settings.routing_field)
        rows = len(records)
    routing = header(request.scope, b"x-routing-key") or routing
    alias = state.router.choose(routing) if state.router is not None else "champion"
    variant = state.variants[alias]

    metrics = services.metrics
    request_id: str = request.scope["state"]["request_id"]
    key = None
    scored: dict[str, Any] | None = None
    if services.cache is not None and data is not None:
        key = cache_key(model, variant.version, data)
        scored = await services.cache.get(key)
    cached = scored is not None
    if scored is None:
        started = time.perf_counter()
        score = (
            functools.partial(_score, variant, data)
            if data is not None
            else functools.partial(_score_decoded, variant, records, body)
        )
        try:
            if rows <= settings.inline_rows:
                scored = score()
            else:
                scored = await run_in_threadpool(score)
        except Exception as exc:
            # Per variant, so a guarded rollout sees a challenger that fails what the
            # champion answers (mlwp.registry.rollout reads this counter).
            kind = "invalid_input" if isinstance(exc, InvalidInput) else "error"
            child(metrics.prediction_errors, model, alias, kind).inc()
            raise
        seconds, requests, predictions = metrics.prediction_children(model, alias, variant.version)
        seconds.observe(time.perf_counter() - started)
        if key is not None and services.cache is not None:
            await services.cache.set(key, scored)
    else:  # a cache hit: no scoring time to count
        requests = child(metrics.prediction_requests, model, alias)
        predictions = child(metrics.predictions, model, alias, variant.version)
    requests.inc()
    predictions.inc(rows)

    response = {
        "predictions": scored["predictions"],
        "probabilities": scored["probabilities"],
        "model": model,
        "model_version": variant.version,
        "variant": alias,
        "request_id": request_id,
        "timestamp": now_iso(),
        "cached": cached,
    }
    answer = OrjsonResponse(response)
    captured = None
    shadow = state.shadow
    capture = services.capture
    if capture.sampled(model):
        # the bytes at hand, as they are: the writer and the readers do the rest
        # (serving/services/capture.py)
        started = request.scope["state"].get("started")
        latency_ms = (time.perf_counter() - started) * 1000.0 if started else 0.0
        if shadow is None:  # straight into the buffer: nothing built but its tuple
            capture.put(
                request_id,
                time.time_ns() // 1_000_000,  # now_ms(), without its call
                model,
                variant.version,
                alias,
                True,  # served
                routing,
                rows,
                body,
                answer.body,  # type: ignore[arg-type]  # bytes: render() made them
                variant.classes_json,
                latency_ms,
            )
        else:  # kept for the shadow's capture, made from it once the shadow has scored
            captured = Captured(
                inference_id=request_id,
                time_ms=now_ms(),
                model=model,
                version=variant.version,
                variant=alias,
                served=True,
                routing_key=routing,
                rows=rows,
                request=body,
                response=answer.body,  # type: ignore[arg-type]  # bytes (render())
                classes=variant.model.classes,
                latency_ms=latency_ms,
            )
            capture.add(captured)
    if shadow is not None:
        if data is None:
            data = orjson.loads(body)["data"]  # the records as the usual path reads them
        answer.background = BackgroundTask(
            _shadow, services, model, shadow, data, response, captured
        )
    return answer


async def _shadow(  # noqa: PLR0917 - a background task takes its inputs positionally
    services: Services,
    model: str,
    shadow: Variant,
    data: list[Any],
    response: dict[str, Any],
    captured: Captured | None,
) -> None:
    """After the response is sent: score the shadow variant, captured beside the served
    result when the request was."""
    try:
        shadow_result = await run_in_threadpool(_score, shadow, data)
    except Exception as exc:  # the shadow must never affect serving; count and log it
        services.metrics.shadow_errors.labels(model).inc()
        log.warning("shadow_failed", model=model, version=shadow.version, error=repr(exc))
        return
    services.metrics.shadow_predictions.labels(model, shadow.version).inc(len(data))
    differing = sum(
        1
        for a, b in zip(shadow_result["predictions"], response["predictions"], strict=False)
        if a != b
    )
    if differing:
        services.metrics.shadow_disagreements.labels(model, shadow.version).inc(differing)
    if captured is not None:
        services.capture.add(
            dataclasses.replace(
                captured,
                version=shadow.version,
                variant=shadow.alias,
                served=False,
                response=orjson.dumps(shadow_result, option=orjson.OPT_SERIALIZE_NUMPY),
                classes=shadow.model.classes,
            )
        )
