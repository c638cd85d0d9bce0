"""Airflow plugin: rate-limit failed logins on the api-server's token endpoints.

FAB's ``AUTH_RATE_LIMITED`` only guards its Flask login form; the FastAPI endpoints that hand
out JWTs (``POST /auth/token`` and ``/auth/token/cli``) are not limited at all, so a script could
guess passwords there at full speed. This root middleware counts failed attempts (401 answers)
per client address with the ``limits`` library and answers 429 with ``Retry-After`` once the
limit is reached; successful logins cost nothing, so a busy office behind one address is not
locked out by its own users.

Configuration (environment of the api-server):
- ``MLWP_AUTH_RATE_LIMIT``: a ``limits`` expression, default ``5 per 40 second`` (FAB's default).
- ``MLWP_AUTH_RATE_LIMIT_STORAGE``: a ``limits`` storage URI. Unset, it is ``MLWP_REDIS_URL``
  when that is set (so every api-server worker and replica shares one count: failures on one
  replica are refused on the next), else ``memory://`` (one count per process, enough for the
  embedded single api-server). Read through :mod:`mlwp.settings`, like every ``MLWP_*``
  setting, so a ``.env`` file works too.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)

LOGIN_PATHS = frozenset({"/auth/token", "/auth/token/cli", "/auth/login", "/auth/login/"})
TOO_MANY = b'{"detail":"Too many failed login attempts. Try again later."}'


class FailedLoginRateLimitMiddleware:
    """Pure ASGI middleware: 429 after too many failed logins from one client address.

    With a shared storage (Redis), an outage must not lock every user out nor fail logins with
    500: while it is unreachable, failures are counted in this process only (each replica then
    limits on its own, as without Redis), and the shared storage is tried again after
    ``SHARED_RETRY_SECONDS``. Each switch is logged.
    """

    SHARED_RETRY_SECONDS = 10.0
    # A login must not hang on a stalled Redis: the limiter's calls are synchronous.
    REDIS_TIMEOUT_SECONDS = 0.5

    def __init__(self, app: Any, limit: str | None = None, storage_uri: str | None = None) -> None:
        from limits import parse
        from limits.storage import MemoryStorage, storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        from mlwp.settings import get_settings

        self.app = app
        self.limit = parse(limit or os.environ.get("MLWP_AUTH_RATE_LIMIT", "5 per 40 second"))
        self.storage_uri = storage_uri or get_settings().auth_rate_limit_storage_uri
        options: dict[str, Any] = {"wrap_exceptions": True}
        if self.storage_uri.startswith(("redis", "rediss", "valkey")):
            options["socket_timeout"] = self.REDIS_TIMEOUT_SECONDS
            options["socket_connect_timeout"] = self.REDIS_TIMEOUT_SECONDS
        self.limiter = MovingWindowRateLimiter(storage_from_string(self.storage_uri, **options))
        self.local_limiter = MovingWindowRateLimiter(MemoryStorage())
        self._shared_down_until = 0.0

    def _call(self, method: str, *args: Any) -> Any:
        """``limiter.<method>(*args)`` on the shared storage, or locally while it is down."""
        from limits.errors import StorageError

        if time.monotonic() >= self._shared_down_until:
            try:
                result = getattr(self.limiter, method)(*args)
            except StorageError as exc:
                log.warning(
                    "mlwp login rate limit: %s unreachable (%s); counting in this process "
                    "for %.0f s",
                    self.storage_uri.split("@")[-1],
                    exc.storage_error,
                    self.SHARED_RETRY_SECONDS,
                )
                self._shared_down_until = time.monotonic() + self.SHARED_RETRY_SECONDS
            else:
                return result
        return getattr(self.local_limiter, method)(*args)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path") not in LOGIN_PATHS
        ):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = client[0] if client else "unknown"
        if not self._call("test", self.limit, "mlwp-login", key):
            reset_at, _remaining = self._call("get_window_stats", self.limit, "mlwp-login", key)
            retry_after = max(1, int(reset_at - time.time()))
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"retry-after", str(retry_after).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": TOO_MANY})
            return

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self._call("hit", self.limit, "mlwp-login", key)
            await send(message)

        await self.app(scope, receive, counting_send)


class MlwpSecurityPlugin(AirflowPlugin):
    """Registers the failed-login rate limit on the api-server."""

    name = "mlwp_security"
    fastapi_root_middlewares = [
        {
            "middleware": FailedLoginRateLimitMiddleware,
            "args": [],
            "kwargs": {},
            "name": "mlwp failed-login rate limit",
        }
    ]


__all__ = ["FailedLoginRateLimitMiddleware", "MlwpSecurityPlugin"]
