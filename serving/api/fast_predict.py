"""The prediction routes answered without the ASGI layers (issue #18).

A one-row prediction spent about a third of its CPU in layers that add nothing to it: the
ASGI app and middleware calls, the body read under its deadline, Starlette's response sent
as two ASGI messages through the middleware and checked again by uvicorn. mlwp's HTTP
protocol (``serving.server.HttpProtocol``) hands a ``POST`` to a prediction route whose
whole body came with its headers to :class:`FastPredict`, which runs the same pieces in a
row: the request id and log context, :func:`~serving.api.deps.authenticate` (key, rate
limits, failed-authentication block), the route's own endpoint (``serving.api.routes.
predict``: routing, cache, scoring, capture, shadow), the same error responses, security
headers, metrics and access log. The protocol writes the response bytes itself.

Everything else goes through the ASGI app as before, and so does a prediction request the
fast path could answer differently: one whose body is still arriving (its deadline and a
vanishing client are the middleware's), one over ``max_body_bytes``, one expecting
``100-continue``, a CORS request (``Origin`` with ``cors_origins`` set), one whose client
address a trusted proxy's ``X-Forwarded-*`` headers rewrite, and every request when tracing
is on (its spans are the ASGI middleware's) or ``fast_predict`` is off. The tests in
``tests/serving/test_fast_predict.py`` send the same requests both ways and compare the
bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Message, Scope

from serving.api.deps import authenticate
from serving.api.errors import serving_error_response, unexpected_error
from serving.api.keyed_route import KeyedRoute
from serving.api.middleware import (
    begin_request,
    end_request,
    rendered_security_headers,
    request_id_and_length,
    too_large,
)
from serving.core.errors import ServingError
from serving.core.state import Services

# what the protocol is given to send a response: status, headers, body, and header lines
# already rendered to follow the headers (b"name: value\r\n" each)
Respond = Callable[[int, list[tuple[bytes, bytes]], bytes | memoryview, bytes], None]

_server_log = logging.getLogger("uvicorn.error")
_DISCONNECT: Message = {"type": "http.disconnect"}
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto"})
# paths whose match is remembered; past this the memory starts again
MATCHED_PATHS = 1024


class FastPredict:
    """Answers the prediction routes (:class:`KeyedRoute` s) of ``app`` for the protocol."""

    def __init__(self, app: Any, services: Services, routes: Sequence[BaseRoute]) -> None:
        settings = services.settings
        self.app = app
        self.services = services
        self.routes = [route for route in routes if isinstance(route, KeyedRoute)]
        self.enabled = settings.fast_predict and not settings.otel_endpoint
        self.max_body_bytes = settings.max_body_bytes
        self.cors = bool(settings.cors_origins)
        # (root path, path) -> what a POST there matches: the route and its path parameters
        # (Starlette's matches() costs a regular expression and three dicts per request)
        self._matched: dict[tuple[str, str], tuple[KeyedRoute | None, dict[str, Any]]] = {}

    def match(self, scope: Scope, *, trusted_proxy: bool) -> Scope | None:
        """The route's part of the scope when the request is one to answer here, else None
        (``scope`` is uvicorn's, with the headers of a request whose body may follow;
        ``trusted_proxy``: the client is a proxy whose ``X-Forwarded-*`` uvicorn applies)."""
        if scope["method"] != "POST" or not self.enabled:
            return None
        where = (scope["root_path"], scope["path"])
        matched = self._matched.get(where)
        if matched is None:
            matched = self._match(scope)
            if len(self._matched) >= MATCHED_PATHS:  # paths are the clients' to make up
                self._matched.clear()
            self._matched[where] = matched
        route, path_params = matched
        if route is None:
            return None
        for name, value in scope["headers"]:
            if name == b"content-length":
                if too_large(value, self.max_body_bytes):
                    return None
            elif name == b"origin":
                if self.cors:
                    return None
            elif name in _FORWARDED and trusted_proxy:
                return None
        # what route.matches(scope) gives a POST to this path, made anew per request
        return {"endpoint": route.endpoint, "path_params": dict(path_params), "route": route}

    def _match(self, scope: Scope) -> tuple[KeyedRoute | None, dict[str, Any]]:
        """The prediction route a POST to the scope's path fully matches, with its path
        parameters (None when none does)."""
        for route in self.routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return route, child_scope["path_params"]
        return None, {}

    async def __call__(
        self,
        scope: Scope,
        body: bytes,
        child_scope: Scope,
        respond: Respond,
        close: Callable[[], None],
    ) -> None:
        """Answer the request whose whole ``body`` arrived: what ``ServingMiddleware``,
        ``KeyedRoutes`` and Starlette's outermost error handler do for it, in that order."""
        started = time.perf_counter()
        request_id, _ = request_id_and_length(scope["headers"])
        begin_request(scope, request_id, started, tracing=False)
        scope["app"] = self.app
        scope.update(child_scope)
        status = 500
        sent = False
        failure: Exception | None = None
        try:
            request = Request(scope, _receiver(body))
            try:
                key = await authenticate(request)
                route: KeyedRoute = child_scope["route"]
                response: Response = await route.endpoint(
                    request=request, key=key, **child_scope["path_params"]
                )
            except ServingError as exc:
                response = serving_error_response(scope, exc)
            status = response.status_code
            # what ServingMiddleware adds (response_headers), its constant part pre-rendered
            headers = [*response.raw_headers, (b"x-request-id", request_id.encode())]
            respond(status, headers, response.body, rendered_security_headers(scope["path"]))
            sent = True
            if response.background is not None:
                await response.background()
        except Exception as exc:
            failure = exc
        finally:
            end_request(self.services.metrics, scope, status, started)
        if failure is not None:
            # as under the ASGI app: Starlette's outermost handler answers 500 (without the
            # middleware's headers) unless a response went out, then uvicorn logs the error
            # and closes the connection
            if not sent:
                error = unexpected_error(Request(scope), failure)
                respond(error.status_code, error.raw_headers, error.body, b"")
            _server_log.error("Exception in ASGI application\n", exc_info=failure)
            close()


def _receiver(body: bytes) -> Callable[[], Any]:
    """An ASGI ``receive`` giving the whole body once (the endpoint reads it itself)."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return messages.pop() if messages else _DISCONNECT

    return receive


def fast_predict_of(app: Any) -> FastPredict | None:
    """The :class:`FastPredict` of the serving app inside uvicorn's wrappers, if any."""
    while app is not None:
        state = getattr(app, "state", None)
        fast = getattr(state, "fast_predict", None) if state is not None else None
        if isinstance(fast, FastPredict):
            return fast
        app = getattr(app, "app", None)
    return None
