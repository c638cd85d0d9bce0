"""Serving compiles the trees to C at load unless told not to; the answers are the same."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from serving_harness import running
from telco import register_version

pytestmark = [
    pytest.mark.integration,
    pytest.mark.anyio,
    pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler"),
]


async def test_trees_in_c_at_load_and_the_same_answers_without(
    make_settings: Any, mlflow_server: str, model_dirs: Any, model_name: str, records: Any
) -> None:
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
    assert answers[True] == answers[False]
