"""Where shared state lives: the settings that move it off this host, the Airflow options
they generate, and the `mlwp up` preflight that refuses local state in production."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlwp.cli import app
from mlwp.platform.airflow_config import airflow_environment
from mlwp.platform.preflight import LocalStateInProduction, check_shared_state
from mlwp.platform.webserver_config import webserver_config_text
from mlwp.settings import Settings

pytestmark = pytest.mark.unit

PRODUCTION = {
    "MLWP_STORAGE_ROOT": "s3://acme-mlwp/storage",
    "MLWP_MLFLOW_ARTIFACTS_DESTINATION": "s3://acme-mlwp/mlartifacts",
    "MLWP_MLFLOW_BACKEND_STORE_URI": "postgresql://db/mlflow",
    "MLWP_DATABASE_URL": "postgresql://db/airflow",
    "MLWP_SERVING_DATABASE_URL": "postgresql://db/serving",
    "MLWP_REMOTE_LOG_FOLDER": "s3://acme-mlwp/logs",
    "MLWP_REDIS_URL": "redis://cache:6379/0",
    "MLWP_FERNET_KEY": "x" * 43 + "=",
    "MLWP_JWT_SECRET": "jwt-secret-of-this-installation",
    "MLWP_API_SECRET_KEY": "session-key-of-this-installation",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [*PRODUCTION, "MLWP_EXECUTOR", "MLWP_PRODUCTION", "MLWP_AUDIT_DATABASE_URL"]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_remote_logging_is_configured_from_one_setting(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    assert "AIRFLOW__LOGGING__REMOTE_LOGGING" not in airflow_environment(Settings(home=tmp_path))
    clean_env.setenv("MLWP_REMOTE_LOG_FOLDER", "s3://acme-mlwp/logs/")
    env = airflow_environment(Settings(home=tmp_path))
    assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "True"
    assert env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"] == "s3://acme-mlwp/logs"
    assert env["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"] == "aws_default"
    clean_env.setenv("MLWP_REMOTE_LOG_CONN_ID", "aws_logs")
    assert (
        airflow_environment(Settings(home=tmp_path))["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"]
        == "aws_logs"
    )


def test_redis_url_shares_the_login_limit_of_both_login_paths(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path)
    assert settings.auth_rate_limit_storage_uri == "memory://"
    assert "MLWP_AUTH_RATE_LIMIT_STORAGE" not in airflow_environment(settings)
    clean_env.setenv("MLWP_REDIS_URL", "redis://cache:6379/3")
    settings = Settings(home=tmp_path)
    assert airflow_environment(settings)["MLWP_AUTH_RATE_LIMIT_STORAGE"] == "redis://cache:6379/3"
    # FAB's Flask login form counts in the same place as the JWT endpoints.
    assert "RATELIMIT_STORAGE_URI = 'redis://cache:6379/3'" in webserver_config_text(settings)
    clean_env.setenv("MLWP_AUTH_RATE_LIMIT_STORAGE", "redis://other:6379/1")
    assert Settings(home=tmp_path).auth_rate_limit_storage_uri == "redis://other:6379/1"


def test_audit_and_key_databases_follow_the_settings(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path)
    assert settings.audit_url == settings.airflow_database_url
    assert settings.serving_key_database_url == f"sqlite:///{tmp_path / 'serving.db'}"
    env = airflow_environment(settings)
    assert "MLWP_AUDIT_DATABASE_URL" not in env and "MLWP_SERVING_DATABASE_URL" not in env
    clean_env.setenv("MLWP_DATABASE_URL", "postgresql://db/airflow")
    clean_env.setenv("MLWP_SERVING_DATABASE_URL", "postgresql://db/serving")
    env = airflow_environment(Settings(home=tmp_path))
    assert env["MLWP_AUDIT_DATABASE_URL"] == "postgresql://db/airflow"
    assert env["MLWP_SERVING_DATABASE_URL"] == "postgresql://db/serving"


def test_secrets_from_settings_write_no_file(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    for name in ("MLWP_FERNET_KEY", "MLWP_JWT_SECRET", "MLWP_API_SECRET_KEY"):
        clean_env.setenv(name, PRODUCTION[name])
    env = airflow_environment(Settings(home=tmp_path))
    assert env["AIRFLOW__CORE__FERNET_KEY"] == PRODUCTION["MLWP_FERNET_KEY"]
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == PRODUCTION["MLWP_JWT_SECRET"]
    assert env["AIRFLOW__API__SECRET_KEY"] == PRODUCTION["MLWP_API_SECRET_KEY"]
    assert not (tmp_path / "secrets.json").exists()


def test_local_executor_is_not_production_shaped(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    check_shared_state(Settings(home=tmp_path))  # the laptop default starts as before
    # (CeleryExecutor on SQLite is refused at settings load, so Kubernetes shows the rule.)
    clean_env.setenv("MLWP_EXECUTOR", "KubernetesExecutor")
    assert Settings(home=tmp_path).production_shaped
    clean_env.setenv("MLWP_PRODUCTION", "false")
    check_shared_state(Settings(home=tmp_path))  # explicitly allowed on one host


def test_production_refuses_every_local_piece_naming_its_setting(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("MLWP_EXECUTOR", "LocalExecutor,KubernetesExecutor")
    with pytest.raises(LocalStateInProduction) as caught:
        check_shared_state(Settings(home=tmp_path))
    message = caught.value.message
    assert "MLWP_EXECUTOR=LocalExecutor,KubernetesExecutor" in message
    for name in PRODUCTION:
        assert name in message, name
    assert f"MLWP_STORAGE_ROOT={(tmp_path / 'storage').as_uri()} is on this host's disk" in message
    assert "MLWP_PRODUCTION=false" in message


def test_production_with_everything_shared_passes_and_names_what_is_left(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("MLWP_PRODUCTION", "true")
    for name, value in PRODUCTION.items():
        clean_env.setenv(name, value)
    check_shared_state(Settings(home=tmp_path))
    clean_env.setenv("MLWP_AUDIT_DATABASE_URL", f"sqlite:///{tmp_path}/audit.db")
    clean_env.setenv("MLWP_MLFLOW_ARTIFACTS_DESTINATION", str(tmp_path / "artifacts"))
    with pytest.raises(LocalStateInProduction) as caught:
        check_shared_state(Settings(home=tmp_path))
    problems = caught.value.message.splitlines()[1:-1]
    assert [line.split("=", 1)[0].strip(" -") for line in problems] == [
        "MLWP_MLFLOW_ARTIFACTS_DESTINATION",
        "MLWP_AUDIT_DATABASE_URL",
    ]
    assert caught.value.message.startswith("production-shaped platform (MLWP_PRODUCTION=true)")


def test_mlwp_up_refuses_before_starting_anything(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("MLWP_HOME", str(tmp_path))
    clean_env.setenv("MLWP_EXECUTOR", "KubernetesExecutor")
    result = CliRunner().invoke(app, ["up"])
    assert result.exit_code == 1
    assert "keeps shared state on this host's disk" in result.output
    assert "MLWP_REMOTE_LOG_FOLDER" in result.output
    assert not (tmp_path / "logs").exists()  # nothing was started
