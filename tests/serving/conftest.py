"""Fixtures of the serving tests: real churn models trained on the telco data, registered in
the session's real MLflow server (``mlflow_server`` of tests/conftest.py), and the service
run in-process with its lifespan."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import telco


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
            **overrides,
        }
        return ServingSettings(**values)

    return make
