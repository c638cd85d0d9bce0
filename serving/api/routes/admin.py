"""Administration: ask for a registry sync now (started or joined, in the background)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from serving.api.deps import AdminKeyDep, ServicesDep
from serving.api.responses import OrjsonResponse
from serving.api.schemas import ERROR_RESPONSES, ReloadResponse

router = APIRouter(tags=["admin"])


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    status_code=202,
    responses={
        **ERROR_RESPONSES,
        200: {"model": ReloadResponse, "description": "wait=true: the sync finished in time"},
    },
)
async def reload_models(
    services: ServicesDep,
    key: AdminKeyDep,
    wait: Annotated[
        bool, Query(description="Answer when the sync has finished (or at the timeout).")
    ] = False,
    timeout: Annotated[
        float, Query(gt=0, le=600, description="With wait: the longest wait in seconds.")
    ] = 60.0,
) -> OrjsonResponse:
    """Sync with the registry now: starts a sync in the background, or joins the one that
    has not read the registry yet, and answers 202 at once with the sync (``id``, ``state``)
    and what serves now. Slow loads never lose the request: the sync runs to its end
    whoever waits. With ``wait=true`` it answers 200 with the sync's result once it has
    finished, or 202 when ``timeout`` passed first (the sync goes on)."""
    run, how = services.syncs.request("reload")
    if wait:
        await run.wait(timeout)
    done = run.done
    summary = run.result if done and run.result is not None else services.models.summary()
    body = {"status": how, "done": done, "sync": run.describe(), **summary}
    return OrjsonResponse(body, status_code=200 if done else 202)
