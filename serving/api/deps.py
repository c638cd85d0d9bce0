"""Request dependencies as ``Annotated`` aliases: the services, and API-key authentication.

Every route either depends on ``require_key`` / ``require_admin`` or is listed in
``PUBLIC_ROUTES`` with the reason; a test fails when a route does neither.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.api.middleware import header
from serving.core.errors import Forbidden, Unauthorized
from serving.core.state import Services
from serving.keys.store import ApiKey

# (method, path) -> why it needs no key
PUBLIC_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/health/live"): "liveness probe of the orchestrator",
    ("GET", "/health/ready"): "readiness probe of the orchestrator and load balancer",
    ("GET", "/metrics"): "Prometheus scrape inside the cluster; keep it off the ingress",
    ("GET", "/openapi.json"): "the public API description",
    ("GET", "/docs"): "interactive API documentation",
    ("GET", "/docs/oauth2-redirect"): "part of the interactive documentation",
    ("GET", "/redoc"): "API documentation",
}

ANONYMOUS = ApiKey(
    key_id="anonymous",
    name="anonymous (auth disabled in development)",
    scopes=("admin",),
    rate_limit=None,
    created_at=datetime(1970, 1, 1, tzinfo=UTC),
    revoked_at=None,
)

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key created with `mlwp keys create`, sent as `Authorization: Bearer`.",
)


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def authenticate(request: Request) -> ApiKey:
    """The request's bearer API key, verified and counted against its rate limit."""
    services: Services = request.app.state.services
    if services.keys is None:
        key = ANONYMOUS
    else:
        # behind a proxy, uvicorn's --forwarded-allow-ips makes this the original client
        client = request.scope.get("client")
        address = client[0] if client else "unknown"
        services.limiter.refuse_blocked(address)
        scheme, _, token = (header(request.scope, b"authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(
                "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key"
            )
        found = services.keys.verify(token.strip())
        if found is None:
            await services.limiter.failed_authentication(address)
            raise Unauthorized("invalid or revoked API key", code="invalid_api_key")
        key = found
    await services.limiter.hit(key.key_id, key.rate_limit)
    return key


async def require_key(
    request: Request,
    # declared for OpenAPI's security scheme; authenticate() reads the header itself
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """Authenticate the bearer API key and count the request against its rate limit."""
    return await authenticate(request)


ApiKeyDep = Annotated[ApiKey, Depends(require_key)]


async def require_admin(key: ApiKeyDep) -> ApiKey:
    """Authenticate a key that holds the ``admin`` scope."""
    if not key.is_admin:
        raise Forbidden(
            "this route needs an API key with the 'admin' scope", code="admin_scope_required"
        )
    return key


AdminKeyDep = Annotated[ApiKey, Depends(require_admin)]

AUTH_DEPENDENCIES = (require_key, require_admin)
