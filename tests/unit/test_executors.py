"""MLWP_EXECUTOR parsing and the Celery configuration, worker commands and checks it implies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlwp.errors import ConfigurationError
from mlwp.platform import processes
from mlwp.platform.airflow_config import PRELOAD_MODULES, airflow_environment
from mlwp.platform.executors import MODULE_PATHS, ExecutorKind, parse_executors
from mlwp.platform.preflight import BrokerUnreachable, check_redis
from mlwp.settings import DEFAULT_CELERY_BROKER_URL, Settings, get_settings

pytestmark = pytest.mark.unit

LOCAL, CELERY, KUBERNETES = "LocalExecutor", "CeleryExecutor", "KubernetesExecutor"
POSTGRES = "postgresql+psycopg2://airflow@db.internal:5432/airflow"


def celery_settings(tmp_path: Path, **extra: object) -> Settings:
    values: dict[str, object] = {
        "home": tmp_path,
        "executor": "CeleryExecutor",
        "database_url": POSTGRES,
        **extra,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "kinds", "aliases"),
    [
        ("LocalExecutor", ["LocalExecutor"], [None]),
        ("CeleryExecutor,KubernetesExecutor", [CELERY, KUBERNETES], [None] * 2),
        (" CeleryExecutor , KubernetesExecutor ", [CELERY, KUBERNETES], [None] * 2),
        (MODULE_PATHS[ExecutorKind.CELERY], [CELERY], [None]),
        ("fast:LocalExecutor,pods:KubernetesExecutor", [LOCAL, KUBERNETES], ["fast", "pods"]),
        (f"k8s:{MODULE_PATHS[ExecutorKind.KUBERNETES]}", ["KubernetesExecutor"], ["k8s"]),
    ],
)  # fmt: skip
def test_executor_lists_and_aliases_as_airflow_reads_them(
    value: str, kinds: list[str], aliases: list[str | None]
) -> None:
    parsed = parse_executors(value)
    assert [entry.kind.value for entry in parsed.entries] == kinds
    assert [entry.alias for entry in parsed.entries] == aliases
    assert parsed.default is parsed.entries[0]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Celery", "unknown executor 'Celery'"),
        ("SequentialExecutor", "unknown executor 'SequentialExecutor'"),
        ("LocalExecutor,", "empty executor name"),
        ("", "empty executor name"),
        ("CeleryExecutor,CeleryExecutor", "CeleryExecutor configured twice"),
        ("a:LocalExecutor,a:CeleryExecutor", "alias a is used twice"),
        (":LocalExecutor", "must be a plain name"),
        ("=CeleryExecutor;team1=LocalExecutor", "multi-team"),
        ("my.module.Executor", "unknown executor 'my.module.Executor'"),
    ],
)
def test_bad_executor_values_are_refused_naming_the_entry(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_executors(value)


def test_a_task_may_name_an_executor_by_alias_class_name_or_module_path() -> None:
    parsed = parse_executors("fast:LocalExecutor,CeleryExecutor")
    local, celery = parsed.entries
    assert parsed.find("fast") is local
    assert parsed.find("LocalExecutor") is local
    assert parsed.find(MODULE_PATHS[ExecutorKind.CELERY]) is celery
    assert parsed.find("KubernetesExecutor") is None
    assert parsed.task_names()[:2] == ("fast", "LocalExecutor")


def test_a_bad_executor_stops_settings_load_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLWP_HOME", str(tmp_path))
    monkeypatch.setenv("MLWP_EXECUTOR", "CeleryExecuter")
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    assert "MLWP_EXECUTOR: unknown executor 'CeleryExecuter'" in caught.value.message
    assert "CeleryExecutor" in caught.value.message


def test_celery_on_sqlite_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a database its workers share"):
        Settings(home=tmp_path, executor="CeleryExecutor")
    # Kubernetes alone has no Celery workers, but Local,Celery still needs a shared database.
    Settings(home=tmp_path, executor="KubernetesExecutor")
    with pytest.raises(ValueError, match="SQLite is for LocalExecutor only"):
        Settings(home=tmp_path, executor="LocalExecutor,CeleryExecutor")


def test_celery_broker_and_result_backend_come_from_the_settings(tmp_path: Path) -> None:
    env = airflow_environment(celery_settings(tmp_path))
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == DEFAULT_CELERY_BROKER_URL
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+{POSTGRES}"
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "4"
    assert env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == "default"
    assert env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"] == "86400"

    redis = "redis://:secret@cache.internal:6379/3"
    env = airflow_environment(
        celery_settings(tmp_path, redis_url=redis, celery_worker_concurrency=2)
    )
    assert env["AIRFLOW__CELERY__BROKER_URL"] == redis
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "2"


def test_local_executor_has_no_celery_options(tmp_path: Path) -> None:
    env = airflow_environment(Settings(home=tmp_path))
    assert not [key for key in env if key.startswith("AIRFLOW__CELERY__")]
    assert processes.celery_worker_processes(Settings(home=tmp_path), env) == []


def test_celery_workers_import_the_ml_stack_before_forking_their_pool(tmp_path: Path) -> None:
    env = airflow_environment(celery_settings(tmp_path))
    extra = json.loads(env["AIRFLOW__CELERY__EXTRA_CELERY_CONFIG"])
    assert extra == {"imports": list(PRELOAD_MODULES)}
    # The forkserver is a LocalExecutor mechanism: Celery alone leaves the scheduler alone.
    assert "AIRFLOW__SCHEDULER__MP_START_METHOD" not in env

    off = airflow_environment(celery_settings(tmp_path, preload=False))
    assert "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG" not in off

    both = airflow_environment(celery_settings(tmp_path, executor="LocalExecutor,CeleryExecutor"))
    assert both["AIRFLOW__SCHEDULER__MP_START_METHOD"] == "forkserver"
    assert "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG" in both


def test_mlwp_up_runs_n_named_workers_stopped_after_the_scheduler(tmp_path: Path) -> None:
    settings = celery_settings(tmp_path, celery_workers=3, celery_queues="default, gpu")
    specs = {spec.name: spec for spec in processes.platform_processes(settings)}
    workers = [name for name in specs if name.startswith(processes.CELERY_WORKER_PREFIX)]
    assert workers == ["celery-worker-1", "celery-worker-2", "celery-worker-3"]
    argv = list(specs["celery-worker-2"].argv)
    assert argv[1:3] == ["celery", "worker"]
    node = argv[argv.index("--celery-hostname") + 1]
    assert node == processes.celery_node_name("celery-worker-2")
    assert node.startswith("celery-worker-2@")
    assert argv[argv.index("--queues") + 1] == "default,gpu"
    assert argv[argv.index("--concurrency") + 1] == "4"
    assert "--skip-serve-logs" in argv
    assert specs["celery-worker-1"].ready is not None
    stages = {name: spec.stop_stage for name, spec in specs.items()}
    assert stages["scheduler"] < stages["celery-worker-1"] < stages["mlflow"]
    assert specs["celery-worker-1"].env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"

    none = celery_settings(tmp_path, celery_workers=0)
    assert not [s for s in processes.platform_processes(none) if "celery" in s.name]


def test_queues_setting_reads_a_list_or_comma_separated_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLWP_CELERY_QUEUES", '["default", "gpu"]')
    assert celery_settings(tmp_path).celery_queues == ["default", "gpu"]
    monkeypatch.setenv("MLWP_CELERY_QUEUES", "default,highmem")
    assert celery_settings(tmp_path).celery_queues == ["default", "highmem"]


def test_broker_check_names_the_broker_and_hides_its_password() -> None:
    from server_process import free_port

    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(BrokerUnreachable) as caught:
        check_redis("Celery's broker (MLWP_REDIS_URL)", url, timeout=2)
    assert "Celery's broker (MLWP_REDIS_URL)" in caught.value.message
    assert "hunter2" not in caught.value.message
    assert "***" in caught.value.message
    with pytest.raises(ConfigurationError, match="not a Redis URL"):
        check_redis("broker", "http://127.0.0.1/0")


def test_ping_of_an_unreachable_broker_is_a_reason_not_an_error() -> None:
    from server_process import free_port

    probe = processes.celery_ping(f"redis://127.0.0.1:{free_port()}/0", "w@h", timeout=0.5)
    reason = probe()
    assert reason is not None
    assert reason.startswith("broker at redis://127.0.0.1")
    assert "unreachable" in reason


def test_mlwp_worker_runs_one_celery_worker_with_the_platform_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from typer.testing import CliRunner

    from mlwp.cli import app

    monkeypatch.setenv("MLWP_HOME", str(tmp_path))
    monkeypatch.delenv("MLWP_EXECUTOR", raising=False)
    refused = CliRunner().invoke(app, ["worker"])
    assert refused.exit_code == 1
    assert "has no CeleryExecutor" in refused.output

    monkeypatch.setenv("MLWP_EXECUTOR", "CeleryExecutor")
    monkeypatch.setenv("MLWP_DATABASE_URL", POSTGRES)
    monkeypatch.setenv("MLWP_REDIS_URL", "redis://cache.internal:6379/2")
    started: list[tuple[str, list[str], dict[str, str]]] = []
    # The command replaces itself with the worker; record what it would exec instead.
    monkeypatch.setattr(os, "execve", lambda path, argv, env: started.append((path, argv, env)))
    result = CliRunner().invoke(
        app, ["worker", "--name", "gpu-1", "--queues", "gpu", "--concurrency", "1"]
    )
    assert result.exit_code == 0, result.output
    ((path, argv, env),) = started
    assert argv[0] == path and argv[1:3] == ["celery", "worker"]
    assert argv[argv.index("--celery-hostname") + 1] == processes.celery_node_name("gpu-1")
    assert argv[argv.index("--queues") + 1] == "gpu"
    assert argv[argv.index("--concurrency") + 1] == "1"
    assert "--skip-serve-logs" in argv
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://cache.internal:6379/2"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
