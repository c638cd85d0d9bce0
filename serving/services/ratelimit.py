"""Per-key rate limits with the ``limits`` library: Redis storage when configured, memory
otherwise; when Redis fails, the process falls back to its in-memory counters."""

from __future__ import annotations

import math
import time
from functools import lru_cache

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from serving.core.errors import RateLimited
from serving.core.metrics import Metrics
from serving.services.cache import REDIS_ERRORS
from serving.services.redis_link import RedisLink


@lru_cache(maxsize=256)
def rate_item(rate: str) -> RateLimitItem:
    return parse(rate)


class RateLimiter:
    """Count a request against its key's limit; raise ``RateLimited`` with Retry-After."""

    def __init__(self, default_rate: str, metrics: Metrics, link: RedisLink | None) -> None:
        rate_item(default_rate)  # refuse a bad setting at start
        self.default_rate = default_rate
        self.metrics = metrics
        self.link = link
        self._memory = FixedWindowRateLimiter(MemoryStorage())
        self._redis: FixedWindowRateLimiter | None = None
        if link is not None:
            storage = storage_from_string(
                "async+" + link.url,
                implementation="redispy",
                wrap_exceptions=True,
                socket_timeout=0.05,
                socket_connect_timeout=0.05,
            )
            if not isinstance(storage, Storage):
                raise TypeError(f"limits returned a synchronous storage for {link.url!r}")
            self._redis = FixedWindowRateLimiter(storage)

    async def hit(self, key_id: str, rate: str | None) -> None:
        item = rate_item(rate or self.default_rate)
        limiter = self._memory
        if self._redis is not None and self.link is not None and self.link.up:
            limiter = self._redis
            try:
                allowed = await limiter.hit(item, "key", key_id)
            except (StorageError, *REDIS_ERRORS) as exc:
                self.link.failed("rate_limit", exc)
                limiter = self._memory
                allowed = await limiter.hit(item, "key", key_id)
        else:
            allowed = await limiter.hit(item, "key", key_id)
        if allowed:
            return
        self.metrics.rate_limited.inc()
        try:
            stats = await limiter.get_window_stats(item, "key", key_id)
            retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        except (StorageError, *REDIS_ERRORS):  # the refusal stands without a window
            retry_after = max(1, item.get_expiry())
        raise RateLimited(
            f"rate limit {item} exceeded for this API key; retry in {retry_after} s",
            details={"limit": str(item), "retry_after": retry_after},
            headers={"Retry-After": str(retry_after)},
        )
