"""The per-key limit in Redis without a round trip on the request's path while the count is
far from the limit (``serving.services.ratelimit.SharedCounts``): every hit counted in the
shared window of ``limits``' fixed window, and exactly ``FixedWindowRateLimiter``'s refusals
near the limit. A private redis-server; the shared one is never touched."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
from redis_server import PrivateRedis

from serving.core.errors import RateLimited
from serving.core.metrics import Metrics
from serving.services.ratelimit import RateLimiter, rate_item
from serving.services.redis_link import RedisLink

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def private_redis(tmp_path: Path) -> object:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def _limiter(url: str) -> RateLimiter:
    metrics = Metrics()
    link = RedisLink(url, timeout=5, retry_seconds=5, metrics=metrics)
    return RateLimiter("1000/second", metrics, link)


async def _hits(limiter: RateLimiter, key_id: str, rate: str, count: int) -> list[bool]:
    """``count`` hits sent at once (one loop step): which were allowed."""

    async def one() -> bool:
        try:
            await limiter.hit(key_id, rate)
        except RateLimited:
            return False
        return True

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def _settled(limiter: RateLimiter) -> None:
    shared = limiter._shared
    assert shared is not None
    for _ in range(500):
        await asyncio.sleep(0.01)
        if not shared._sending and not shared._pending:
            return
    raise AssertionError("hits still being sent")


def _count(url: str, key_id: str, rate: str) -> int:
    client = redis.Redis.from_url(url)
    value = client.get("LIMITS:" + rate_item(rate).key_for("key", key_id))
    client.close()
    return int(value or 0)


async def test_far_from_the_limit_no_request_waits_and_every_hit_counts(
    private_redis: PrivateRedis,
) -> None:
    limiter = _limiter(private_redis.url)
    shared = limiter._shared
    assert shared is not None
    futures = [shared.hit(rate_item("1000/minute"), "key", "k1") for _ in range(100)]
    assert futures == [None] * 100  # no request waits for Redis
    await _settled(limiter)
    assert _count(private_redis.url, "k1", "1000/minute") == 100
    assert all(await _hits(limiter, "k1", "1000/minute", 50))
    await _settled(limiter)
    assert _count(private_redis.url, "k1", "1000/minute") == 150


async def test_near_the_limit_the_refusals_are_the_fixed_windows(
    private_redis: PrivateRedis,
) -> None:
    limiter = _limiter(private_redis.url)
    allowed = await _hits(limiter, "k2", "10/minute", 25)
    assert sum(allowed) == 10
    assert await _hits(limiter, "k2", "10/minute", 5) == [False] * 5
    await _settled(limiter)
    assert _count(private_redis.url, "k2", "10/minute") == 30  # refused hits count too
    with pytest.raises(RateLimited) as refused:
        await limiter.hit("k2", "10/minute")
    assert 1 <= int(refused.value.headers["Retry-After"]) <= 60


async def test_two_replicas_share_the_window(private_redis: PrivateRedis) -> None:
    """One replica's hits are in the count the other's requests are judged by."""
    first, second = _limiter(private_redis.url), _limiter(private_redis.url)
    assert all(await _hits(first, "k3", "10/minute", 5))
    await _settled(first)
    # the second knows nothing yet: its first five go on at once (the window holds 10)
    assert sum(await _hits(second, "k3", "10/minute", 20)) == 5
    await _settled(second)
    assert await _hits(first, "k3", "10/minute", 3) == [False] * 3
    await _settled(first)
    assert _count(private_redis.url, "k3", "10/minute") == 28


async def test_redis_gone_the_hits_are_counted_in_memory(private_redis: PrivateRedis) -> None:
    limiter = _limiter(private_redis.url)
    assert sum(await _hits(limiter, "k4", "4/minute", 3)) == 3
    await _settled(limiter)
    private_redis.kill()
    # waiting requests get an answer from the memory windows when the send fails
    allowed = await _hits(limiter, "k4", "4/minute", 6)
    assert sum(allowed) == 4
    assert limiter.link is not None and not limiter.link.up
    # each key keeps its own window in memory
    assert sum(await _hits(limiter, "k5", "4/minute", 6)) == 4


async def test_hits_no_request_waits_for_are_sent_together_later(
    private_redis: PrivateRedis,
) -> None:
    """Far from the limit, hits of several loop steps are gathered (not one send per step);
    a request that waits for its count sends them all at the next step."""
    limiter = _limiter(private_redis.url)
    shared = limiter._shared
    assert shared is not None
    shared.SEND_SECONDS = 60.0  # nothing goes out by time in this test
    item = rate_item("8/minute")
    for _ in range(4):  # within half the limit: no request waits
        assert shared.hit(item, "key", "k6") is None
        await asyncio.sleep(0)
    assert not shared._sending and _count(private_redis.url, "k6", "8/minute") == 0
    assert await _hits(limiter, "k6", "8/minute", 1) == [True]  # the fifth waits
    assert _count(private_redis.url, "k6", "8/minute") == 5
