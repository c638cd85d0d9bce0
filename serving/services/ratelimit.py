"""Rate limits: the ``limits`` library's fixed window in Redis when configured (shared by the
replicas), else (and when Redis fails) :class:`MemoryWindows`, the same fixed window counted in
process.

``limits``' own async memory storage cost each request 7-9 us (0.6-0.8 us this way, measured
on uvloop with a loop step between hits, as under load): three coroutines and an
``asyncio.Lock`` per hit, the key string built anew, and an asyncio task created after every
hit to sweep expired keys.
:class:`MemoryWindows` keeps its semantics (a window opens at a key's first hit and lasts the
limit's expiry; every hit counts, refused ones too; allowed while the count is at most the
limit's amount; the reset time is the window's end) as plain synchronous dictionary work: on
one event loop nothing can interleave with it, so it needs no lock.

Two limits:

- per API key, on every authenticated request (the key's own ``rate_limit`` or the default);
- per client address, on failed authentications (a token that is not a valid key): once an
  address is over it, every request from it is refused with 429 until the window resets,
  before its key is even looked at, so guessing gains nothing (what FAB's login limit does
  for the Airflow UI). The refusal is remembered in process, so a blocked address costs no
  Redis round trip, and a request with a valid key from an address that is not blocked pays
  nothing for this limit at all.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

from cachetools import TTLCache
from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.util import WindowStats

from serving.core.errors import RateLimited
from serving.core.metrics import Metrics
from serving.services.cache import REDIS_ERRORS
from serving.services.redis_link import RedisLink


@lru_cache(maxsize=256)
def rate_item(rate: str) -> RateLimitItem:
    return parse(rate)


class MemoryWindows:
    """Fixed-window counters in process, with the semantics of ``limits``'
    ``FixedWindowRateLimiter`` over its ``MemoryStorage`` (see the module); synchronous, for
    one event loop."""

    # how often expired windows are dropped (failed-authentication addresses are many)
    SWEEP_SECONDS = 10.0

    def __init__(self) -> None:
        # (limit's key, identity...) -> [hits, window end as time.time()]
        self._windows: dict[tuple[str, ...], list[float]] = {}
        self._next_sweep = 0.0

    @staticmethod
    def _key(item: RateLimitItem, identifiers: tuple[str, ...]) -> tuple[str, ...]:
        # the parts of item.key_for(): equal limits written differently share a window
        return (str(item.amount), str(item.multiples), item.GRANULARITY.name, *identifiers)

    def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        """Count one hit; True when the window's hits are still within the limit."""
        now = time.time()
        key = self._key(item, identifiers)
        window = self._windows.get(key)
        if window is None or window[1] <= now:
            if now >= self._next_sweep:
                self._sweep(now)
            self._windows[key] = window = [0, now + item.get_expiry()]
        window[0] += 1
        return window[0] <= item.amount

    def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        """The window's end (now when there is none) and the hits left in it."""
        now = time.time()
        window = self._windows.get(self._key(item, identifiers))
        if window is None or window[1] <= now:
            return WindowStats(now, item.amount)
        return WindowStats(window[1], max(0, item.amount - int(window[0])))

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.SWEEP_SECONDS
        expired = [key for key, (_, end) in self._windows.items() if end <= now]
        for key in expired:
            del self._windows[key]


# Addresses currently refused for failed authentications, remembered in process; bounded so
# that many addresses cannot grow it without limit (an evicted one is refused again by Redis).
BLOCKED_ADDRESSES_MAX = 65_536


class RateLimiter:
    """Count a request against its key's limit, and failed authentications against the
    client address's; raise ``RateLimited`` with Retry-After."""

    def __init__(
        self,
        default_rate: str,
        metrics: Metrics,
        link: RedisLink | None,
        failed_auth_rate: str | None = None,
    ) -> None:
        rate_item(default_rate)  # refuse a bad setting at start
        self.default_rate = default_rate
        self.failed_auth_item = rate_item(failed_auth_rate) if failed_auth_rate else None
        self.metrics = metrics
        self.link = link
        # address -> time.time() when its refusal ends
        self._blocked: TTLCache[str, float] = TTLCache(
            maxsize=BLOCKED_ADDRESSES_MAX,
            ttl=self.failed_auth_item.get_expiry() if self.failed_auth_item else 1,
        )
        self._refused_any = False
        self._memory = MemoryWindows()
        self._redis: FixedWindowRateLimiter | None = None
        if link is not None:
            storage = storage_from_string(
                "async+" + link.url,
                implementation="redispy",
                wrap_exceptions=True,
                # the link's pool: its timeouts, no hidden retries, dropped together on failure
                connection_pool=link.pool,
            )
            if not isinstance(storage, Storage):
                raise TypeError(f"limits returned a synchronous storage for {link.url!r}")
            self._redis = FixedWindowRateLimiter(storage)

    async def hit(self, key_id: str, rate: str | None) -> None:
        """Count one request of ``key_id``; raise ``RateLimited`` when over its limit."""
        item = rate_item(rate or self.default_rate)
        if self._redis is None:  # no coroutine to await: the usual in-memory case
            limiter: FixedWindowRateLimiter | MemoryWindows = self._memory
            allowed = self._memory.hit(item, "key", key_id)
        else:
            limiter, allowed = await self._hit(item, "key", key_id)
        if allowed:
            return
        self.metrics.rate_limited.inc()
        retry_after = await self._retry_after(limiter, item, "key", key_id)
        raise RateLimited(
            f"rate limit {item} exceeded for this API key; retry in {retry_after} s",
            details={"limit": str(item), "retry_after": retry_after},
            headers={"Retry-After": str(retry_after)},
        )

    def refuse_blocked(self, address: str) -> None:
        """Raise ``RateLimited`` when ``address`` is over its failed-authentication limit."""
        # until an address is first refused, skip the TTLCache lookup (3 us, a request's 1 %)
        until = self._blocked.get(address) if self._refused_any else None
        if until is None:
            return
        retry_after = math.ceil(until - time.time())
        if retry_after <= 0:
            self._blocked.pop(address, None)
            return
        self.metrics.auth_rate_limited.inc()
        raise self._auth_refusal(retry_after)

    async def failed_authentication(self, address: str) -> None:
        """Count a failed authentication of ``address``; raise ``RateLimited`` (and refuse
        the address until the window resets) when it is over the limit."""
        self.metrics.auth_failures.inc()
        item = self.failed_auth_item
        if item is None:
            return
        limiter, allowed = await self._hit(item, "failed-auth", address)
        if allowed:
            return
        retry_after = await self._retry_after(limiter, item, "failed-auth", address)
        self._blocked[address] = time.time() + retry_after
        self._refused_any = True
        self.metrics.auth_rate_limited.inc()
        raise self._auth_refusal(retry_after)

    def _auth_refusal(self, retry_after: int) -> RateLimited:
        item = self.failed_auth_item
        return RateLimited(
            f"too many failed authentications from this address; retry in {retry_after} s",
            code="failed_auth_limited",
            details={"limit": str(item), "retry_after": retry_after},
            headers={"Retry-After": str(retry_after)},
        )

    async def _hit(
        self, item: RateLimitItem, namespace: str, identity: str
    ) -> tuple[FixedWindowRateLimiter | MemoryWindows, bool]:
        """Count a hit in Redis when it is up, else (or when Redis fails) in memory."""
        if self._redis is not None and self.link is not None and self.link.up:
            try:
                return self._redis, await self._redis.hit(item, namespace, identity)
            except (StorageError, *REDIS_ERRORS) as exc:
                self.link.failed("rate_limit", exc)
        return self._memory, self._memory.hit(item, namespace, identity)

    @staticmethod
    async def _retry_after(
        limiter: FixedWindowRateLimiter | MemoryWindows,
        item: RateLimitItem,
        namespace: str,
        identity: str,
    ) -> int:
        try:
            if isinstance(limiter, MemoryWindows):
                stats = limiter.get_window_stats(item, namespace, identity)
            else:
                stats = await limiter.get_window_stats(item, namespace, identity)
            return max(1, math.ceil(stats.reset_time - time.time()))
        except (StorageError, *REDIS_ERRORS):  # the refusal stands without a window
            return max(1, item.get_expiry())
