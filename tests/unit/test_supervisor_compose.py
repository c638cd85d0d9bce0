"""docker-compose.yaml runs the processes `mlwp up` supervises, on the same ports and options.

There is no Docker engine here, so the file is checked statically: valid YAML, the expected
services, ports equal to the settings' defaults, and Airflow options that agree with
mlwp.platform.airflow_config (the one place they are generated for `mlwp up`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlwp.platform.airflow_config import FAB_AUTH_MANAGER, airflow_config
from mlwp.settings import REPO_ROOT, Settings

pytestmark = pytest.mark.unit

AIRFLOW_SERVICES = (
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


def published(service: dict[str, Any]) -> dict[int, int]:
    """Map container port -> host port for a service's ``ports``."""
    mapping = {}
    for entry in service.get("ports", []):
        host, container = str(entry).rsplit(":", 1)
        mapping[int(container)] = int(host.rsplit(":", 1)[-1])
    return mapping


def test_every_platform_process_is_a_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {*AIRFLOW_SERVICES, "airflow-init", "mlflow", "serving", "postgres", "redis"}
    assert expected <= set(services)
    for name in AIRFLOW_SERVICES:
        command = services[name]["command"]
        assert command[0] == "airflow"
        assert "standalone" not in command  # standalone forces the simple auth manager


def test_ports_match_the_settings_defaults(compose: dict[str, Any]) -> None:
    settings = Settings(home=Path("/tmp/unused"))
    services = compose["services"]
    assert published(services["airflow-api-server"]) == {8080: settings.airflow_port}
    assert published(services["mlflow"]) == {5000: settings.mlflow_port}
    assert published(services["serving"]) == {8000: settings.serving_port}
    api_command = services["airflow-api-server"]["command"]
    assert api_command[api_command.index("--port") + 1] == "8080"


def test_airflow_options_agree_with_the_generated_configuration(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    generated = {
        f"AIRFLOW__{section.upper()}__{key.upper()}": value
        for (section, key), value in airflow_config(Settings(home=tmp_path)).items()
    }
    same_everywhere = [
        "AIRFLOW__CORE__AUTH_MANAGER",
        "AIRFLOW__CORE__LOAD_EXAMPLES",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT",
        "AIRFLOW__CORE__HIDE_SENSITIVE_VAR_CONN_FIELDS",
        "AIRFLOW__API__EXPOSE_CONFIG",
        "AIRFLOW__API_AUTH__JWT_EXPIRATION_TIME",
        "AIRFLOW__API_AUTH__JWT_ISSUER",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK",
        "AIRFLOW__SCHEDULER__MP_START_METHOD",
        "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD",
        "AIRFLOW__METRICS__STATSD_PREFIX",
    ]
    for name in AIRFLOW_SERVICES:
        env = compose["services"][name]["environment"]
        assert env["AIRFLOW__CORE__AUTH_MANAGER"] == FAB_AUTH_MANAGER
        # One switch for the executor, defaulting to the settings' (the Celery variant's).
        default_executor = generated["AIRFLOW__CORE__EXECUTOR"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == f"${{MLWP_EXECUTOR:-{default_executor}}}"
        for key in same_everywhere:
            assert env[key] == generated[key], (name, key)
        # Per-deployment values exist, even if they differ from a laptop's.
        for key in generated:
            if key.startswith("AIRFLOW__LOGGING__") or key.startswith("AIRFLOW__DAG_PROCESSOR__"):
                continue  # Airflow's defaults suit containers
            assert key in env, (name, key)
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith(
            "http://airflow-api-server:8080/"
        )


def test_mlflow_and_airflow_use_separate_databases(compose: dict[str, Any]) -> None:
    services = compose["services"]
    airflow_db = services["airflow-api-server"]["environment"][
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
    ]
    mlflow_env = services["mlflow"]["environment"]
    mlflow_db = mlflow_env["MLFLOW_BACKEND_STORE_URI"]
    auth_db = mlflow_env["MLWP_MLFLOW_AUTH_DATABASE_URI"]
    serving_db = services["serving"]["environment"]["MLWP_SERVING_DATABASE_URL"]
    databases = [url.rsplit("/", 1)[-1] for url in (airflow_db, mlflow_db, auth_db, serving_db)]
    assert databases == ["airflow", "mlflow", "mlflow_auth", "serving"]
    for database in databases:
        assert f"CREATE DATABASE {database};" in compose["configs"]["postgres-init"]["content"]


def test_mlflow_runs_its_basic_auth_app(compose: dict[str, Any]) -> None:
    services = compose["services"]
    script = services["mlflow"]["command"][-1]
    assert "mlwp config mlflow-auth" in script
    assert "mlflow server --app-name basic-auth" in script
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in services["mlflow"]["environment"]
    for name in (*AIRFLOW_SERVICES, "serving"):
        assert services[name]["environment"]["MLFLOW_TRACKING_USERNAME"], name


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for entry in service.get("ports", []):
            assert str(entry).startswith("127.0.0.1:"), (name, entry)


def test_the_deploy_task_reaches_serving_with_a_key(compose: dict[str, Any]) -> None:
    env = compose["services"]["airflow-scheduler"]["environment"]
    settings = Settings(
        home=Path("/tmp/unused"),
        serving_base_url=env["MLWP_SERVING_BASE_URL"],
    )
    assert settings.serving_url == "http://serving:8000"
    # Empty unless .env names a key of one's own: then every Airflow container reads the one
    # airflow-init made in MLWP_HOME, the volume they all share at the same path.
    assert env["MLWP_SERVING_ADMIN_KEY"] == "${MLWP_SERVING_ADMIN_KEY:-}"
    init = compose["services"]["airflow-init"]
    assert "mlwp keys install-admin" in init["command"][-1]
    for name in (*AIRFLOW_SERVICES, "airflow-init", "airflow-worker"):
        service = compose["services"][name]
        assert service["environment"]["MLWP_HOME"] == "/var/lib/mlwp", name
        assert "mlwp-data:/var/lib/mlwp" in service["volumes"], name
    # The init service reaches serving's key database with serving's pepper.
    for variable in ("MLWP_SERVING_DATABASE_URL", "MLWP_SERVING_KEY_PEPPER"):
        serving = compose["services"]["serving"]["environment"][variable]
        assert init["environment"][variable] == serving, variable


def test_init_writes_the_webserver_config_and_syncs_roles_like_mlwp_up(
    compose: dict[str, Any],
) -> None:
    script = compose["services"]["airflow-init"]["command"][-1]
    steps = [
        "airflow db migrate",
        "mlwp config webserver",
        "mlwp roles sync",
        "mlwp keys install-admin",
        "mlwp users add",
    ]
    positions = [script.index(step) for step in steps]
    assert positions == sorted(positions)


def test_celery_variant_runs_workers_on_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["airflow-worker"]
    assert worker["profiles"] == ["celery"]
    assert worker["command"] == ["airflow", "celery", "worker"]
    env = worker["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "${MLWP_EXECUTOR:-LocalExecutor}"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")


def test_serving_captures_the_entity_keys_the_definitions_declare(compose: dict[str, Any]) -> None:
    """Serving's MLWP_SERVING_ENTITY_FIELDS is what the labels tasks of ./dags (mounted into
    the platform containers) declare, as `mlwp up` derives it."""
    import json

    from mlwp.definitions.entity_keys import serving_entity_fields
    from mlwp.definitions.loading import find_definitions

    derived, problems = serving_entity_fields(find_definitions([REPO_ROOT / "dags" / "projects"]))
    assert problems == [] and derived == {"churn": "customer_id"}
    value = compose["services"]["serving"]["environment"]["MLWP_SERVING_ENTITY_FIELDS"]
    assert json.loads(value) == derived


def test_serving_and_airflow_share_one_storage_root(compose: dict[str, Any]) -> None:
    """Captures land where the monitor task reads them: serving and every container that runs
    Airflow or mlwp tasks have one MLWP_STORAGE_ROOT, a path on one named volume, and both
    images run as one user (the volume's folders are created by either)."""
    from urllib.parse import urlparse

    services = compose["services"]
    users = {
        re.findall(r"^USER (\S+)$", (REPO_ROOT / path).read_text(), flags=re.MULTILINE)[-1]
        for path in ("Dockerfile", "serving/Dockerfile")
    }
    assert users == {"50000:0"}
    sharing = ["serving", "airflow-init", "airflow-worker", "roles-sync", *AIRFLOW_SERVICES]
    roots = {services[name]["environment"]["MLWP_STORAGE_ROOT"] for name in sharing}
    [root] = roots
    path = urlparse(root).path
    assert root == f"file://{path}"
    for name in sharing:
        service = services[name]
        assert "user" not in service, name  # the image's user, as above
        mounts = [v.split(":") for v in service["volumes"] if v.split(":")[1] == path]
        assert [source for source, *_ in mounts] == ["mlwp-storage"], name
        assert mounts[0][2:] != ["ro"], name
    assert "mlwp-storage" in compose["volumes"]
    # A new volume takes the owner of the folder it first mounts on: the platform image's
    # (50000:0), since serving starts after airflow-init.
    assert path in (REPO_ROOT / "Dockerfile").read_text()
    assert services["serving"]["depends_on"]["airflow-init"] == {
        "condition": "service_completed_successfully"
    }
