"""The prediction routes' route class: FastAPI's signature and OpenAPI, a lean handler.

FastAPI resolves an endpoint's dependencies on every request; for a prediction that was the
largest cost of the framework (more than routing, middleware and the response together). A
:class:`KeyedRoute` endpoint declares ``key: ApiKeyDep`` like any other route, so OpenAPI
shows its security scheme and the authorization-coverage test sees ``require_key``, but the
handler calls :func:`authenticate` (the function ``require_key`` itself calls) and then the
endpoint with the request, the key and the path parameters (all strings), nothing else.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from serving.api.deps import authenticate, require_key


class KeyedRoute(APIRoute):
    """An API-key route whose endpoint takes ``request``, ``key`` and ``str`` path
    parameters, and reads the body itself."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint
        parameters = inspect.signature(endpoint).parameters
        path_names = {p.name for p in self.dependant.path_params}
        allowed = {"request", "key"} | path_names
        if set(parameters) != allowed or require_key not in {
            d.call for d in self.dependant.dependencies
        }:
            raise TypeError(
                f"{self.path}: a KeyedRoute endpoint takes exactly request, key (ApiKeyDep) "
                f"and its path parameters {sorted(path_names)}; got {list(parameters)}"
            )

        async def handler(request: Request) -> Response:
            key = await authenticate(request)
            response: Response = await endpoint(request=request, key=key, **request.path_params)
            return response

        return handler
