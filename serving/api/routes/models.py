"""The served models: versions, aliases, traffic, signature and load errors."""

from __future__ import annotations

from fastapi import APIRouter

from serving.api.deps import ApiKeyDep, ServicesDep
from serving.api.responses import OrjsonResponse
from serving.api.schemas import ERROR_RESPONSES, ModelsResponse

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelsResponse, responses=ERROR_RESPONSES)
async def list_models(services: ServicesDep, key: ApiKeyDep) -> OrjsonResponse:
    """List the models this key may use, with variants, traffic, signature and load errors."""
    manager = services.models
    return OrjsonResponse(
        {
            "models": [
                state.describe()
                for name, state in sorted(manager.states.items())
                if key.allows_model(name)
            ],
            "default_model": manager.default_model,
            "registry_error": manager.registry_error,
            "missing_models": dict(manager.missing),
            "last_sync": manager.last_sync,
            "syncs": services.syncs.describe(),
        }
    )
