"""The prediction cache: Redis, keyed by model, version and a canonical hash of the rows.

A small in-process copy of recent entries (``cache_local_bytes``) sits in front of Redis: a
repeated request is answered without a Redis round trip, which costs more CPU than the rest
of a cached answer. An entry is fixed by the model version and the features, so a copy is
never stale; it expires with the Redis TTL, and while Redis is bypassed after a failure the
copy is bypassed too, so the cache behaves as one.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from cachetools import TTLCache

from serving.core.metrics import Metrics
from serving.services.redis_link import RedisLink

_REDIS_ERRORS: tuple[type[BaseException], ...]
try:
    from redis.exceptions import RedisError

    _REDIS_ERRORS = (RedisError, OSError, TimeoutError)
except ImportError:  # pragma: no cover - redis is in the serving group
    _REDIS_ERRORS = (OSError, TimeoutError)


def cache_key(model: str, version: str, records: list[dict[str, Any]]) -> str:
    """``mlwp:pred:<model>:<version>:<sha256 of the records with sorted keys>``."""
    digest = hashlib.sha256(orjson.dumps(records, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"mlwp:pred:{model}:{version}:{digest}"


class PredictionCache:
    """Get and set scored results; every Redis failure is a miss, never an error."""

    def __init__(
        self, link: RedisLink, ttl_seconds: int, metrics: Metrics, local_bytes: int = 0
    ) -> None:
        self.link = link
        self.ttl = ttl_seconds
        self.metrics = metrics
        # key -> the entry's JSON, bounded by the total size of the entries
        self.local: TTLCache[str, bytes] | None = (
            TTLCache(maxsize=local_bytes, ttl=ttl_seconds, getsizeof=len) if local_bytes else None
        )
        self._hits, self._misses = metrics.cache.labels("hit"), metrics.cache.labels("miss")

    async def get(self, key: str) -> dict[str, Any] | None:
        if not self.link.up:
            self.metrics.cache.labels("bypass").inc()
            return None
        raw = self.local.get(key) if self.local is not None else None
        if raw is None:
            try:
                raw = await self.link.client.get(key)
            except _REDIS_ERRORS as exc:
                self.link.failed("cache_get", exc)
                self.metrics.cache.labels("error").inc()
                return None
            if raw is None:
                self._misses.inc()
                return None
            self._keep(key, raw)
        self._hits.inc()
        value: dict[str, Any] = orjson.loads(raw)
        return value

    async def set(self, key: str, value: dict[str, Any]) -> None:
        if not self.link.up:
            return
        raw = orjson.dumps(value)
        self._keep(key, raw)
        try:
            await self.link.client.set(key, raw, ex=self.ttl)
        except _REDIS_ERRORS as exc:
            self.link.failed("cache_set", exc)

    def _keep(self, key: str, raw: bytes) -> None:
        if self.local is not None and len(raw) <= self.local.maxsize:  # else: Redis only
            self.local[key] = raw


REDIS_ERRORS = _REDIS_ERRORS
