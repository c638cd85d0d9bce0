"""Fixtures of the serving tests: real churn models trained on the telco data, registered in
the real MLflow server fixture, and the service run in-process with its lifespan."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import telco
from serving_harness import start_mlflow


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shared real MLflow server, with more patience: on a loaded two-core machine the
    server needs minutes to start. ``MLWP_TEST_MLFLOW_URL`` reuses a running server."""
    existing = os.environ.get("MLWP_TEST_MLFLOW_URL")
    if existing:
        yield existing
        return
    with start_mlflow(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different real models (v1 small, v2 deeper), trained once per session."""
    root = tmp_path_factory.mktemp("telco-models")
    return {
        "v1": telco.train_model_dir(root / "v1", rounds=8, max_depth=2, seed=0),
        "v2": telco.train_model_dir(root / "v2", rounds=30, max_depth=4, seed=1),
    }


@pytest.fixture
def model_name() -> str:
    return f"churn-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def records() -> list[dict[str, Any]]:
    return telco.sample_records(5)


@pytest.fixture
def make_settings(tmp_path: Path, mlflow_server: str) -> Callable[..., Any]:
    from serving.core.config import ServingSettings

    def make(**overrides: Any) -> ServingSettings:
        values: dict[str, Any] = {
            "home": tmp_path / "home",
            "mlflow_tracking_uri": mlflow_server,
            "poll_interval_seconds": 0,
            "prediction_log_sample_rate": 0.0,
            **overrides,
        }
        return ServingSettings(**values)

    return make
