"""The mlwp serving service: FastAPI app assembled from settings, routes and services.

``uvicorn serving.main:app`` serves it; ``create_app(settings)`` builds one for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from serving.api.errors import install_error_handlers
from serving.api.fast_predict import FastPredict
from serving.api.keyed_route import KeyedRoutes
from serving.api.middleware import ServingMiddleware
from serving.api.routes import admin, feedback, health, metrics, models, predict
from serving.core.config import ServingSettings, get_settings
from serving.core.logging import configure_logging
from serving.core.state import Services
from serving.core.tracing import setup_tracing

log = structlog.get_logger("mlwp.serving")

DESCRIPTION = """Predictions from the models the mlwp pipeline registered in MLflow, routed
between champion and challenger by the model's traffic split.

Authenticate with `Authorization: Bearer <key>` (keys come from `mlwp keys create`). Send
`X-Routing-Key` (or `routing_key` in the body) to keep a user on the same variant."""


async def _poll(services: Services) -> None:
    """Sync at start (so readiness turns true), then every poll interval. The syncs go
    through the runner like ``POST /admin/reload``, so the two never run at once."""
    interval = services.settings.poll_interval_seconds
    trigger = "start"
    frozen_at = -1
    while True:
        try:
            await services.syncs.sync(trigger)
        except Exception as exc:  # the poller must survive anything; sync reports its own errors
            log.error("sync_failed", error=repr(exc))
        if services.models.versions_loaded != frozen_at:
            frozen_at = services.models.versions_loaded
            _freeze_heap()
        trigger = "poll"
        if interval <= 0:
            return
        await asyncio.sleep(interval)


def _freeze_heap() -> None:
    """Leave what is alive now (the imported libraries, the loaded models: ~300k objects)
    out of the garbage collector's full collections. Requests that keep objects alive for a
    while (100-row bodies held by the capture buffer, when it held parsed records) make
    Python run a full collection every few hundred requests, and walking the whole heap
    took ~185 ms each time: the p99 of 100-row requests. With the heap frozen a full
    collection takes ~2 ms. Frozen objects are still freed by reference counting; only
    frozen reference cycles are never collected, so this runs at start and after a sync
    that loaded a version, not per poll."""
    gc.collect()
    gc.freeze()


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    """Build the application for ``settings`` (read from the environment when omitted)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    services = Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.capture.start()
        poller = asyncio.create_task(_poll(services))
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await services.close()
            if tracer_provider is not None:
                tracer_provider.shutdown()  # flushes the spans still batched

    app = FastAPI(
        title="mlwp serving",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    for module in (predict, feedback, health, models, admin, metrics):
        app.include_router(module.router)
    # the prediction routes, ahead of the router (the middleware added first is innermost)
    app.add_middleware(KeyedRoutes, routes=app.routes)
    # and without the ASGI layers when mlwp's HTTP protocol serves the app (serving.server)
    app.state.fast_predict = FastPredict(app, services, app.routes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "X-Routing-Key"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(
        ServingMiddleware,
        metrics=services.metrics,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_seconds=settings.body_timeout_seconds,
        tracing=bool(settings.otel_endpoint),
    )
    tracer_provider = setup_tracing(app, settings)
    if tracer_provider is not None:
        services.syncs.tracer = tracer_provider.get_tracer("mlwp.serving")
    _install_openapi(app, services)
    return app


def _install_openapi(app: FastAPI, services: Services) -> None:
    """Add one concrete predict path per served model, with its record schema (from the
    model's feature list: names, types, an example). Rebuilt when the served versions
    change."""
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        states = services.models.states
        fingerprint = repr(
            (
                sorted((n, s.champion.version if s.champion else None) for n, s in states.items()),
                services.models.default_model,
            )
        )
        if cache.get("fingerprint") == fingerprint:
            schema: dict[str, Any] = cache["schema"]
            return schema
        from serving.api.schemas import ROUTING_KEY_SCHEMA, PredictRequest

        settings = services.settings
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["PredictRequest"] = PredictRequest.openapi_schema(
            settings.routing_field, settings.max_rows
        )
        generic = schema["paths"].get("/v1/models/{model}/predict", {}).get("post")
        default_model = services.models.default_model
        for name, state in sorted(states.items()):
            record = state.schema
            if record is None or generic is None:
                continue
            ref = f"Record_{_schema_name(name)}"
            components[ref] = {"title": f"{name} record", **record.json_schema()}
            body_ref = f"PredictRequest_{_schema_name(name)}"
            components[body_ref] = {
                "title": f"{name} predict request",
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": settings.max_rows,
                        "items": {"$ref": f"#/components/schemas/{ref}"},
                    },
                    settings.routing_field: dict(ROUTING_KEY_SCHEMA),
                },
                "example": {"data": [record.example_record()]},
            }
            operation = copy.deepcopy(generic)
            operation["operationId"] = f"predict_{_schema_name(name)}"
            operation["summary"] = f"Predict with {name}"
            operation["parameters"] = [
                p for p in operation.get("parameters", []) if p.get("name") != "model"
            ]
            body = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{body_ref}"}}
                },
            }
            operation["requestBody"] = body
            schema["paths"][f"/v1/models/{name}/predict"] = {"post": operation}
            default = schema["paths"].get("/predict", {}).get("post")
            if name == default_model and default is not None:
                # /predict scores the default model's records
                default["requestBody"] = copy.deepcopy(body)
        cache["fingerprint"] = fingerprint
        cache["schema"] = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _schema_name(model: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in model)


def __getattr__(name: str) -> Any:
    # `uvicorn serving.main:app` builds the app on first access, not on every import
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
