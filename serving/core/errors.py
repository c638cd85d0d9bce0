"""Errors the serving service answers on purpose, each with an HTTP status and a code."""

from __future__ import annotations

from typing import Any

from mlwp.errors import MlwpError


class ServingError(MlwpError):
    """Base class: an error answered as ``{"error": {...}}`` with ``status``."""

    code = "serving_error"
    status = 500

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.details = details
        self.headers = headers or {}


class BadRequest(ServingError):
    code = "bad_request"
    status = 400


class Unauthorized(ServingError):
    code = "unauthorized"
    status = 401

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("WWW-Authenticate", "Bearer")


class Forbidden(ServingError):
    code = "forbidden"
    status = 403


class NotFound(ServingError):
    code = "not_found"
    status = 404


class RequestTimeout(ServingError):
    code = "request_timeout"
    status = 408


class PayloadTooLarge(ServingError):
    code = "payload_too_large"
    status = 413


class InvalidInput(ServingError):
    code = "invalid_input"
    status = 422


class RateLimited(ServingError):
    code = "rate_limited"
    status = 429


class Unavailable(ServingError):
    code = "unavailable"
    status = 503


# Each status the service answers on purpose, with its default code. Starlette's own HTTP
# errors (an unknown route's 404, for example) answer with the same codes.
HTTP_ERRORS: tuple[type[ServingError], ...] = (
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    RequestTimeout,
    PayloadTooLarge,
    InvalidInput,
    RateLimited,
    Unavailable,
)


class ModelLoadError(MlwpError):
    """A model version could not be downloaded, loaded or warmed up."""

    code = "model_load_failed"


class KeyStoreError(MlwpError):
    """The API-key database refused an operation (unknown key, bad scope, ...)."""

    code = "key_store_error"
