"""The prediction cache: Redis, keyed by model, version and a canonical hash of the rows."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

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

    def __init__(self, link: RedisLink, ttl_seconds: int, metrics: Metrics) -> None:
        self.link = link
        self.ttl = ttl_seconds
        self.metrics = metrics

    async def get(self, key: str) -> dict[str, Any] | None:
        if not self.link.up:
            self.metrics.cache.labels("bypass").inc()
            return None
        try:
            raw = await self.link.client.get(key)
        except _REDIS_ERRORS as exc:
            self.link.failed("cache_get", exc)
            self.metrics.cache.labels("error").inc()
            return None
        if raw is None:
            self.metrics.cache.labels("miss").inc()
            return None
        self.metrics.cache.labels("hit").inc()
        value: dict[str, Any] = orjson.loads(raw)
        return value

    async def set(self, key: str, value: dict[str, Any]) -> None:
        if not self.link.up:
            return
        try:
            await self.link.client.set(key, orjson.dumps(value), ex=self.ttl)
        except _REDIS_ERRORS as exc:
            self.link.failed("cache_set", exc)


REDIS_ERRORS = _REDIS_ERRORS
