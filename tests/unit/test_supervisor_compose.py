"""docker-compose.yaml runs the processes `mlwp up` supervises, on the same ports and options.

There is no Docker engine here, so the file is checked statically: valid YAML, the expected
services, ports equal to the settings' defaults, and Airflow options that agree with
mlwp.platform.airflow_config (the one place they are generated for `mlwp up`).
"""

from __future__ import annotations

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
        "AIRFLOW__CORE__EXECUTOR",
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
    mlflow_command = services["mlflow"]["command"]
    mlflow_db = mlflow_command[mlflow_command.index("--backend-store-uri") + 1]
    assert airflow_db.rsplit("/", 1)[-1] == "airflow"
    assert mlflow_db.rsplit("/", 1)[-1] == "mlflow"
    assert "CREATE DATABASE mlflow" in compose["configs"]["postgres-init"]["content"]
