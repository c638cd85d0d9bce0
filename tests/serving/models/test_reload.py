"""Reload: atomic swaps under load, broken versions, A/B and shadow through HTTP."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from serving_harness import running
from telco import corrupt_model_dir, mismatched_model_dir, register_version, set_traffic

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]


def _set_alias(uri: str, name: str, alias: str, version: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).set_registered_model_alias(name, alias, version)


async def test_version_swap_under_concurrent_load_fails_no_request(
    make_settings: Any, mlflow_server: str, model_dirs: Any, model_name: str, records: Any
) -> None:
    v1 = register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    async with running(make_settings(models=[model_name])) as svc:
        # eight clients in a loop outrun the default per-key limit; limits are tested elsewhere
        token = svc.key(f"model:{model_name}", rate_limit="100000/second")
        statuses: Counter[int] = Counter()
        versions: list[str] = []
        stop = asyncio.Event()

        # Bounded, so a swap that never completes fails the test instead of hanging it.
        deadline = time.monotonic() + 120

        async def client_loop() -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                response = await svc.client.post(
                    f"/v1/models/{model_name}/predict",
                    json={"data": records[:2]},
                    headers=svc.auth(token),
                )
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    versions.append(response.json()["model_version"])
                # In-process calls never suspend on I/O: pause so the reload thread gets the GIL.
                await asyncio.sleep(0.005)

        workers = [asyncio.create_task(client_loop()) for _ in range(8)]
        await asyncio.sleep(0.5)
        v2 = await asyncio.to_thread(register_version, mlflow_server, model_name, model_dirs["v2"])
        await asyncio.to_thread(_set_alias, mlflow_server, model_name, "champion", v2)
        reload = await asyncio.wait_for(
            svc.client.post("/admin/reload?wait=true", headers=svc.auth()), timeout=90
        )
        assert reload.status_code == 200, reload.text
        assert reload.json()["models"][model_name]["variants"] == {"champion": v2}
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)

        assert set(statuses) == {200}, statuses
        assert v1 in versions and v2 in versions
        # once v2 is seen, v1 never comes back: the swap is one step
        first_v2 = versions.index(v2)
        assert v1 not in versions[first_v2:]


async def test_slow_load_answers_at_once_and_the_reload_still_lands(
    make_settings: Any,
    mlflow_server: str,
    model_dirs: Any,
    model_name: str,
    records: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A load slower than any caller waits: the reloads answer 202 at once, join at most one
    follow-up sync, and the new version serves when the load ends (polling is off)."""
    from serving.models import manager as manager_module

    register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    async with running(make_settings(models=[model_name])) as svc:
        v2 = await asyncio.to_thread(register_version, mlflow_server, model_name, model_dirs["v2"])
        await asyncio.to_thread(_set_alias, mlflow_server, model_name, "champion", v2)
        real_load = manager_module._load_mlwp_model
        loads: list[str] = []

        def slow_load(path: Any, threads: int) -> Any:
            loads.append(str(path))
            time.sleep(3)
            return real_load(path, threads)

        monkeypatch.setattr(manager_module, "_load_mlwp_model", slow_load)
        started = time.monotonic()
        answers = await asyncio.gather(
            *(svc.client.post("/admin/reload", headers=svc.auth()) for _ in range(4))
        )
        assert time.monotonic() - started < 3, "a reload waited for the load"
        assert [a.status_code for a in answers] == [202] * 4
        assert len({a.json()["sync"]["id"] for a in answers}) <= 2  # joined, not four syncs

        deadline = time.monotonic() + 90
        while True:
            listed = (await svc.client.get("/v1/models", headers=svc.auth())).json()
            variants = {v["alias"]: v["version"] for v in listed["models"][0]["variants"]}
            if variants == {"champion": v2} and listed["syncs"]["running"] is None:
                break
            assert time.monotonic() < deadline, listed
            await asyncio.sleep(0.2)
        assert len(loads) == 1  # the follow-up sync reused the loaded version
        response = await svc.client.post(
            f"/v1/models/{model_name}/predict", json={"data": records}, headers=svc.auth()
        )
        assert response.status_code == 200 and response.json()["model_version"] == v2


async def test_corrupted_new_version_leaves_the_old_one_serving(
    make_settings: Any, mlflow_server: str, model_dirs: Any, model_name: str, records: Any
) -> None:
    v1 = register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    async with running(make_settings(models=[model_name])) as svc:
        bad = register_version(mlflow_server, model_name, corrupt_model_dir(model_dirs["v1"]))
        _set_alias(mlflow_server, model_name, "champion", bad)
        reload = await svc.client.post("/admin/reload?wait=true", headers=svc.auth())
        assert reload.status_code == 200
        (error,) = reload.json()["models"][model_name]["load_errors"]
        assert error["alias"] == "champion" and error["version"] == bad
        assert error["serving_version"] == v1
        assert f"{model_name} version {bad}:" in error["error"]

        response = await svc.client.post(
            f"/v1/models/{model_name}/predict", json={"data": records}, headers=svc.auth()
        )
        assert response.status_code == 200
        assert response.json()["model_version"] == v1

        listed = (await svc.client.get("/v1/models", headers=svc.auth())).json()
        assert listed["models"][0]["load_errors"][0]["version"] == bad
        metrics = (await svc.client.get("/metrics")).text
        assert (
            f'mlwp_serving_model_load_failed{{alias="champion",model="{model_name}"}} 1.0'
            in metrics
        )
        assert (
            f'mlwp_serving_model_load_failures_total{{alias="champion",model="{model_name}"}}'
            f" 1.0" in metrics
        )


async def test_feature_mismatch_is_refused_naming_both_counts(
    make_settings: Any, mlflow_server: str, model_dirs: Any, model_name: str, records: Any
) -> None:
    """A booster trained on other features than its preprocessing produces fails to load with
    the cause, not with what the warm-up saw."""
    from mlwp import model as mlwp_model

    produced = len(mlwp_model.load(model_dirs["v1"]).preprocessing.outputs)
    v1 = register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    async with running(make_settings(models=[model_name])) as svc:
        bad = register_version(mlflow_server, model_name, mismatched_model_dir(model_dirs["v1"]))
        _set_alias(mlflow_server, model_name, "champion", bad)
        reload = await svc.client.post("/admin/reload?wait=true", headers=svc.auth())
        (error,) = reload.json()["models"][model_name]["load_errors"]
        assert error["version"] == bad and error["serving_version"] == v1
        assert (
            f"the booster expects 5 features, the preprocessing produces {produced}"
            in error["error"]
        ), error
        response = await svc.client.post(
            f"/v1/models/{model_name}/predict", json={"data": records}, headers=svc.auth()
        )
        assert response.json()["model_version"] == v1


async def test_ab_split_is_sticky_per_routing_key_and_shadow_never_answers(
    make_settings: Any, mlflow_server: str, model_dirs: Any, model_name: str, records: Any
) -> None:
    v1 = register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    v2 = register_version(
        mlflow_server, model_name, model_dirs["v2"], aliases=("challenger", "shadow")
    )
    set_traffic(mlflow_server, model_name, {"champion": 50, "challenger": 50})
    async with running(make_settings(models=[model_name])) as svc:
        url = f"/v1/models/{model_name}/predict"
        seen: dict[str, str] = {}
        counts: Counter[str] = Counter()
        for i in range(200):
            key = f"user-{i}"
            for attempt in range(2):
                headers = {**svc.auth(), "X-Routing-Key": key} if attempt == 0 else svc.auth()
                body: dict[str, Any] = {"data": records[:1]}
                if attempt == 1:
                    body["routing_key"] = key  # the body field routes like the header
                response = await svc.client.post(url, json=body, headers=headers)
                assert response.status_code == 200
                payload = response.json()
                assert payload["variant"] in {"champion", "challenger"}
                expected_version = v1 if payload["variant"] == "champion" else v2
                assert payload["model_version"] == expected_version
                if attempt == 0:
                    seen[key] = payload["variant"]
                    counts[payload["variant"]] += 1
                else:
                    assert payload["variant"] == seen[key], key
        # 200 keys at 50/50: each side within 5 sigma (~35) of 100
        assert abs(counts["champion"] - 100) <= 35, counts
        await asyncio.sleep(0.5)  # shadow scoring runs after each response
        metrics = (await svc.client.get("/metrics")).text
        assert f'mlwp_serving_shadow_predictions_total{{model="{model_name}",version="{v2}"}}' in (
            metrics
        )
        described = (await svc.client.get("/v1/models", headers=svc.auth())).json()["models"][0]
        assert described["shadow"]["version"] == v2
        assert described["effective_traffic"] == {"champion": 50.0, "challenger": 50.0}
