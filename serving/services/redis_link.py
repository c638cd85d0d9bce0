"""A Redis connection that steps aside when Redis fails.

Every Redis use in the service (cache, rate limits, prediction log) is optional: after a
failure the link reports itself down for ``retry_seconds`` and callers bypass Redis, so a
Redis outage costs one short timeout, not one per request.

Recovery takes one window, not one per pooled connection. When Redis restarts, every pooled
connection is stale; left in the pool, each would fail on its next use, one at a time, and
each failure would reopen the window (a probe saw about 24 s, once 70 s, with a 5 s window).
So when the link goes down it drops every pooled connection at once, and the first command
after the window runs on a fresh connection: if it succeeds the bypass is over for good. For
the same reason redis-py's own retries are off (by default it retries ten times with backoff,
stalling the request that hit the failure for seconds): one failure, one short timeout, then
the window. Failures while the window is open do not extend it. The cache, the rate limits
and the prediction log share this link's connection pool.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from serving.core.metrics import Metrics

log = structlog.get_logger("mlwp.serving.redis")


class RedisLink:
    """A lazily connected ``redis.asyncio`` client with a simple circuit breaker."""

    def __init__(self, url: str, *, timeout: float, retry_seconds: float, metrics: Metrics):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.timeout = timeout
        self.client: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), retries=0),
            health_check_interval=0,
        )
        self._retry_seconds = retry_seconds
        self._down_until = 0.0
        self._metrics = metrics
        self._dropping: asyncio.Task[None] | None = None

    @property
    def pool(self) -> Any:
        """The connection pool every Redis user of the service shares."""
        return self.client.connection_pool

    @property
    def up(self) -> bool:
        return time.monotonic() >= self._down_until

    def failed(self, operation: str, exc: BaseException) -> None:
        """Record a failure; when the link was up, go down for the window and drop every
        pooled connection (see the module)."""
        self._metrics.redis_errors.labels(operation).inc()
        if not self.up:
            return  # a command that was in flight when the window opened
        log.warning(
            "redis_unavailable",
            operation=operation,
            error=repr(exc)[:200],
            bypass_seconds=self._retry_seconds,
        )
        self._down_until = time.monotonic() + self._retry_seconds
        if self._dropping is None or self._dropping.done():
            self._dropping = asyncio.get_running_loop().create_task(self._drop_connections())

    async def _drop_connections(self) -> None:
        try:
            await self.pool.disconnect(inuse_connections=True)
        except Exception as exc:  # closing broken sockets may fail in any way; they are gone
            log.debug("redis_disconnect_failed", error=repr(exc)[:200])

    async def close(self) -> None:
        if self._dropping is not None:
            await asyncio.gather(self._dropping, return_exceptions=True)
        await self.client.aclose()
