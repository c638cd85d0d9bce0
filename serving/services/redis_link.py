"""A Redis connection that steps aside when Redis fails.

Every Redis use in the service (cache, rate limits, prediction log) is optional: after a
failure the link reports itself down for ``retry_seconds`` and callers bypass Redis, so a
Redis outage costs one short timeout, not one per request.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from serving.core.metrics import Metrics

log = structlog.get_logger("mlwp.serving.redis")


class RedisLink:
    """A lazily connected ``redis.asyncio`` client with a simple circuit breaker."""

    def __init__(self, url: str, *, timeout: float, retry_seconds: float, metrics: Metrics):
        import redis.asyncio as aioredis

        self.url = url
        self.client: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._retry_seconds = retry_seconds
        self._down_until = 0.0
        self._metrics = metrics

    @property
    def up(self) -> bool:
        return time.monotonic() >= self._down_until

    def failed(self, operation: str, exc: BaseException) -> None:
        """Record a failure and open the breaker."""
        if self.up:
            log.warning(
                "redis_unavailable",
                operation=operation,
                error=repr(exc)[:200],
                bypass_seconds=self._retry_seconds,
            )
        self._down_until = time.monotonic() + self._retry_seconds
        self._metrics.redis_errors.labels(operation).inc()

    async def close(self) -> None:
        await self.client.aclose()
