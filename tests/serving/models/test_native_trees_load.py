"""Serving compiles the trees to C at load unless told not to; the answers are the same."""

from __future__ import annotations

import shutil
from typing import Any
from unittest import mock

import pytest
from serving_harness import running
from telco import register_version

pytestmark = [
    pytest.mark.integration,
    pytest.mark.anyio,
    pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler"),
]


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
