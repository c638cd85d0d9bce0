"""charts/airflow-values.yaml, the values mlwp gives the official apache-airflow chart.

The official chart cannot be downloaded here, so this file is checked without it (the full
check against the chart's own schema and templates is tools/check_official_chart.py, run by
the GitHub workflow): the KubernetesExecutor pod template against the Kubernetes schema, the
Airflow options against mlwp.platform.airflow_config, FAB's settings against
mlwp.platform.webserver_config, every mlwp variable against the settings classes, and the
umbrella chart's copy of these values against this file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render import KUBE_VERSIONS, validate_objects
from checkers import REPO_ROOT

from mlwp.platform.airflow_config import FAB_AUTH_MANAGER, airflow_config
from mlwp.platform.executors import parse_executors
from mlwp.platform.webserver_config import webserver_config_text
from mlwp.settings import Settings
from serving.core.config import ServingSettings

pytestmark = pytest.mark.unit

VALUES_FILE = REPO_ROOT / "charts" / "airflow-values.yaml"
UMBRELLA = REPO_ROOT / "charts" / "mlwp-platform"
# Version of the official chart these values were checked against (tools/check_official_chart.py)
# and that the umbrella chart pins.
OFFICIAL_CHART_VERSION = "1.22.0"


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    loaded = yaml.safe_load(VALUES_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


RELEASE = "mlwp"


def render_expressions(text: str, values: dict[str, Any]) -> str:
    """Resolve the template expressions the pod template may use, as the chart's ``tpl``
    would: ``{{ .Values.a.b }}`` and ``{{ .Release.Name }}``; any other one is refused."""

    def resolve(match: re.Match[str]) -> str:
        expression = match.group(1)
        if expression == ".Release.Name":
            return RELEASE
        if not expression.startswith(".Values."):
            raise AssertionError(f"pod template: unexpected expression {{{{ {expression} }}}}")
        value: Any = values
        for part in expression.removeprefix(".Values.").split("."):
            value = value[part]
        return str(value)

    return re.sub(r"\{\{\s*([^}]+?)\s*\}\}", resolve, text)


@pytest.fixture(scope="module")
def pod_template(values: dict[str, Any]) -> dict[str, Any]:
    template = yaml.safe_load(render_expressions(values["podTemplate"], values))
    assert isinstance(template, dict)
    return template


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_the_pod_template_is_a_valid_pod(pod_template: dict[str, Any], kube_version: str) -> None:
    assert pod_template["kind"] == "Pod"
    assert validate_objects([pod_template], kube_version) == []


def test_the_pod_template_runs_tasks_as_the_workers_do(
    values: dict[str, Any], pod_template: dict[str, Any]
) -> None:
    spec = pod_template["spec"]
    assert spec["serviceAccountName"] == values["workers"]["serviceAccount"]["name"]
    assert spec["restartPolicy"] == "Never"
    (base,) = spec["containers"]
    assert base["name"] == "base"  # the KubernetesExecutor runs the task in the "base" container
    image = values["images"]["pod_template"]
    assert base["image"] == f"{image['repository']}:{image['tag']}"
    assert spec["securityContext"]["runAsUser"] == values["uid"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert base["securityContext"]["allowPrivilegeEscalation"] is False
    assert base["securityContext"]["readOnlyRootFilesystem"] is True
    assert base["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {mount["mountPath"]: mount["name"] for mount in base["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    # Airflow's configuration comes from the chart's ConfigMap, <release>-config.
    assert volumes[mounts["/opt/airflow/airflow.cfg"]]["configMap"]["name"] == "mlwp-config"
    env = {item["name"]: item for item in base["env"]}
    # Airflow 3 tasks reach the execution API only: no database URL, no Fernet key in the pod.
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env
    assert "AIRFLOW__CORE__FERNET_KEY" not in env
    shared = {item["name"]: item.get("value") for item in values["env"]}
    for name in ("MLWP_STORAGE_ROOT", "MLWP_REMOTE_LOG_FOLDER", "MLFLOW_TRACKING_URI"):
        assert env[name]["value"] == shared[name], name


def test_executors_are_the_same_for_airflow_and_mlwp(values: dict[str, Any]) -> None:
    env = {item["name"]: item.get("value") for item in values["env"]}
    assert env["MLWP_EXECUTOR"] == values["executor"]
    executors = parse_executors(values["executor"])
    assert [e.kind.value for e in executors.entries] == ["CeleryExecutor", "KubernetesExecutor"]
    assert values["workers"]["keda"]["enabled"] is True
    assert values["pgbouncer"]["enabled"] is True
    assert values["workers"]["keda"]["usePgbouncer"] is True


def test_airflow_options_agree_with_the_generated_configuration(
    values: dict[str, Any], tmp_path: Path
) -> None:
    generated = airflow_config(Settings(home=tmp_path))
    config = values["config"]
    assert config["core"]["auth_manager"] == FAB_AUTH_MANAGER
    for section, key in [
        ("core", "load_examples"),
        ("core", "dagbag_import_timeout"),
        ("core", "hide_sensitive_var_conn_fields"),
        ("api", "expose_config"),
        ("api_auth", "jwt_expiration_time"),
        ("api_auth", "jwt_issuer"),
        ("metrics", "statsd_prefix"),
        ("metrics", "statsd_influxdb_enabled"),
        ("metrics", "legacy_names_on"),
        ("scheduler", "enable_health_check"),
    ]:
        assert config[section][key] == generated[(section, key)], (section, key)
    # The image's code (../Dockerfile), not the chart's default /opt/airflow/dags.
    assert config["core"]["dags_folder"] == "/opt/mlwp/app/dags"
    assert config["logging"]["remote_logging"] == "True"
    assert config["logging"]["remote_base_log_folder"].startswith("s3://")
    assert values["statsd"]["enabled"] is True
    assert values["logs"]["persistence"]["enabled"] is False


def assignments(source: str) -> dict[str, str]:
    """Module-level ``NAME = <expression>`` of a Python file, as source text."""
    tree = ast.parse(source)
    return {
        node.targets[0].id: ast.unparse(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }


def test_fab_settings_are_mlwps(values: dict[str, Any], tmp_path: Path) -> None:
    chart = assignments(values["apiServer"]["apiServerConfig"])
    generated = assignments(webserver_config_text(Settings(home=tmp_path)))
    # Behind the TLS ingress the cookie is Secure; the limit counts in Redis from the env.
    assert chart.pop("SESSION_COOKIE_SECURE") == "True"
    assert chart.pop("RATELIMIT_STORAGE_URI") == "os.environ['MLWP_AUTH_RATE_LIMIT_STORAGE']"
    generated.pop("SESSION_COOKIE_SECURE")
    generated.pop("RATELIMIT_STORAGE_URI")
    assert chart == generated
    assert values["config"]["fab"]["update_fab_perms"] == "False"


def test_every_mlwp_variable_is_a_setting(values: dict[str, Any], pod_template: dict) -> None:
    names = [item["name"] for item in values["env"]]
    names += [item["envName"] for item in values["secret"]]
    names += [item["name"] for item in pod_template["spec"]["containers"][0]["env"]]
    known = {f"MLWP_{name.upper()}" for name in Settings.model_fields}
    known |= {f"MLWP_SERVING_{name.upper()}" for name in ServingSettings.model_fields}
    unknown = [name for name in names if name.startswith("MLWP_") and name not in known]
    assert unknown == []


def test_no_secret_is_a_value(values: dict[str, Any]) -> None:
    assert values["createUserJob"]["enabled"] is False  # it takes the password from values
    for key in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        assert key not in values
    assert "metadataConnection" not in values["data"]
    assert values["pgbouncer"]["configSecretName"]
    assert values["postgresql"]["enabled"] is False
    assert values["redis"]["enabled"] is False


def test_the_ingress_terminates_tls(values: dict[str, Any]) -> None:
    ingress = values["ingress"]["apiServer"]
    assert ingress["enabled"] is True
    (host,) = ingress["hosts"]
    assert host["tls"]["enabled"] is True
    assert values["config"]["api"]["base_url"] == f"https://{host['name']}"


def test_the_umbrella_chart_pins_both_charts_and_carries_these_values(
    values: dict[str, Any],
) -> None:
    chart = yaml.safe_load((UMBRELLA / "Chart.yaml").read_text())
    dependencies = {dep["name"]: dep for dep in chart["dependencies"]}
    assert dependencies["airflow"]["version"] == OFFICIAL_CHART_VERSION
    assert dependencies["airflow"]["repository"] == "https://airflow.apache.org"
    assert dependencies["mlwp"]["repository"] == "file://../mlwp"
    mlwp_chart = yaml.safe_load((REPO_ROOT / "charts" / "mlwp" / "Chart.yaml").read_text())
    assert dependencies["mlwp"]["version"] == mlwp_chart["version"]
    umbrella_values = yaml.safe_load((UMBRELLA / "values.yaml").read_text())
    airflow = dict(umbrella_values["airflow"])
    assert airflow.pop("enabled") is True  # the dependency's condition
    assert airflow == values


def test_the_docs_name_the_checked_chart_version() -> None:
    deploy = (REPO_ROOT / "docs" / "deploy.md").read_text()
    assert f"apache-airflow chart {OFFICIAL_CHART_VERSION}" in deploy
    assert f"--version {OFFICIAL_CHART_VERSION}" in VALUES_FILE.read_text()


def test_the_pod_template_keeps_the_generated_templates_guarantees(
    pod_template: dict[str, Any], tmp_path: Path
) -> None:
    """The chart's template and `mlwp config pod-template`'s (mlwp.platform.kubernetes) run
    tasks the same way: pod security context, restart policy, the ``base`` container that
    per-task overrides target, its security context (the chart's adds a read-only root), and
    every mount the generated one has."""
    from mlwp.platform.kubernetes import BASE_CONTAINER
    from mlwp.platform.kubernetes import pod_template as generated_template

    settings = Settings(
        home=tmp_path, executor="KubernetesExecutor", database_url="postgresql://u@db/airflow"
    )
    generated = generated_template(settings, env={})["spec"]
    chart = pod_template["spec"]
    assert chart["securityContext"] == generated["securityContext"]
    assert chart["restartPolicy"] == generated["restartPolicy"]
    (mine,) = chart["containers"]
    (theirs,) = generated["containers"]
    assert mine["name"] == theirs["name"] == BASE_CONTAINER
    for key, value in theirs["securityContext"].items():
        assert mine["securityContext"][key] == value, key
    mounts = {mount["mountPath"] for mount in mine["volumeMounts"]}
    assert {mount["mountPath"] for mount in theirs["volumeMounts"]} <= mounts


@pytest.mark.slow  # imports Airflow and the Git provider
def test_dag_bundles_baked_in_by_default_or_from_git(values: dict[str, Any]) -> None:
    """The default bundle reads the image's DAG folder; the Git overlay names a bundle class
    of the locked environment with arguments that class takes."""
    import inspect

    from airflow.dag_processing.bundles.base import BaseDagBundle
    from airflow.providers.git.bundles.git import GitDagBundle

    (local,) = values["dagProcessor"]["dagBundleConfigList"]
    assert local["classpath"] == "airflow.dag_processing.bundles.local.LocalDagBundle"
    overlay = yaml.safe_load((REPO_ROOT / "charts" / "airflow-values-git-bundle.yaml").read_text())
    (bundle,) = overlay["dagProcessor"]["dagBundleConfigList"]
    module, _, name = bundle["classpath"].rpartition(".")
    assert (module, name) == (GitDagBundle.__module__, GitDagBundle.__name__)
    accepted = set(inspect.signature(GitDagBundle.__init__).parameters)
    accepted |= set(inspect.signature(BaseDagBundle.__init__).parameters)
    assert set(bundle["kwargs"]) <= accepted
    # The loader file and the definitions live under the bundle's subdir, as in this repository.
    assert (REPO_ROOT / bundle["kwargs"]["subdir"] / "mlwp_projects.py").exists()
