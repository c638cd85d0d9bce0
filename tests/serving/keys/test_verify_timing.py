"""Verifying a token tells nothing about whether its key id exists (issue #19, item 3): an
unknown id and a known id with a wrong secret do the same work, step for step, and their
timings, sampled interleaved, have the same distribution."""

from __future__ import annotations

import random
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from serving.keys.store import KeyStore, migrate

pytestmark = pytest.mark.unit


def _store(tmp_path: Path) -> tuple[KeyStore, str]:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    migrate(url)
    store = KeyStore(url, pepper="pepper-for-tests", cache_seconds=3600)
    for i in range(50):
        store.create(f"client-{i}", ["model:*"])
    key, _ = store.create("target", ["model:*"])
    return store, key.key_id


def _wrong_secret(key_id: str) -> str:
    return f"mlwp_{key_id}_{secrets.token_urlsafe(32)}"


def _unknown_id() -> str:
    return f"mlwp_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


def _trace(store: KeyStore, token: str) -> list[tuple[str, str]]:
    """Every Python and C call ``verify`` makes, in order (names, not addresses)."""
    calls: list[tuple[str, str]] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            calls.append((event, f"{frame.f_code.co_filename}:{frame.f_code.co_qualname}"))
        elif event == "c_call":
            calls.append((event, getattr(arg, "__qualname__", repr(arg))))

    sys.setprofile(profile)
    try:
        store.verify(token)
    finally:
        sys.setprofile(None)
    return calls


def test_unknown_id_and_wrong_secret_make_the_same_calls(tmp_path: Path) -> None:
    store, key_id = _store(tmp_path)
    store.verify(_wrong_secret(key_id))  # the first verify reads the keys
    known = _trace(store, _wrong_secret(key_id))
    unknown = _trace(store, _unknown_id())
    assert known == unknown, (len(known), len(unknown))
    assert not any("sqlalchemy" in name for _, name in unknown)  # no query per token
    store.close()


def test_unknown_id_and_wrong_secret_take_the_same_time(tmp_path: Path) -> None:
    """Interleaved in random order, so load on the machine falls on both alike; compared by
    the median ratio (the Mann-Whitney probability that one is slower is printed beside it),
    with bounds wide enough for a loaded two-core machine and far from what a database
    query per unknown id gave (a ratio near 2, a probability near 1)."""
    from scipy.stats import mannwhitneyu

    store, key_id = _store(tmp_path)
    store.verify(_wrong_secret(key_id))
    samples: dict[str, list[int]] = {"known": [], "unknown": []}
    tokens = {"known": lambda: _wrong_secret(key_id), "unknown": _unknown_id}
    rng = random.Random(19)
    for _ in range(4000):
        order = ["known", "unknown"]
        rng.shuffle(order)
        for kind in order:
            token = tokens[kind]()  # made outside the timed call
            started = time.perf_counter_ns()
            store.verify(token)
            samples[kind].append(time.perf_counter_ns() - started)
    known, unknown = samples["known"], samples["unknown"]
    ratio = statistics.median(unknown) / statistics.median(known)
    u = mannwhitneyu(unknown, known, alternative="two-sided").statistic
    slower = u / (len(unknown) * len(known))  # P(unknown > known), 0.5 when alike
    print(
        f"median known {statistics.median(known) / 1000:.2f} us, unknown "
        f"{statistics.median(unknown) / 1000:.2f} us, ratio {ratio:.3f}, P(slower) {slower:.3f}"
    )
    # The ratio is the judge: a leak (a database query per unknown id) doubles it. The rank
    # probability is printed, not asserted: on an idle machine the timings are so tight that a
    # 4 % difference (130 ns, no query) already read as 0.83 in CI.
    assert 0.8 <= ratio <= 1.25, ratio
    store.close()
