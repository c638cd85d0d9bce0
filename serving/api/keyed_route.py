"""The prediction routes' route class: FastAPI's signature and OpenAPI, a lean handler.

For a one-row prediction FastAPI's per-request machinery cost more than the prediction:
dependency solving, the ``request_response`` wrapper with its exit stacks, its own layer of
exception handling. A :class:`KeyedRoute` endpoint declares ``key: ApiKeyDep`` like any
other route, so OpenAPI shows its security scheme and the authorization-coverage test sees
``require_key``; but the route handles a request itself: it calls :func:`authenticate` (the
function ``require_key`` itself calls), then the endpoint with the request, the key and the
path parameters (all strings), and sends the response it returns.

:class:`KeyedRoutes`, a middleware, hands such requests to their route before FastAPI's
router sees them, skipping its exception-handling, exit-stack and routing layers (the router
would find the same route after trying the others). It answers a ``ServingError`` with the
application's own handler for it; any other error goes on to the outer handlers as usual.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.api.deps import authenticate, require_key
from serving.api.errors import serving_error_response
from serving.core.errors import ServingError


class KeyedRoute(APIRoute):
    """An API-key route whose endpoint takes ``request``, ``key`` and ``str`` path
    parameters, reads the body itself and returns a ``Response``."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        parameters = inspect.signature(endpoint).parameters
        path_names = {p.name for p in self.dependant.path_params}
        allowed = {"request", "key"} | path_names
        if set(parameters) != allowed or require_key not in {
            d.call for d in self.dependant.dependencies
        }:
            raise TypeError(
                f"{path}: a KeyedRoute endpoint takes exactly request, key (ApiKeyDep) "
                f"and its path parameters {sorted(path_names)}; got {list(parameters)}"
            )

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            await super().handle(scope, receive, send)  # 405, as for any route
            return
        request = Request(scope, receive)
        key = await authenticate(request)
        response = await self.endpoint(request=request, key=key, **scope["path_params"])
        await response(scope, receive, send)


class KeyedRoutes:
    """Middleware: requests for a :class:`KeyedRoute` go straight to it."""

    def __init__(self, app: ASGIApp, *, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = [route for route in routes if isinstance(route, KeyedRoute)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:  # a partial match (wrong method) is the router's 405
                    scope.update(child_scope)
                    try:
                        await route.handle(scope, receive, send)
                    except ServingError as exc:
                        response = serving_error_response(scope, exc)
                        await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
