"""Settings and the generated Airflow configuration."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mlwp.platform.airflow_config import FAB_AUTH_MANAGER, airflow_environment
from mlwp.settings import Settings

pytestmark = pytest.mark.unit


def test_embedded_defaults_live_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLWP_STORAGE_ROOT", raising=False)
    settings = Settings(home=tmp_path)
    assert settings.airflow_database_url == f"sqlite:///{tmp_path / 'airflow.db'}"
    assert settings.mlflow_backend_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert settings.storage_uri == (tmp_path / "storage").as_uri()


def test_environment_variables_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLWP_AIRFLOW_PORT", "9090")
    monkeypatch.setenv("MLWP_DATABASE_URL", "postgresql://db/airflow")
    settings = Settings(home=tmp_path)
    env = airflow_environment(settings)
    assert env["AIRFLOW__API__PORT"] == "9090"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:9090/execution/"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql://db/airflow"


def test_airflow_uses_fab_and_no_examples(tmp_path: Path) -> None:
    env = airflow_environment(Settings(home=tmp_path))
    assert env["AIRFLOW__CORE__AUTH_MANAGER"] == FAB_AUTH_MANAGER
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__METRICS__STATSD_ON"] == "False"
    assert env["AIRFLOW__API_AUTH__JWT_EXPIRATION_TIME"] == "3600"


def test_secrets_are_private_and_stable(tmp_path: Path) -> None:
    first = airflow_environment(Settings(home=tmp_path))
    second = airflow_environment(Settings(home=tmp_path))
    assert first["AIRFLOW__CORE__FERNET_KEY"] == second["AIRFLOW__CORE__FERNET_KEY"]
    mode = stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode)
    assert mode == 0o600


def test_bad_port_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLWP_SERVING_PORT", "70000")
    with pytest.raises(ValueError, match="serving_port"):
        Settings(home=tmp_path)


def test_secrets_manager_backend_is_off_by_default_and_on_by_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    assert "AIRFLOW__SECRETS__BACKEND" not in airflow_environment(Settings(home=tmp_path))
    monkeypatch.setenv("MLWP_SECRETS_MANAGER_REGION", "eu-west-1")
    env = airflow_environment(Settings(home=tmp_path))
    assert env["AIRFLOW__SECRETS__BACKEND"].endswith("SecretsManagerBackend")
    kwargs = json.loads(env["AIRFLOW__SECRETS__BACKEND_KWARGS"])
    assert kwargs["region_name"] == "eu-west-1"
    assert kwargs["connections_prefix"] == "mlwp/connections"
