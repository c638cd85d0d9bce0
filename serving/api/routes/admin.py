"""Administration: reload the models from the registry now."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from serving.api.deps import AdminKeyDep, ServicesDep
from serving.api.responses import OrjsonResponse
from serving.api.schemas import ERROR_RESPONSES, ReloadResponse

router = APIRouter(tags=["admin"])


@router.post("/admin/reload", response_model=ReloadResponse, responses=ERROR_RESPONSES)
async def reload_models(services: ServicesDep, key: AdminKeyDep) -> OrjsonResponse:
    """Read the registry now, load new versions and swap them in; returns what serves."""
    summary = await run_in_threadpool(services.models.sync)
    return OrjsonResponse(summary)
