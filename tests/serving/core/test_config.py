"""Serving settings: placeholders and disabled auth are refused outside development."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.core.config import ServingSettings

pytestmark = pytest.mark.unit


def test_development_defaults_need_no_secret(tmp_path: Path) -> None:
    settings = ServingSettings(home=tmp_path)
    assert settings.key_pepper is None
    assert settings.key_database_url == f"sqlite:///{tmp_path / 'serving.db'}"


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_placeholder_pepper_is_refused_outside_development(
    tmp_path: Path, environment: str
) -> None:
    with pytest.raises(ValidationError, match="MLWP_SERVING_KEY_PEPPER is a placeholder"):
        ServingSettings(home=tmp_path, environment=environment, key_pepper="changethis")
    with pytest.raises(ValidationError, match="AUTH_ENABLED=false is allowed in development"):
        ServingSettings(home=tmp_path, environment=environment, auth_enabled=False)
    ok = ServingSettings(home=tmp_path, environment=environment, key_pepper="s3cr3t-" * 6)
    assert ok.key_pepper is not None


def test_environment_variables_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLWP_SERVING_MODELS", '["churn", "fraud"]')
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLWP_SERVING_REDIS_URL", "redis://:pw@redis:6379/0")
    settings = ServingSettings(home=tmp_path)
    assert settings.models == ["churn", "fraud"]
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    assert settings.redis == "redis://:pw@redis:6379/0"
    assert "pw" not in repr(settings)
