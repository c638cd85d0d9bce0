"""Outages: Redis stopped mid-test and MLflow stopped mid-test both leave the service
answering 200. Each test starts its own server process and stops it; the shared Redis on
6379 and the shared MLflow fixture are never touched."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from server_process import free_port
from serving_harness import running, start_mlflow, stop_process
from telco import register_version

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]


def _start_redis(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 30
    while True:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                stop_process(proc)
                message = f"could not start a private redis-server on port {port}"
                if os.environ.get("MLWP_REQUIRE_SERVICES") == "1":
                    pytest.fail(f"{message} (MLWP_REQUIRE_SERVICES=1)", pytrace=False)
                pytest.skip(message)
            time.sleep(0.1)


async def test_redis_stopped_mid_test_still_answers_200(
    make_settings: Any,
    mlflow_server: str,
    model_dirs: Any,
    model_name: str,
    records: Any,
    tmp_path: Path,
) -> None:
    proc, url = _start_redis(tmp_path)
    try:
        register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
        settings = make_settings(
            models=[model_name],
            redis_url=url,
            redis_retry_seconds=0.5,
        )
        async with running(settings) as svc:
            token = svc.key(f"model:{model_name}", rate_limit="1000/minute")
            predict = f"/v1/models/{model_name}/predict"
            first = await svc.client.post(predict, json={"data": records}, headers=svc.auth(token))
            second = await svc.client.post(predict, json={"data": records}, headers=svc.auth(token))
            assert first.status_code == second.status_code == 200
            assert first.json()["cached"] is False and second.json()["cached"] is True
            assert second.json()["predictions"] == first.json()["predictions"]
            client = redis.Redis.from_url(url)
            for _ in range(100):  # limits in Redis (a hit far from its limit is sent after)
                if any(k.startswith(b"LIMITS") for k in client.keys("*")):
                    break
                await asyncio.sleep(0.02)
            assert any(k.startswith(b"LIMITS") for k in client.keys("*"))
            client.close()

            stop_process(proc)
            results, cached = [], []
            for _ in range(20):
                response = await svc.client.post(
                    predict, json={"data": records}, headers=svc.auth(token)
                )
                results.append(response.status_code)
                cached.append(response.json().get("cached"))
                assert response.json()["predictions"] == first.json()["predictions"]
                # requests arrive through the event loop (in process, a cached answer never
                # yields to it: the limit's count, sent from the loop, would never go out)
                await asyncio.sleep(0.01)
            assert results == [200] * 20
            # the in-process copy may answer until a Redis call fails (a hit far from its
            # limit is counted after the response); from then on the cache is bypassed
            assert False in cached and set(cached[cached.index(False) :]) == {False}
            metrics = (await svc.client.get("/metrics")).text
            hits = 1 + cached.count(True)
            assert f'mlwp_serving_cache_total{{result="hit"}} {float(hits)}' in metrics
            assert "mlwp_serving_redis_errors_total" in metrics
    finally:
        stop_process(proc)


async def test_mlflow_stopped_keeps_serving(
    make_settings: Any, model_dirs: Any, model_name: str, records: Any, tmp_path: Path
) -> None:
    with start_mlflow(tmp_path / "private-mlflow") as uri:
        register_version(uri, model_name, model_dirs["v1"], aliases=("champion",))
        settings = make_settings(
            models=[model_name], mlflow_tracking_uri=uri, model_cache_dir=tmp_path / "models"
        )
        async with running(settings) as svc:
            predict = f"/v1/models/{model_name}/predict"
            assert (
                await svc.client.post(predict, json={"data": records}, headers=svc.auth())
            ).status_code == 200
            # stop the private MLflow server
            httpx.get(f"{uri}/health", timeout=5)
            from serving_harness import stop_mlflow

            stop_mlflow(uri)
            reload = await svc.client.post("/admin/reload?wait=true", headers=svc.auth())
            assert reload.status_code == 200
            assert reload.json()["registry_error"]
            for _ in range(10):
                response = await svc.client.post(
                    predict, json={"data": records}, headers=svc.auth()
                )
                assert response.status_code == 200
            listed = (await svc.client.get("/v1/models", headers=svc.auth())).json()
            assert listed["registry_error"] and listed["models"][0]["variants"]
            assert (await svc.client.get("/health/ready")).status_code == 200
            metrics = (await svc.client.get("/metrics")).text
            assert "mlwp_serving_registry_errors_total 1.0" in metrics
