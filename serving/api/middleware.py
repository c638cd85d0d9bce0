"""One pure-ASGI middleware for every request: request id, body-size guard, body deadline,
security headers, metrics and the access log. (Pure ASGI rather than ``BaseHTTPMiddleware``:
it costs microseconds, not a task per request.)

The body must arrive within ``body_timeout_seconds`` of the request reaching the application
(uvicorn has no body timeout; a client sending a byte every few seconds would hold its
connection and a task for ever): past it, reading the body raises ``RequestTimeout``, which
answers 408 with ``Connection: close``. Only reads of an unfinished body are bounded, so
waiting for a disconnect after the body is never cut short.

A client that goes away before its body is complete is no server error: no response is owed
to it, so it is counted with status 499 (nginx's "client closed request") and logged at info
level, without a traceback (Starlette raises ``ClientDisconnect`` from the body reader)."""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any

import orjson
import structlog
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.responses import error_body
from serving.core.errors import RequestTimeout
from serving.core.metrics import Metrics
from serving.core.tracing import current_trace_id

log = structlog.get_logger("mlwp.serving.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
# The documentation pages load Swagger UI / ReDoc from a CDN; everything else is data only.
_CSP_API = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_DOC_PATHS = ("/docs", "/redoc")
CLIENT_CLOSED_REQUEST = 499


class ServingMiddleware:
    """Request id (X-Request-ID honoured when well formed), 413 on an oversized
    Content-Length, security headers, request metrics and one access-log line."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        body_timeout_seconds: float = 30.0,
        tracing: bool = False,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout_seconds
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id, length = request_id_and_length(scope["headers"])
        begin_request(scope, request_id, started, tracing=self.tracing)
        status = 500
        path: str = scope["path"]
        added_headers = response_headers(request_id, path)

        loop = asyncio.get_running_loop()
        body_deadline = loop.time() + self.body_timeout
        body_done = False

        async def receive_in_time() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(body_deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(
                    f"request body not received within {self.body_timeout:g} s",
                    code="body_timeout",
                    headers={"Connection": "close"},
                ) from None
            body_done = message["type"] != "http.request" or not message.get("more_body")
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *added_headers]
            await send(message)

        try:
            if length is not None and too_large(length, self.max_body_bytes):
                await _reject_413(send_wrapper, request_id, self.max_body_bytes)
            else:
                await self.app(scope, receive_in_time, send_wrapper)
        except ClientDisconnect:
            # only the body reader raises it, so no response has started
            status = CLIENT_CLOSED_REQUEST
        finally:
            end_request(self.metrics, scope, status, started)


def request_id_and_length(headers: Any) -> tuple[str, bytes | None]:
    """The request's id (its X-Request-ID when well formed, else a new one) and its
    Content-Length header as sent."""
    incoming = None
    length = None
    for name, value in headers:
        if name == b"x-request-id":
            incoming = value.decode("latin-1")
        elif name == b"content-length":
            length = value
    request_id = incoming if incoming and _REQUEST_ID.match(incoming) else new_request_id()
    return request_id, length


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of the request's header ``name`` (lower case), as Starlette's
    ``request.headers.get`` reads it, without building its ``Headers`` (and the ``KeyError``
    its ``get`` raises and catches for a header that is not there)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def new_request_id() -> str:
    """32 random hex digits, as ``os.urandom(16).hex()``, taken from random bytes read 4 KiB
    at a time: one ``getrandom`` system call per 256 requests instead of one each."""
    at = _random[1]
    if at >= _RANDOM_BYTES:
        _random[0] = os.urandom(_RANDOM_BYTES)
        at = 0
    _random[1] = at + 16
    pool: bytes = _random[0]
    return pool[at : at + 16].hex()


_RANDOM_BYTES = 4096
# the random bytes and the position of the next id in them (refilled when used up, and in a
# forked child, which must not hand out its parent's ids)
_random: list[Any] = [b"", _RANDOM_BYTES]
os.register_at_fork(after_in_child=lambda: _random.__setitem__(1, _RANDOM_BYTES))


def begin_request(scope: Scope, request_id: str, started: float, *, tracing: bool) -> None:
    """Put the request id and start time in the request's state and the log context."""
    state = scope.setdefault("state", {})
    state["request_id"] = request_id
    state["started"] = started  # the capture's latency (serving/services/capture.py)
    structlog.contextvars.bind_contextvars(request_id=request_id)
    if tracing:  # the request's span is current (OpenTelemetry's middleware is outside)
        trace_id = current_trace_id(request_id)
        if trace_id is not None:
            structlog.contextvars.bind_contextvars(trace_id=trace_id)


def response_headers(request_id: str, path: str) -> list[tuple[bytes, bytes]]:
    """The headers added to every response: its request id and the security headers."""
    headers = [(b"x-request-id", request_id.encode()), *SECURITY_HEADERS]
    if not path.startswith(_DOC_PATHS):
        headers.append(_CSP_API)
    return headers


def rendered_security_headers(path: str) -> bytes:
    """The security headers :func:`response_headers` adds after the request id, as the
    header lines of an HTTP/1.1 response (for a server writing its own bytes)."""
    return _RENDERED_DOCS if path.startswith(_DOC_PATHS) else _RENDERED_API


def _rendered(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(b"%s: %s\r\n" % header for header in headers)


_RENDERED_DOCS = _rendered(SECURITY_HEADERS)
_RENDERED_API = _rendered([*SECURITY_HEADERS, _CSP_API])


def end_request(metrics: Metrics, scope: Scope, status: int, started: float) -> None:
    """Count the request by route template, method and status, time it, log it, and clear
    the log context."""
    elapsed = time.perf_counter() - started
    route = scope.get("route")
    template = getattr(route, "path", None) or "unmatched"
    count, seconds = metrics.request_children(template, scope["method"], status)
    count.inc()
    seconds.observe(elapsed)
    (log.info if status >= 400 else log.debug)(
        "request",
        method=scope["method"],
        path=scope["path"],
        status=status,
        ms=round(elapsed * 1000, 3),
    )
    structlog.contextvars.unbind_contextvars("request_id", "trace_id")


def too_large(length: bytes, limit: int) -> bool:
    try:
        return int(length) > limit
    except ValueError:
        return False


async def _reject_413(send: Any, request_id: str, limit: int) -> None:
    body = orjson.dumps(
        error_body(
            "payload_too_large",
            f"request body exceeds {limit} bytes",
            request_id,
            {"max_body_bytes": limit},
        )
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
