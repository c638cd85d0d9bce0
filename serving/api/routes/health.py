"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter

from serving.api.deps import ServicesDep
from serving.api.responses import OrjsonResponse
from serving.api.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/health/live", response_model=HealthResponse)
async def live() -> OrjsonResponse:
    """Answer 200 while the process runs."""
    return OrjsonResponse({"status": "ok"})


@router.get(
    "/health/ready",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "Models not loaded yet"}},
)
async def ready(services: ServicesDep) -> OrjsonResponse:
    """Answer 200 once the served models are loaded and warmed up, 503 before."""
    manager = services.models
    detail = {
        "models": {name: sorted(s.variants) for name, s in manager.states.items()},
        "synced": manager.synced_once,
        "registry_error": manager.registry_error,
    }
    if manager.ready:
        return OrjsonResponse({"status": "ready", "detail": detail})
    return OrjsonResponse({"status": "loading", "detail": detail}, status_code=503)
