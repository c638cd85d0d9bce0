"""Resident memory after many champion swaps between versions already seen stays within a
margin of one set of loaded versions (issue #19, item 7; the cause is in
``serving/models/syncs.py``: loads on changing pool threads left memory in every glibc arena)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import psutil
import pytest
from serving_harness import running
from telco import register_version, train_model_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]

SWAPS = 50
MARGIN_MB = 64  # docs/serving.md


def _set_alias(uri: str, name: str, version: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).set_registered_model_alias(name, "champion", version)


async def test_fifty_swaps_keep_memory_within_the_margin(
    make_settings: Any,
    mlflow_server: str,
    model_dirs: Any,
    model_name: str,
    records: Any,
    tmp_path: Any,
) -> None:
    big = await asyncio.to_thread(train_model_dir, tmp_path / "big", rounds=200, max_depth=6)
    versions = [
        register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",)),
        register_version(mlflow_server, model_name, big),
    ]
    # inline_rows=0: every prediction goes through the thread pool, as large batches do
    async with running(make_settings(models=[model_name], inline_rows=0)) as svc:
        stop = asyncio.Event()

        async def client_loop() -> None:
            while not stop.is_set():
                response = await svc.client.post(
                    f"/v1/models/{model_name}/predict", json={"data": records}, headers=svc.auth()
                )
                assert response.status_code == 200, response.text
                await asyncio.sleep(0.005)

        workers = [asyncio.create_task(client_loop()) for _ in range(8)]
        process = psutil.Process()
        rss: list[int] = []
        try:
            for swap in range(SWAPS):
                version = versions[(swap + 1) % 2]
                await asyncio.to_thread(_set_alias, mlflow_server, model_name, version)
                reload = await svc.client.post("/admin/reload?wait=true", headers=svc.auth())
                assert reload.json()["models"][model_name]["variants"] == {"champion": version}
                gc.collect()
                rss.append(process.memory_info().rss >> 20)
        finally:
            stop.set()
            await asyncio.gather(*workers)
        print(f"RSS after swaps 2, 10, 25, 50: {rss[1]}, {rss[9]}, {rss[24]}, {rss[-1]} MB")
        # both versions have been loaded by swap 2: later swaps load nothing new
        assert rss[-1] - rss[1] <= MARGIN_MB, rss
