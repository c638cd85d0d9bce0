"""Serving compiles the trees to C at load unless told not to; the answers are the same."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from checkers import c_compiler
from serving_harness import running
from telco import register_version

pytestmark = [
    pytest.mark.integration,
    pytest.mark.anyio,
]


@pytest.fixture(autouse=True)
def _compiler() -> None:
    c_compiler()  # skipped without one, failed in CI


async def test_trees_in_c_at_load_and_the_same_answers_without(
    make_settings: Any,
    mlflow_server: str,
    model_dirs: Any,
    model_name: str,
    records: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlwp.model.predictor import TRIALS
    from serving.models import manager

    log = mock.MagicMock(wraps=manager.log)
    monkeypatch.setattr(manager, "log", log)
    register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    answers = {}
    for native in (True, False):
        settings = make_settings(models=[model_name], native_trees=native, auth_enabled=False)
        async with running(settings) as svc:
            state = svc.services.models.get(model_name)
            predictor = state.variants["champion"].model.predictor
            if native:  # built after the load, in the background
                await _built(svc)
            assert (predictor.native is not None) is native
            if native:
                assert list((settings.models_dir / "native-trees").glob("trees-*.so"))
            answers[native] = []
            for rows in (1, 2, 5):
                response = await svc.client.post(
                    f"/v1/models/{model_name}/predict", json={"data": records[:rows]}
                )
                body = response.json()
                answers[native].append((body["predictions"], body["probabilities"]))
            if native:  # batches of 2-3 rows: decided after TRIALS a side, logged once
                for _ in range(2 * TRIALS):
                    response = await svc.client.post(
                        f"/v1/models/{model_name}/predict", json={"data": records[:3]}
                    )
                    assert response.status_code == 200, response.text
                assert 2 in predictor.chooser.chosen
                choices = [c.kwargs for c in log.info.call_args_list if c.args == ("trees_choice",)]
                assert [c["rows"] for c in choices if c["rows"] == "2-3"] == ["2-3"], choices
                assert {"model", "version", "predictor", "c_us", "xgboost_us"} <= set(choices[0])
    assert answers[True] == answers[False]


async def _built(svc: Any, seconds: float = 60) -> None:
    builds = svc.services.models.tree_builds
    for _ in range(int(seconds * 10)):
        if builds.pending == 0:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the C trees not built within {seconds} s")


async def test_readiness_does_not_wait_for_the_build(
    make_settings: Any,
    mlflow_server: str,
    model_dirs: Any,
    model_name: str,
    records: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a compiler that takes 6 s to build (its --version answers at once)
    real = shutil.which("cc") or shutil.which("gcc")
    slow = tmp_path / "slow-cc"
    slow.write_text(f'#!/bin/sh\ncase " $* " in *" -o "*) sleep 6;; esac\nexec {real} "$@"\n')
    slow.chmod(0o755)
    monkeypatch.setenv("CC", str(slow))
    from serving.models import manager

    log = mock.MagicMock(wraps=manager.log)
    monkeypatch.setattr(manager, "log", log)
    register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    settings = make_settings(models=[model_name], auth_enabled=False)
    started = time.monotonic()
    async with running(settings) as svc:
        ready = time.monotonic() - started
        model = svc.services.models.get(model_name).variants["champion"].model
        predictor = model.predictor
        assert predictor.native is None and predictor.native_pending  # still building
        assert ready < 6, ready
        loaded = [c.kwargs for c in log.info.call_args_list if c.args == ("model_loaded",)]
        assert "C trees building in the background" in loaded[0]["predictor"], loaded
        before = []
        for rows in (1, 2, 5):
            response = await svc.client.post(
                f"/v1/models/{model_name}/predict", json={"data": records[:rows]}
            )
            assert response.status_code == 200, response.text
            before.append(response.json()["probabilities"])
        await _built(svc)
        assert predictor.native is not None and model.predictor.row_trees is predictor.native
        built = [c.kwargs for c in log.info.call_args_list if c.args == ("trees_built",)]
        assert len(built) == 1, built
        assert built[0]["model"] == model_name and built[0]["outcome"].startswith("C trees")
        assert built[0]["seconds"] >= 6, built
        after = []
        for rows in (1, 2, 5):
            response = await svc.client.post(
                f"/v1/models/{model_name}/predict", json={"data": records[:rows]}
            )
            after.append(response.json()["probabilities"])
        assert after == before
        assert os.path.exists(predictor.native.path)
