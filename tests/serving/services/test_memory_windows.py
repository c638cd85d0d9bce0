"""``MemoryWindows`` (serving/services/ratelimit.py), the in-process fixed window, against the
``limits`` library's ``FixedWindowRateLimiter`` over its async ``MemoryStorage``, whose
semantics it keeps: the same hits on the same clock give the same answers and window stats."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter

from serving.services.ratelimit import MemoryWindows


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)  # both count on time.time()
    return clock


def test_same_answers_and_stats_as_limits_memory_storage(clock: Clock) -> None:
    rng = random.Random(18)
    rates = [
        parse("3/second"),
        parse("5 per 2 seconds"),
        parse("2/minute"),
        parse("3 per 1 second"),
    ]

    async def run() -> None:
        reference = FixedWindowRateLimiter(MemoryStorage())
        ours = MemoryWindows()
        for _ in range(3000):
            clock.now += rng.choice([0.0, 0.01, 0.2, 0.7, 1.5, 30.0])
            item = rng.choice(rates)
            identity = ("key", rng.choice(["a", "b"]))
            assert ours.hit(item, *identity) == await reference.hit(item, *identity)
            for rate in rates:
                expected = await reference.get_window_stats(rate, *identity)
                assert ours.get_window_stats(rate, *identity) == expected

    asyncio.run(run())


def test_refused_hits_count_and_the_window_resets_at_its_end(clock: Clock) -> None:
    windows = MemoryWindows()
    item = parse("2/second")
    assert [windows.hit(item, "key", "k") for _ in range(4)] == [True, True, False, False]
    assert windows.get_window_stats(item, "key", "k") == (clock.now + 1, 0)
    clock.now += 0.999
    assert not windows.hit(item, "key", "k")
    clock.now += 0.001
    assert windows.hit(item, "key", "k")  # a new window opens at this hit
    assert windows.get_window_stats(item, "key", "k") == (clock.now + 1, 1)
    assert windows.hit(item, "key", "other")  # each identity has its own


def test_expired_windows_are_dropped(clock: Clock) -> None:
    windows = MemoryWindows()
    item = parse("1/second")
    for address in range(1000):
        windows.hit(item, "failed-auth", str(address))
    clock.now += MemoryWindows.SWEEP_SECONDS
    windows.hit(item, "failed-auth", "new")
    assert len(windows._windows) == 1
