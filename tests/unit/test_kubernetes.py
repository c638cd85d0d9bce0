"""The KubernetesExecutor pod template and per-task overrides, validated against Kubernetes.

Every manifest is checked offline with ``kubernetes-validate`` (bundled schemas, strict: an
unknown field fails) for two Kubernetes versions, and a task's override is merged onto the
template by Airflow's own ``PodGenerator.reconcile_pods``, as the executor does, before the
merged pod is validated too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from mlwp.cli import app
from mlwp.platform.airflow_config import airflow_environment
from mlwp.platform.kubernetes import (
    BASE_CONTAINER,
    is_secret,
    pod_template,
    task_pod_override,
    write_pod_template,
)
from mlwp.settings import Settings

pytestmark = pytest.mark.unit

# The two releases the charts are rendered for (tests of charts/): the same clusters.
KUBERNETES_VERSIONS = ("1.31.0", "1.35.0")

PRODUCTION = {
    "executor": "CeleryExecutor,KubernetesExecutor",
    "database_url": "postgresql+psycopg2://airflow:db-password@rds.internal:5432/airflow",
    "redis_url": "redis://:redis-password@cache.internal:6379/0",
    "kubernetes_namespace": "mlwp",
    "kubernetes_image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlwp/platform:1.2.3",
    "kubernetes_service_account": "mlwp-task",
    "kubernetes_api_server_url": "http://mlwp-api-server.mlwp:8080",
    "storage_root": "s3://acme-mlwp/storage",
}


def settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(home=tmp_path, **{**PRODUCTION, **extra})


def validate(manifest: dict[str, Any]) -> None:
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    (base,) = [c for c in manifest["spec"]["containers"] if c["name"] == BASE_CONTAINER]
    return base


def test_pod_template_is_a_valid_pod_for_both_kubernetes_versions(tmp_path: Path) -> None:
    template = pod_template(settings(tmp_path))
    validate(template)
    assert template["metadata"]["namespace"] == "mlwp"
    spec = template["spec"]
    assert spec["serviceAccountName"] == "mlwp-task"
    assert spec["restartPolicy"] == "Never"
    base = container(template)
    assert base["image"] == PRODUCTION["kubernetes_image"]
    assert base["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "1Gi"},
    }


def test_task_pods_run_as_the_images_non_root_user_without_privileges(tmp_path: Path) -> None:
    spec = pod_template(settings(tmp_path))["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 50000
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    base = container({"spec": spec})
    assert base["securityContext"]["allowPrivilegeEscalation"] is False
    assert base["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_pods_get_the_platform_environment_with_secrets_by_reference(tmp_path: Path) -> None:
    config = settings(tmp_path)
    expected = airflow_environment(config)
    env = {item["name"]: item for item in container(pod_template(config))["env"]}
    rendered = yaml.safe_dump(pod_template(config))
    for secret in ("db-password", "redis-password", expected["AIRFLOW__CORE__FERNET_KEY"]):
        assert secret not in rendered
    for name in (
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW__CELERY__RESULT_BACKEND",
    ):
        assert env[name] == {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": "mlwp-secrets", "key": name}},
        }, name
    # Everything else is the same value every platform process gets.
    assert env["MLWP_STORAGE_ROOT"]["value"] == "s3://acme-mlwp/storage"
    assert env["AIRFLOW__CORE__EXECUTOR"]["value"] == "CeleryExecutor,KubernetesExecutor"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"]["value"] == expected["AIRFLOW__CORE__DAGS_FOLDER"]
    # The execution API as pods reach it, not the address the api-server binds.
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]["value"] == (
        "http://mlwp-api-server.mlwp:8080/execution/"
    )
    assert "PYTHONPATH" not in env
    assert set(env) >= set(expected) - {"PYTHONPATH"}


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("AIRFLOW__CORE__FERNET_KEY", "x", True),
        ("MLWP_SERVING_ADMIN_KEY", "x", True),
        ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite:////tmp/a.db", True),
        ("MLFLOW_TRACKING_URI", "http://user:pw@mlflow:5000", True),
        ("MLFLOW_TRACKING_URI", "http://mlflow:5000", False),
        ("AIRFLOW__CORE__EXECUTOR", "KubernetesExecutor", False),
    ],
)
def test_what_counts_as_a_secret(name: str, value: str, secret: bool) -> None:
    assert is_secret(name, value) is secret


@pytest.mark.parametrize(
    ("cpu", "memory"), [("2", "8Gi"), ("250m", None), (None, "512Mi"), ("0.5", "1G")]
)
def test_task_overrides_merge_into_valid_pods(
    tmp_path: Path, cpu: str | None, memory: str | None
) -> None:
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    template = pod_template(settings(tmp_path))
    override = task_pod_override(cpu, memory)
    merged = PodGenerator.reconcile_pods(
        PodGenerator.deserialize_model_dict(template),
        PodGenerator.deserialize_model_dict(override),
    )
    pod = PodGenerator.serialize_pod(merged)
    validate(pod)
    resources = container(pod)["resources"]
    if cpu:
        assert resources["requests"]["cpu"] == cpu
    if memory:
        assert resources["requests"]["memory"] == memory
        assert resources["limits"]["memory"] == memory
    # The rest of the template survives the merge.
    assert container(pod)["image"] == PRODUCTION["kubernetes_image"]
    assert pod["spec"]["serviceAccountName"] == "mlwp-task"


def test_kubernetes_executor_is_configured_with_the_written_template(tmp_path: Path) -> None:
    config = settings(tmp_path)
    env = airflow_environment(config)
    path = Path(env["AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE"])
    assert path == config.airflow_home / "pod_template.yaml"
    assert env["AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE"] == "mlwp"
    write_pod_template(config)
    written = yaml.safe_load(path.read_text())
    validate(written)
    # Airflow's own loader reads it as the executor will.
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    assert PodGenerator.deserialize_model_file(str(path)).spec.containers[0].name == BASE_CONTAINER
    local = airflow_environment(Settings(home=tmp_path / "laptop"))
    assert "AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE" not in local


def test_cli_prints_the_template_for_the_chart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLWP_HOME", str(tmp_path))
    monkeypatch.setenv("MLWP_KUBERNETES_IMAGE", "mlwp/platform:9.9")
    result = CliRunner().invoke(app, ["config", "pod-template", "--output", "-"])
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(result.output)
    validate(manifest)
    assert container(manifest)["image"] == "mlwp/platform:9.9"
    target = tmp_path / "out" / "template.yaml"
    result = CliRunner().invoke(app, ["config", "pod-template", "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(target.read_text()) == manifest


def test_the_validation_is_not_vacuous(tmp_path: Path) -> None:
    template = pod_template(settings(tmp_path))
    container(template)["resourceLimits"] = {"memory": "1Gi"}  # a typo Kubernetes refuses
    with pytest.raises(kubernetes_validate.ValidationError, match="resourceLimits"):
        validate(template)
