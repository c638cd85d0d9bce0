"""Failed authentications are limited per client address (429 with Retry-After), in Redis
when configured, so replicas share the count."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_harness import running

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

WRONG = "mlwp_0123456789abcdef_" + "x" * 43


def _settings(tmp_path: Path, **overrides: Any) -> Any:
    from serving.core.config import ServingSettings

    return ServingSettings(
        home=tmp_path / "home",
        mlflow_tracking_uri="http://127.0.0.1:9",  # no registry needed: /v1/models answers
        poll_interval_seconds=0,
        **overrides,
    )


def _client(app: Any, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://serving")


async def test_an_address_over_the_failed_auth_limit_gets_429_even_with_a_valid_key(
    tmp_path: Path,
) -> None:
    async with running(_settings(tmp_path, failed_auth_limit="5/minute"), wait_ready=False) as svc:
        async with _client(svc.app, "10.0.0.1") as guesser, _client(svc.app, "10.0.0.2") as other:
            statuses = []
            for _ in range(7):
                response = await guesser.get("/v1/models", headers=svc.auth(WRONG))
                statuses.append(response.status_code)
            assert statuses == [401] * 5 + [429] * 2
            assert 1 <= int(response.headers["retry-after"]) <= 60
            error = response.json()["error"]
            assert error["code"] == "failed_auth_limited"
            assert error["details"]["limit"] == "5 per 1 minute"
            # a valid key from the blocked address is not even looked at
            blocked = await guesser.get("/v1/models", headers=svc.auth())
            assert blocked.status_code == 429
            # other addresses are not affected, and valid keys never count
            assert (await other.get("/v1/models", headers=svc.auth())).status_code == 200
            for _ in range(10):
                assert (await other.get("/v1/models", headers=svc.auth())).status_code == 200
        metrics = (await svc.client.get("/metrics")).text
        assert "mlwp_serving_auth_failures_total 6.0" in metrics
        assert "mlwp_serving_auth_rate_limited_total 3.0" in metrics


async def test_replicas_share_the_failed_auth_count_in_redis(
    tmp_path: Path, redis_url: str
) -> None:
    # a unique address per run keeps the shared Redis's counters apart from other runs
    address = f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"
    # a generous Redis timeout: a timeout would fall back to per-process counters
    settings = _settings(
        tmp_path, failed_auth_limit="4/minute", redis_url=redis_url, redis_timeout_seconds=5
    )
    async with (
        running(settings, wait_ready=False) as first,
        running(settings, wait_ready=False) as second,
        _client(first.app, address) as a,
        _client(second.app, address) as b,
    ):
        assert (await a.get("/v1/models", headers=first.auth(WRONG))).status_code == 401
        assert (await a.get("/v1/models", headers=first.auth(WRONG))).status_code == 401
        assert (await b.get("/v1/models", headers=second.auth(WRONG))).status_code == 401
        assert (await b.get("/v1/models", headers=second.auth(WRONG))).status_code == 401
        # the fifth failure is over the shared limit, whichever replica sees it
        assert (await b.get("/v1/models", headers=second.auth(WRONG))).status_code == 429
        assert (await a.get("/v1/models", headers=first.auth(WRONG))).status_code == 429
        assert (await a.get("/v1/models", headers=first.auth())).status_code == 429
        assert first.services.redis.up and second.services.redis.up
