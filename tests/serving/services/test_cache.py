"""The prediction cache on the shared Redis: its in-process copy of recent entries answers a
repeated request without a Redis round trip; without the copy, Redis answers it."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from serving_harness import running
from telco import register_version

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]


@pytest.mark.parametrize("local_bytes", [0, 1 << 20])
async def test_a_repeated_request_is_a_hit_from_redis_or_from_the_local_copy(
    make_settings: Any,
    mlflow_server: str,
    model_dirs: Any,
    model_name: str,
    records: Any,
    redis_url: str,
    local_bytes: int,
) -> None:
    register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    settings = make_settings(
        models=[model_name], redis_url=redis_url, cache_local_bytes=local_bytes
    )
    client = redis.Redis.from_url(redis_url)
    async with running(settings) as svc:
        token = svc.key(f"model:{model_name}")
        predict = f"/v1/models/{model_name}/predict"
        first = await svc.client.post(predict, json={"data": records}, headers=svc.auth(token))
        assert first.status_code == 200 and first.json()["cached"] is False
        (key,) = client.keys(f"mlwp:pred:{model_name}:*")  # written through to Redis
        assert client.ttl(key) > 0
        second = await svc.client.post(predict, json={"data": records}, headers=svc.auth(token))
        assert second.json()["cached"] is True
        assert second.json()["predictions"] == first.json()["predictions"]
        assert second.json()["probabilities"] == first.json()["probabilities"]

        # Only the local copy can answer once the Redis entry is gone.
        client.delete(key)
        third = await svc.client.post(predict, json={"data": records}, headers=svc.auth(token))
        assert third.json()["cached"] is (local_bytes > 0)
        assert third.json()["predictions"] == first.json()["predictions"]
        metrics = (await svc.client.get("/metrics")).text
        hits = 2.0 if local_bytes else 1.0
        assert f'mlwp_serving_cache_total{{result="hit"}} {hits}' in metrics
    client.close()
