"""Settings and the generated Airflow configuration."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mlwp.platform.airflow_config import FAB_AUTH_MANAGER, PRELOAD_MODULES, airflow_environment
from mlwp.settings import Settings

pytestmark = pytest.mark.unit


def test_embedded_defaults_live_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLWP_STORAGE_ROOT", raising=False)
    settings = Settings(home=tmp_path)
    assert settings.airflow_database_url == f"sqlite:///{tmp_path / 'airflow.db'}?timeout=30"
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
    # StatsD on in every mode (issue #17), ids as tags rather than inside the names.
    assert env["AIRFLOW__METRICS__STATSD_ON"] == "True"
    assert env["AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED"] == "True"
    assert env["AIRFLOW__METRICS__LEGACY_NAMES_ON"] == "False"
    assert env["AIRFLOW__API_AUTH__JWT_EXPIRATION_TIME"] == "3600"


def test_scheduler_queues_the_next_task_of_a_chain_promptly(tmp_path: Path) -> None:
    env = airflow_environment(Settings(home=tmp_path))
    assert float(env["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"]) <= 0.5


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


def test_local_executor_tasks_start_from_a_preloaded_forkserver(tmp_path: Path) -> None:
    env = airflow_environment(Settings(home=tmp_path))
    assert env["AIRFLOW__SCHEDULER__MP_START_METHOD"] == "forkserver"
    assert env["AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD"].split(",") == list(PRELOAD_MODULES)
    # Scheduler only: the dag-processor and triggerer keep plain fork and a light import set.
    assert "AIRFLOW__CORE__MP_START_METHOD" not in env
    assert "AIRFLOW__CORE__MP_FORKSERVER_PRELOAD" not in env
    assert not any(key.startswith("AIRFLOW__DAG_PROCESSOR__MP_") for key in env)
    assert not any(key.startswith("AIRFLOW__TRIGGERER__MP_") for key in env)


@pytest.mark.parametrize(
    ("variable", "value"), [("MLWP_PRELOAD", "false"), ("MLWP_EXECUTOR", "CeleryExecutor")]
)
def test_preload_can_be_turned_off_and_only_serves_the_local_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    # Celery needs a shared database (refused on SQLite); the URL is never connected to here.
    monkeypatch.setenv("MLWP_DATABASE_URL", "postgresql+psycopg2://airflow@db/airflow")
    env = airflow_environment(Settings(home=tmp_path))
    assert "AIRFLOW__SCHEDULER__MP_START_METHOD" not in env
    assert "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD" not in env


def test_preloaded_modules_exist_without_importing_them() -> None:
    # multiprocessing's forkserver silently skips a module it cannot import, so a typo would
    # quietly bring the cold start back. PathFinder walks the packages without importing them.
    from importlib.machinery import PathFinder

    for name in PRELOAD_MODULES:
        path = None
        for part in name.split("."):
            spec = PathFinder.find_spec(part, path)
            assert spec is not None, name
            path = spec.submodule_search_locations


def test_tracing_is_off_unless_an_otlp_endpoint_is_set(tmp_path: Path) -> None:
    env = airflow_environment(Settings(home=tmp_path))
    assert "AIRFLOW__TRACES__OTEL_ON" not in env and "MLWP_SERVING_OTEL_ENDPOINT" not in env
    on = airflow_environment(Settings(home=tmp_path, otel_endpoint="http://collector:4318"))
    assert on["AIRFLOW__TRACES__OTEL_ON"] == "True"  # Airflow's spans of task runs
    assert on["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
    assert on["OTEL_TRACES_EXPORTER"] == "otlp_proto_http"
    assert on["MLWP_SERVING_OTEL_ENDPOINT"] == "http://collector:4318"  # serving's, same place
