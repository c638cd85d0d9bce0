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

- per API key, on every authenticated request (the key's own ``rate_limit`` or the default).
  In Redis, every hit is counted in the shared window, but a request does not wait for the
  count when it cannot matter (:class:`SharedCounts`);
- per client address, on failed authentications (a token that is not a valid key): once an
  address is over it, every request from it is refused with 429 until the window resets,
  before its key is even looked at, so guessing gains nothing (what FAB's login limit does
  for the Airflow UI). The refusal is remembered in process, so a blocked address costs no
  Redis round trip, and a request with a valid key from an address that is not blocked pays
  nothing for this limit at all.
"""

from __future__ import annotations

import asyncio
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


class _Batch:
    """Hits of one window counted here since the last send: the limit and whom it counts,
    how many, and the requests waiting for their count (their position in the batch, their
    future)."""

    __slots__ = ("hits", "identifiers", "item", "waiters")

    def __init__(self, item: RateLimitItem, identifiers: tuple[str, ...]) -> None:
        self.item = item
        self.identifiers = identifiers
        self.hits = 0
        self.waiters: list[tuple[int, asyncio.Future[bool]]] = []


class SharedCounts:
    """The per-key limit's hits counted in Redis, the window of ``limits``'
    ``FixedWindowRateLimiter`` (the same key, the same ``incr_expire`` script: replicas
    running either count together), without a Redis round trip on the request's path while
    the count is far from the limit.

    Hits are sent together, one ``INCRBY n`` per window, and the reply gives each hit its
    place in the window: hit ``i`` of a batch is the ``count - n + i``-th, allowed while that
    is within the limit, as if each had been sent alone. A request waits for that reply only
    when the window may be near its limit: when the count Redis last returned for it, plus
    this process's hits sent or waiting to be, exceeds half the limit; its hit is sent at the
    next event-loop step, with every hit gathered so far. Below that the request goes on at
    once and its hit is counted all the same, sent within ``SEND_SECONDS`` (5 ms: at 5,000
    requests/s one command counts ~25 hits; a send per loop step counted a few). So one
    process refuses exactly what ``FixedWindowRateLimiter`` refuses; with replicas, a window
    can pass its limit only if the others add more than half of it within ``SEND_SECONDS``
    and one round trip of this process's last reply. When Redis fails, the batch is counted
    in memory (as a failed ``hit`` is), and the link's bypass window sends the next hits
    there too.
    """

    # windows remembered; past this the remembered counts are forgotten (they only decide
    # whether a request waits)
    MAX_WINDOWS = 100_000
    # how long hits that no request waits for are gathered before they are sent (a send
    # costs the event loop a redis-py command, ~50-100 us of Python, whatever its size)
    SEND_SECONDS = 0.005

    def __init__(self, storage: Storage, link: RedisLink, memory: MemoryWindows) -> None:
        self._storage = storage
        self._link = link
        self._memory = memory
        self._pending: dict[str, _Batch] = {}  # window key -> hits not sent yet
        self._sent: dict[str, int] = {}  # window key -> hits sent, reply not in yet
        self._known: dict[str, int] = {}  # window key -> the count Redis last returned
        self._send_timer: asyncio.TimerHandle | None = None  # the hits no request waits for
        self._send_soon = False  # the hits some request waits for
        self._sending: set[asyncio.Task[None]] = set()

    def hit(self, item: RateLimitItem, *identifiers: str) -> asyncio.Future[bool] | None:
        """Count one hit: None when the request may go on at once, else a future of
        whether it is within the limit."""
        key = item.key_for(*identifiers)
        batch = self._pending.get(key)
        if batch is None:
            batch = self._pending[key] = _Batch(item, identifiers)
        batch.hits += 1
        loop = asyncio.get_running_loop()
        counted = self._known.get(key, 0) + self._sent.get(key, 0) + batch.hits
        if counted <= item.amount // 2:
            if self._send_timer is None:
                self._send_timer = loop.call_later(self.SEND_SECONDS, self._send_timed)
            return None
        future: asyncio.Future[bool] = loop.create_future()
        batch.waiters.append((batch.hits, future))
        if not self._send_soon:  # a request waits: sent at the next loop step
            self._send_soon = True
            loop.call_soon(self._send_now)
        return future

    def _send_timed(self) -> None:
        self._send_timer = None
        self._flush()

    def _send_now(self) -> None:
        self._send_soon = False
        self._flush()

    def _flush(self) -> None:
        batches, self._pending = self._pending, {}
        if not batches:
            return
        for key, batch in batches.items():
            self._sent[key] = self._sent.get(key, 0) + batch.hits
        task = asyncio.get_running_loop().create_task(self._send(batches))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batches: dict[str, _Batch]) -> None:
        keys = list(batches)
        replies = await asyncio.gather(
            *(
                self._storage.incr(key, batches[key].item.get_expiry(), amount=batches[key].hits)
                for key in keys
            ),
            return_exceptions=True,
        )
        if len(self._known) > self.MAX_WINDOWS:
            self._known.clear()
        for key, reply in zip(keys, replies, strict=True):
            batch = batches[key]
            self._sent[key] -= batch.hits
            if not self._sent[key]:
                del self._sent[key]
            if isinstance(reply, BaseException):
                # as a failed FixedWindowRateLimiter.hit: the link steps aside (anything
                # unexpected too: a waiting request must get an answer)
                self._link.failed("rate_limit", reply)
                waiting = dict(batch.waiters)
                for position in range(1, batch.hits + 1):
                    allowed = self._memory.hit(batch.item, *batch.identifiers)
                    if position in waiting and not waiting[position].done():
                        waiting[position].set_result(allowed)
                continue
            count = int(reply)
            self._known[key] = count
            before = count - batch.hits
            for position, future in batch.waiters:
                if not future.done():
                    future.set_result(before + position <= batch.item.amount)


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
        self._shared: SharedCounts | None = None
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
            self._shared = SharedCounts(storage, link, self._memory)

    async def hit(self, key_id: str, rate: str | None) -> None:
        """Count one request of ``key_id``; raise ``RateLimited`` when over its limit."""
        item = rate_item(rate or self.default_rate)
        limiter: FixedWindowRateLimiter | MemoryWindows = self._memory
        if self._shared is not None and self._redis is not None and self.link is not None:
            if self.link.up:
                limiter = self._redis
                waiting = self._shared.hit(item, "key", key_id)
                if waiting is None:  # far from the limit: counted, no round trip awaited
                    return
                allowed = await waiting
                if not self.link.up:  # the send failed: counted in memory instead
                    limiter = self._memory
            else:
                allowed = self._memory.hit(item, "key", key_id)
        else:  # no coroutine to await: the usual in-memory case
            allowed = self._memory.hit(item, "key", key_id)
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
