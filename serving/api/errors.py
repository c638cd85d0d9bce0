"""Exception handlers: every error answers in the design's schema, never with a traceback."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Scope

from serving.api.responses import OrjsonResponse, error_body
from serving.core.errors import HTTP_ERRORS, ServingError

log = structlog.get_logger("mlwp.serving.errors")

_HTTP_CODES = {
    **{error.status: error.code for error in HTTP_ERRORS},
    405: "method_not_allowed",
    406: "not_acceptable",
    415: "unsupported_media_type",
}


def request_id_of(request: Request) -> str | None:
    rid: str | None = request.scope.get("state", {}).get("request_id")
    return rid


def serving_error_response(scope: Scope, exc: ServingError) -> Response:
    """The response to an error the service raised on purpose."""
    return OrjsonResponse(
        error_body(exc.code, exc.message, scope.get("state", {}).get("request_id"), exc.details),
        status_code=exc.status,
        headers=exc.headers,
    )


def _serving_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ServingError):  # pragma: no cover - registered for ServingError
        raise exc
    return serving_error_response(request.scope, exc)


def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
        raise exc
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return OrjsonResponse(
        error_body(code, message, request_id_of(request)),
        status_code=exc.status_code,
        headers=dict(exc.headers or {}),
    )


def _validation_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):  # pragma: no cover
        raise exc
    details: list[dict[str, Any]] = [
        {"location": ".".join(str(p) for p in error.get("loc", ())), "message": error.get("msg")}
        for error in exc.errors()
    ]
    first = details[0] if details else {"location": "?", "message": "invalid request"}
    return OrjsonResponse(
        error_body(
            "invalid_input",
            f"{first['location']}: {first['message']}",
            request_id_of(request),
            details,
        ),
        status_code=422,
    )


def unexpected_error(request: Request, exc: Exception) -> Response:
    """The 500 answer to an error nobody expected, logged with its traceback."""
    log.error("unhandled_error", path=request.url.path, exc_info=exc)
    return OrjsonResponse(
        error_body(
            "internal_error",
            "internal server error; see the service log for this request id",
            request_id_of(request),
        ),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, unexpected_error)
