"""The service's long-lived parts, built once per application from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from serving.core.config import ServingSettings
from serving.core.metrics import Metrics
from serving.keys.store import KeyStore, migrate
from serving.models.manager import ModelManager
from serving.models.syncs import SyncRunner
from serving.services.cache import PredictionCache
from serving.services.capture import CaptureBuffer
from serving.services.ratelimit import RateLimiter
from serving.services.redis_link import RedisLink


@dataclass
class Services:
    """Everything a request may need, reachable as ``request.app.state.services``."""

    settings: ServingSettings
    metrics: Metrics
    models: ModelManager
    syncs: SyncRunner
    keys: KeyStore | None
    limiter: RateLimiter
    cache: PredictionCache | None
    redis: RedisLink | None
    capture: CaptureBuffer

    @classmethod
    def build(cls, settings: ServingSettings) -> Services:
        metrics = Metrics()
        link = None
        if settings.redis:
            link = RedisLink(
                settings.redis,
                timeout=settings.redis_timeout_seconds,
                retry_seconds=settings.redis_retry_seconds,
                metrics=metrics,
            )
        keys = None
        if settings.auth_enabled:
            migrate(settings.key_database_url)
            keys = KeyStore(
                settings.key_database_url,
                pepper=settings.key_pepper.get_secret_value() if settings.key_pepper else None,
                cache_seconds=settings.key_cache_seconds,
                background=True,
            )
        cache = None
        if link is not None and settings.cache_enabled:
            cache = PredictionCache(
                link, settings.cache_ttl_seconds, metrics, settings.cache_local_bytes
            )
        models = ModelManager(settings, metrics)
        return cls(
            settings=settings,
            metrics=metrics,
            models=models,
            syncs=SyncRunner(models),
            keys=keys,
            limiter=RateLimiter(
                settings.rate_limit, metrics, link, failed_auth_rate=settings.failed_auth_limit
            ),
            cache=cache,
            redis=link,
            capture=CaptureBuffer(settings, metrics),
        )

    async def close(self) -> None:
        await self.capture.close()
        await self.syncs.close()
        self.models.close()
        if self.redis is not None:
            await self.redis.close()
        if self.keys is not None:
            self.keys.close()
