"""Exception handlers: every error answers in the design's schema, never with a traceback."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    details = validation_problems(exc.errors(), exc.body)
    first = details[0] if details else {"location": "body", "in": "body", "message": "invalid"}
    return OrjsonResponse(
        error_body(
            "invalid_input",
            f"{_named(first)}: {first['message']}",
            request_id_of(request),
            details,
        ),
        status_code=422,
    )


# Where a request's value came from, as the first element of a pydantic error's loc.
_PLACES = {"query": "query parameter", "path": "path parameter", "header": "header"}


def validation_problems(errors: Sequence[Mapping[str, Any]], body: Any) -> list[dict[str, Any]]:
    """Pydantic's errors of a request as ``{location, in, message}``, one per field, the
    field named as mlwp's own errors name it: ``labels[0].label``, not pydantic's
    ``body.labels.0.label`` (a client saw both forms for one body: the route's own checks
    name the field the first way). ``in`` is ``body`` or where a parameter was (``query``,
    ``path``, ``header``, ``cookie``); a parameter's location is its name.

    A union's failed alternatives each add their type to pydantic's loc
    (``labels.0.label.float`` and ``.str``): an element that names nothing in the ``body``
    sent is such a tag and is left out, and the alternatives' messages are joined under
    their one field."""
    problems: dict[tuple[str, str], list[str]] = {}
    for error in errors:
        loc = tuple(error.get("loc", ())) or ("body",)
        place, names = str(loc[0]), loc[1:]
        message = str(error.get("msg", "invalid"))
        if place == "body":
            location = _body_path(names, body, error.get("type") == "missing") or "body"
            if error.get("type") == "json_invalid":  # loc is ("body", the character's index)
                reason = (error.get("ctx") or {}).get("error", message)
                message = f"invalid JSON at character {names[0] if names else 0}: {reason}"
        else:
            location = ".".join(str(name) for name in names) or place
        messages = problems.setdefault((place, location), [])
        if message not in messages:
            messages.append(message)
    return [
        {"location": location, "in": place, "message": "; ".join(messages)}
        for (place, location), messages in problems.items()
    ]


def _body_path(names: Sequence[Any], body: Any, missing: bool) -> str:
    """``names`` (a loc after ``body``) as a path in ``body``: ``labels[0].label``."""
    path, value = "", body
    for position, name in enumerate(names):
        if isinstance(value, list) and isinstance(name, int) and 0 <= name < len(value):
            path, value = f"{path}[{name}]", value[name]
        elif isinstance(value, Mapping) and isinstance(name, str):
            if name not in value and not (missing and position == len(names) - 1):
                continue  # a union alternative's tag, not a key of the object sent
            path, value = f"{path}.{name}" if path else name, value.get(name)
        # else: a tag under a value that is no container (null given for a union)
    return path


def _named(problem: Mapping[str, Any]) -> str:
    """A problem's field as its message names it: ``labels[0].label``, ``query parameter
    'timeout'``."""
    if problem["in"] == "body":
        return str(problem["location"])
    return f"{_PLACES.get(problem['in'], problem['in'])} {problem['location']!r}"


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
