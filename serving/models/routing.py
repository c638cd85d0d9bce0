"""A/B routing: choose a variant by weighted traffic, sticky per routing key.

A key is hashed (BLAKE2b) with the model name into one of 10,000 buckets; the buckets are
cut into consecutive ranges proportional to the traffic split, in a fixed variant order.
So a key reaches the same variant for as long as the split does not change, and moving
traffic from one variant to another only moves keys at the boundary.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Mapping

BUCKETS = 10_000


def bucket_of(model: str, key: str) -> int:
    """The bucket (0..9999) a routing key falls in for ``model``."""
    digest = hashlib.blake2b(f"{model}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class Router:
    """A precomputed routing table for one model's traffic split."""

    def __init__(self, model: str, weights: Mapping[str, float]) -> None:
        positive = {alias: float(w) for alias, w in weights.items() if w > 0}
        if not positive:
            raise ValueError(f"model {model!r}: the traffic split has no variant with weight > 0")
        self.model = model
        total = sum(positive.values())
        # champion first, then alphabetical: a stable order, whatever the tag's key order
        order = sorted(positive, key=lambda alias: (alias != "champion", alias))
        self.variants = tuple(order)
        self.shares = {alias: positive[alias] / total for alias in order}
        bounds: list[int] = []
        running = 0.0
        for alias in order:
            running += positive[alias] / total * BUCKETS
            bounds.append(round(running))
        bounds[-1] = BUCKETS
        self._bounds = bounds

    def choose(self, key: str | None) -> str:
        """The variant for ``key``; a random one (by weight) when there is no key."""
        if len(self.variants) == 1:
            return self.variants[0]
        bucket = bucket_of(self.model, key) if key else random.randrange(BUCKETS)
        return self.variants[bisect.bisect_right(self._bounds, bucket)]
