"""A private Redis killed and restarted under load: no request fails, and Redis (cache and
rate limits) is used again within one bypass window of its return (issue #19, item 2)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis_server import PrivateRedis
from serving_harness import running
from telco import register_version

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]

WINDOW = 2.0  # redis_retry_seconds: how long a failure bypasses Redis
WATCH_AFTER_RESTART = 20.0  # several windows: a slow recovery shows as failures in them


async def test_redis_restart_under_load_recovers_within_one_bypass_window(
    make_settings: Any,
    mlflow_server: str,
    model_dirs: Any,
    model_name: str,
    records: Any,
    tmp_path: Path,
) -> None:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
        settings = make_settings(
            models=[model_name],
            redis_url=server.url,
            redis_retry_seconds=WINDOW,
            redis_timeout_seconds=0.5,  # a loaded two-core machine; the outage is a refusal
        )
        async with running(settings) as svc:
            token = svc.key(f"model:{model_name}", rate_limit="1000000/second")
            link = svc.services.redis
            failures: list[tuple[float, str]] = []
            record_failure = link.failed

            def failed(operation: str, exc: BaseException) -> None:
                failures.append((time.monotonic(), operation))
                record_failure(operation, exc)

            link.failed = failed
            statuses: Counter[int] = Counter()
            stop = asyncio.Event()
            url = f"/v1/models/{model_name}/predict"

            async def client_loop(worker: int) -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    row = {**records[n % len(records)], "tenure": (worker * 100_000 + n) % 72}
                    response = await svc.client.post(
                        url, json={"data": [row]}, headers=svc.auth(token)
                    )
                    statuses[response.status_code] += 1
                    await asyncio.sleep(0.002)  # in-process calls never yield otherwise

            workers = [asyncio.create_task(client_loop(i)) for i in range(8)]
            try:
                await asyncio.sleep(2)
                assert link.up and not failures, failures  # warm: pooled connections in use
                server.kill()
                await asyncio.sleep(2 * WINDOW)
                await asyncio.to_thread(server.start)
                back = time.monotonic()
                await asyncio.sleep(WATCH_AFTER_RESTART)
            finally:
                stop.set()
                await asyncio.gather(*workers)

            assert set(statuses) == {200}, statuses  # no request failed through it all
            after = [round(t - back, 2) for t, _ in failures if t >= back]
            last = max((t for t, _ in failures), default=back)
            recovery = max(0.0, last + WINDOW - back)
            print(f"recovery {recovery:.2f} s after Redis returned; failures after: {after}")
            assert recovery <= WINDOW + 1.0, (recovery, after)
            assert link.up
            # Redis serves again: cache hits come back through it
            hits = svc.services.metrics.cache.labels("hit")._value.get()
            response = await svc.client.post(url, json={"data": records}, headers=svc.auth(token))
            response = await svc.client.post(url, json={"data": records}, headers=svc.auth(token))
            assert response.json()["cached"] is True
            assert svc.services.metrics.cache.labels("hit")._value.get() > hits
    finally:
        server.stop()
