"""charts/mlwp rendered by the real helm: lint, schema, Kubernetes validation, checkov, properties.

The render matrix is the chart's ``ci/*-values.yaml`` (minimal, production with ingress/TLS/IRSA,
fixed replicas without HPA/PDB/NetworkPolicy under Argo CD with Pod Identity, MLflow elsewhere
with a TLS Secret), each for two Kubernetes versions.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render import (
    CI_VALUES,
    KUBE_VERSIONS,
    MLWP_CHART,
    RenderError,
    find,
    one,
    pod_specs,
    render,
    validate_objects,
    write_manifests,
)
from checkers import REPO_ROOT, checker, run_checker

from mlwp.platform.bootstrap import ROLES_SYNC_COMMAND

pytestmark = pytest.mark.unit

MINIMAL = MLWP_CHART / "ci" / "minimal-values.yaml"
PRODUCTION = MLWP_CHART / "ci" / "production-values.yaml"
FIXED = MLWP_CHART / "ci" / "fixed-replicas-values.yaml"
EXTERNAL_MLFLOW = MLWP_CHART / "ci" / "external-mlflow-values.yaml"


def ids(paths: list[Path]) -> list[str]:
    return [path.name.removesuffix("-values.yaml") for path in paths]


# --- helm itself -------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=["defaults", *ids(CI_VALUES)])
def test_helm_lint_strict(values_file: Path | None) -> None:
    argv = [checker("helm"), "lint", "--strict", str(MLWP_CHART)]
    if values_file is not None:
        argv += ["--values", str(values_file)]
    result = run_checker(argv)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", CI_VALUES, ids=ids(CI_VALUES))
def test_every_rendered_object_is_valid_kubernetes(values_file: Path, kube_version: str) -> None:
    objects = render(values_file, kube_version=kube_version)
    assert objects
    assert validate_objects(objects, kube_version) == []


def test_the_validation_catches_a_wrong_object() -> None:
    deployment = one(render(MINIMAL), "Deployment", "-serving")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    broken["spec"]["replica"] = 2
    assert validate_objects([broken], KUBE_VERSIONS[0])


@pytest.mark.slow
def test_checkov_finds_nothing_beyond_the_listed_skips(tmp_path: Path) -> None:
    """checkov on the default and production renders: zero failed checks except the reasoned
    skips of charts/checkov.yaml. (The fixed-replicas entry turns NetworkPolicies off on
    purpose, for clusters without a policy engine, so it is not held to CKV2_K8S_6.)"""
    checkov = checker("checkov")
    for values_file in (MINIMAL, PRODUCTION, EXTERNAL_MLFLOW):
        write_manifests(tmp_path, render(values_file), values_file.stem)
    config = REPO_ROOT / "charts" / "checkov.yaml"
    result = run_checker(
        [checkov, "--config-file", str(config), "-d", str(tmp_path), "-o", "json"],
        timeout=900,
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{check['check_id']} {check['resource']}: {check['check_name']}"
        for part in reports
        for check in part["results"]["failed_checks"]
    ]
    assert failed == []
    passed = sum(part["summary"]["passed"] for part in reports)
    assert passed > 100  # it really ran the Kubernetes checks


def test_every_checkov_skip_has_its_reason() -> None:
    lines = (REPO_ROOT / "charts" / "checkov.yaml").read_text().splitlines()
    config = yaml.safe_load("\n".join(lines))
    for check in config["skip-check"]:
        index = next(i for i, line in enumerate(lines) if line.strip() == f"- {check}")
        assert lines[index - 1].strip().startswith("#"), f"{check} has no reason above it"


# --- values.schema.json ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicaCount": 3}, "additional properties 'replicaCount' not allowed"),
        ({"serving": {"autoscalling": {}}}, "/serving"),
        ({"serving": {"autoscaling": {"maxReplica": 3}}}, "/serving/autoscaling"),
        ({"ingress": {"tls": {"secret": "x"}}}, "/ingress/tls"),
    ],
)
def test_the_schema_refuses_unknown_keys(values: dict[str, Any], where: str) -> None:
    with pytest.raises(RenderError, match="additional properties") as caught:
        render(MINIMAL, values=values)
    assert where in str(caught.value)


def test_the_schema_refuses_wrong_types_and_values() -> None:
    with pytest.raises(RenderError, match="/serving/replicas"):
        render(MINIMAL, values={"serving": {"replicas": "two"}})
    with pytest.raises(RenderError, match="/serving/environment"):
        render(MINIMAL, values={"serving": {"environment": "prod"}})
    with pytest.raises(RenderError, match="/serviceAccounts/serving/roleArn"):
        render(MINIMAL, values={"serviceAccounts": {"serving": {"roleArn": "mlwp-serving"}}})


def walk_schema(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    if "default" in node:
        return found  # a value given whole (resources): its default is checked whole
    for name, child in node.get("properties", {}).items():
        found += walk_schema(child, f"{path}.{name}" if path else name)
    return found


def test_every_value_is_typed_described_and_defaulted_as_in_values_yaml() -> None:
    schema = json.loads((MLWP_CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((MLWP_CHART / "values.yaml").read_text())
    for path, node in walk_schema(schema)[1:]:
        assert "type" in node and node.get("description"), path
        if node["type"] == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
            if "default" not in node:
                continue
        if path == "global":
            continue  # Helm's own, set by a parent chart
        value: Any = defaults
        for part in path.split("."):
            value = value[part]
        assert node["default"] == value, path


def test_required_secrets_are_named_when_missing() -> None:
    with pytest.raises(RenderError, match=r"serving\.existingSecret is required"):
        render()
    with pytest.raises(RenderError, match=r"mlflow\.artifactsDestination is required"):
        render(MINIMAL, values={"mlflow": {"artifactsDestination": ""}})
    with pytest.raises(RenderError, match=r"rolesSync\.databaseSecret\.name is required"):
        render(MINIMAL, values={"rolesSync": {"databaseSecret": {"name": ""}}})


# --- what the objects do -----------------------------------------------------------------


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in spec["containers"] if c["name"] == name)


def deployed(objects: list[dict[str, Any]], suffix: str, name: str) -> dict[str, Any]:
    """The container ``name`` of the Deployment whose name ends with ``suffix``."""
    return container(one(objects, "Deployment", suffix)["spec"]["template"]["spec"], name)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def test_serving_probes_tell_live_from_ready() -> None:
    spec = one(render(MINIMAL), "Deployment", "-serving")["spec"]["template"]["spec"]
    serving = container(spec, "serving")
    assert serving["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert serving["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert serving["startupProbe"]["httpGet"]["path"] == "/health/live"
    port_names = {port["name"] for port in serving["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert serving[probe]["httpGet"]["port"] in port_names


def test_mlflow_runs_basic_auth_with_its_config_written_first() -> None:
    spec = one(render(MINIMAL), "Deployment", "-mlflow")["spec"]["template"]["spec"]
    init = spec["initContainers"][0]
    assert init["command"][:3] == ["mlwp", "config", "mlflow-auth"]
    mlflow = container(spec, "mlflow")
    command = mlflow["command"]
    assert command[:4] == ["mlflow", "server", "--app-name", "basic-auth"]
    assert command[command.index("--artifacts-destination") + 1].startswith("s3://")
    env = env_of(mlflow)
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == init["command"][-1]
    for name in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        assert env[name]["secretKeyRef"]["name"] == "mlwp-mlflow"
    assert mlflow["readinessProbe"]["httpGet"]["path"] == "/health"


@pytest.mark.parametrize("values_file", CI_VALUES, ids=ids(CI_VALUES))
def test_every_pod_runs_non_root_read_only_without_privileges(values_file: Path) -> None:
    for name, spec in pod_specs(render(values_file)):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for item in spec.get("initContainers", []) + spec["containers"]:
            context = item["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (name, item["name"])
            assert context["readOnlyRootFilesystem"] is True, (name, item["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (name, item["name"])
            assert context["runAsUser"] >= 10000, (name, item["name"])
            assert item["resources"]["limits"]["memory"], (name, item["name"])


def test_the_platform_pods_use_the_official_charts_user() -> None:
    objects = render(MINIMAL)
    for suffix in ("-mlflow", "-roles-sync", "-serving"):
        spec = next(spec for name, spec in pod_specs(objects) if name.endswith(suffix))
        assert spec["securityContext"]["runAsUser"] == 50000
        assert spec["securityContext"]["runAsGroup"] == 0


def test_the_serving_service_selects_the_serving_pods_only() -> None:
    objects = render(PRODUCTION)
    service = one(objects, "Service", "-serving")
    selector = service["spec"]["selector"]

    def selected(labels: dict[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in selector.items())

    serving = one(objects, "Deployment", "-serving")
    assert selected(serving["spec"]["template"]["metadata"]["labels"])
    assert serving["spec"]["selector"]["matchLabels"] == selector
    for other in find(objects, "Deployment", "-mlflow") + find(objects, "Job"):
        assert not selected(other["spec"]["template"]["metadata"]["labels"])
    target = service["spec"]["ports"][0]["targetPort"]
    ports = container(serving["spec"]["template"]["spec"], "serving")["ports"]
    assert target in {port["name"] for port in ports}


def test_the_hpa_scales_the_serving_deployment() -> None:
    objects = render(PRODUCTION)
    hpa = one(objects, "HorizontalPodAutoscaler", "-serving")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = one(objects, "Deployment", "-serving")
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    metrics = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
    assert metrics == {
        "cpu": {"type": "Utilization", "averageUtilization": 70},
        "memory": {"type": "Utilization", "averageUtilization": 80},
    }
    # The HPA owns the count: the Deployment does not fight it with its own.
    assert "replicas" not in deployment["spec"]
    assert "requests" in container(deployment["spec"]["template"]["spec"], "serving")["resources"]


def test_fixed_replicas_without_hpa_pdb_or_network_policy() -> None:
    objects = render(FIXED)
    assert one(objects, "Deployment", "-serving")["spec"]["replicas"] == 1
    assert find(objects, "HorizontalPodAutoscaler") == []
    assert find(objects, "PodDisruptionBudget") == []
    assert find(objects, "NetworkPolicy", "-serving") == []


def test_the_roles_sync_job_runs_the_command_of_mlwp_up() -> None:
    job = one(render(MINIMAL), "Job", "-roles-sync")
    roles_sync = container(job["spec"]["template"]["spec"], "roles-sync")
    assert roles_sync["command"] == list(ROLES_SYNC_COMMAND)
    env = env_of(roles_sync)
    assert env["MLWP_DATABASE_URL"]["secretKeyRef"] == {
        "name": "mlwp-airflow-metadata",
        "key": "connection",
    }
    # The roles sync needs the database only: no executor, broker or AWS role.
    assert "MLWP_EXECUTOR" not in env
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    # After the official chart's migration (weight 1) and create-user (weight 2) jobs.
    assert int(annotations["helm.sh/hook-weight"]) > 2


def test_the_roles_sync_job_is_a_plain_job_for_argo_cd() -> None:
    job = one(render(FIXED), "Job", "-roles-sync")
    annotations = job["metadata"]["annotations"]
    assert not any(key.startswith("helm.sh/") for key in annotations)
    assert annotations["argocd.argoproj.io/hook"] == "Sync"


def test_service_accounts_carry_irsa_roles_only_when_given() -> None:
    production = {sa["metadata"]["name"]: sa for sa in find(render(PRODUCTION), "ServiceAccount")}
    assert production["mlwp-serving"]["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/mlwp-serving"
    }
    assert set(production) == {"mlwp-serving", "mlwp-mlflow", "mlwp-roles-sync"}
    for account in find(render(FIXED), "ServiceAccount"):  # EKS Pod Identity: no annotation
        assert "annotations" not in account["metadata"]
    objects = render(EXTERNAL_MLFLOW)
    assert "mlwp-serving" not in {sa["metadata"]["name"] for sa in find(objects, "ServiceAccount")}
    spec = one(objects, "Deployment", "-serving")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "mlwp-serving-existing"


def test_secrets_are_referenced_never_rendered() -> None:
    """Secrets come from the user; the one the chart makes holds a generated token only."""
    for values_file in CI_VALUES:
        secrets = find(render(values_file), "Secret")
        assert [s["metadata"]["name"] for s in secrets] in ([], ["mlwp-serving-admin-key"])
        for secret in secrets:
            assert set(secret["data"]) == {"token"}


# --- the deploy task's serving admin key, as `mlwp up` makes it ------------------------------


def generated_token(objects: list[dict[str, Any]]) -> str:
    secret = one(objects, "Secret", "-serving-admin-key")
    # Kept when the release goes: serving's key database holds its hash.
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    return base64.b64decode(secret["data"]["token"]).decode()


def test_the_serving_admin_key_is_generated_in_servings_token_format(tmp_path: Path) -> None:
    token = generated_token(render(MINIMAL))
    other = generated_token(render(MINIMAL, values={"labels": {"x": "y"}}))
    assert token != other  # random at install (an upgrade keeps the live Secret's: lookup)
    # serving's own key store takes it as a token of its format.
    from serving.keys.store import KeyStore, migrate

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    migrate(url)
    store = KeyStore(url, pepper="pepper", cache_seconds=0)
    key, added = store.install("mlwp-deploy", ["admin"], token)
    assert added and key.is_admin and store.verify(token) is not None
    store.close()


def test_the_roles_sync_job_registers_the_key_that_airflow_sends() -> None:
    job = one(render(MINIMAL), "Job", "-roles-sync")
    registers = container(job["spec"]["template"]["spec"], "serving-admin-key")
    assert registers["command"] == ["mlwp", "keys", "install-admin"]
    env = env_of(registers)
    key_ref = {"name": "mlwp-serving-admin-key", "key": "token"}
    assert env["MLWP_SERVING_ADMIN_KEY"]["secretKeyRef"] == key_ref
    assert env["MLWP_SERVING_DATABASE_URL"]["secretKeyRef"] == {
        "name": "mlwp-serving",
        "key": "database-url",
    }
    assert env["MLWP_SERVING_KEY_PEPPER"]["secretKeyRef"] == {
        "name": "mlwp-serving",
        "key": "key-pepper",
    }
    # The official chart's values hand the same Secret to every Airflow container and task pod.
    airflow = yaml.safe_load((REPO_ROOT / "charts" / "airflow-values.yaml").read_text())
    (entry,) = [e for e in airflow["secret"] if e["envName"] == "MLWP_SERVING_ADMIN_KEY"]
    assert {"name": entry["secretName"], "key": entry["secretKey"]} == key_ref
    pod = yaml.safe_load(airflow["podTemplate"])
    pod_env = {e["name"]: e.get("valueFrom") for e in pod["spec"]["containers"][0]["env"]}
    assert pod_env["MLWP_SERVING_ADMIN_KEY"]["secretKeyRef"] == key_ref


def test_a_serving_admin_key_of_ones_own_is_used_and_none_generated() -> None:
    objects = render(MINIMAL, values={"servingAdminKey": {"existingSecret": "my-key"}})
    assert find(objects, "Secret") == []
    job = one(objects, "Job", "-roles-sync")
    env = env_of(container(job["spec"]["template"]["spec"], "serving-admin-key"))
    assert env["MLWP_SERVING_ADMIN_KEY"]["secretKeyRef"] == {"name": "my-key", "key": "token"}


@pytest.mark.parametrize(
    "values",
    [{"servingAdminKey": {"enabled": False}}, {"serving": {"enabled": False}}],
    ids=["disabled", "no-serving"],
)
def test_no_serving_admin_key_when_off_or_serving_runs_elsewhere(values: dict[str, Any]) -> None:
    objects = render(MINIMAL, values=values)
    assert find(objects, "Secret") == []
    spec = one(objects, "Job", "-roles-sync")["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["roles-sync"]


def test_the_ingress_terminates_tls_for_every_host() -> None:
    ingress = one(render(PRODUCTION), "Ingress")
    hosts = [rule["host"] for rule in ingress["spec"]["rules"]]
    assert hosts == ["predict.mlwp.example.com", "mlflow.mlwp.example.com"]
    assert ingress["spec"]["tls"] == [{"hosts": hosts}]  # the ALB brings the ACM certificate
    assert ingress["spec"]["ingressClassName"] == "alb"
    backends = {
        rule["host"]: rule["http"]["paths"][0]["backend"]["service"]
        for rule in ingress["spec"]["rules"]
    }
    serving_backend = {"name": "mlwp-serving", "port": {"number": 8000}}
    assert backends["predict.mlwp.example.com"] == serving_backend
    with_secret = one(render(EXTERNAL_MLFLOW), "Ingress")
    assert with_secret["spec"]["tls"] == [
        {"hosts": ["predict.mlwp.example.com"], "secretName": "mlwp-tls"}
    ]


def test_mlflow_answers_to_its_ingress_host() -> None:
    mlflow = one(render(PRODUCTION), "Deployment", "-mlflow")
    command = container(mlflow["spec"]["template"]["spec"], "mlflow")["command"]
    allowed = command[command.index("--allowed-hosts") + 1].split(",")
    assert {"mlwp-mlflow", "mlwp-mlflow:5000", "mlflow.mlwp.example.com"} <= set(allowed)


def test_serving_uses_an_external_mlflow_when_the_charts_is_off() -> None:
    objects = render(EXTERNAL_MLFLOW)
    assert find(objects, "Deployment", "-mlflow") == []
    assert find(objects, "Service", "-mlflow") == []
    env = env_of(deployed(objects, "-serving", "serving"))
    assert env["MLWP_SERVING_MLFLOW_TRACKING_URI"] == "https://mlflow.internal.example.com"
    local = env_of(deployed(render(MINIMAL), "-serving", "serving"))
    assert local["MLWP_SERVING_MLFLOW_TRACKING_URI"] == "http://mlwp-mlflow:5000"


def test_serving_captures_the_entity_keys_it_is_given() -> None:
    """serving.entityFields becomes MLWP_SERVING_ENTITY_FIELDS (JSON, as serving parses it);
    unset, serving keeps its default field and the variable is left out."""
    env = env_of(deployed(render(PRODUCTION), "-serving", "serving"))
    assert json.loads(env["MLWP_SERVING_ENTITY_FIELDS"]) == {
        "churn": "customer_id",
        "credit": "applicant_id",
    }
    assert "MLWP_SERVING_ENTITY_FIELDS" not in env_of(
        deployed(render(MINIMAL), "-serving", "serving")
    )
    with pytest.raises(RenderError, match="/serving/entityFields/churn"):
        render(MINIMAL, values={"serving": {"entityFields": {"churn": 3}}})


def test_the_platform_chart_serves_the_entity_keys_of_the_example_definitions() -> None:
    """charts/mlwp-platform deploys the image's dags/: its entityFields are what the
    definitions there declare (`mlwp config serving-entity-fields`, as `mlwp up` derives)."""
    from mlwp.definitions.entity_keys import serving_entity_fields
    from mlwp.definitions.loading import find_definitions

    values = yaml.safe_load((REPO_ROOT / "charts" / "mlwp-platform" / "values.yaml").read_text())
    derived, problems = serving_entity_fields(find_definitions([REPO_ROOT / "dags" / "projects"]))
    assert problems == []
    assert values["mlwp"]["serving"]["entityFields"] == derived


def airflow_storage_roots(airflow: dict[str, Any]) -> set[str]:
    """MLWP_STORAGE_ROOT of the official chart's values: ``env`` (every Airflow container:
    scheduler, workers, triggerer...) and the KubernetesExecutor pod template's task pods."""
    roots = {item["value"] for item in airflow["env"] if item["name"] == "MLWP_STORAGE_ROOT"}
    [task] = yaml.safe_load(airflow["podTemplate"])["spec"]["containers"]
    roots |= {item["value"] for item in task["env"] if item["name"] == "MLWP_STORAGE_ROOT"}
    return roots


def test_serving_captures_into_the_storage_root_of_the_airflow_pods() -> None:
    """The umbrella's serving, rendered, writes captures under the one MLWP_STORAGE_ROOT its
    Airflow pods have (where the monitor task reads them): the data bucket, not the pod."""
    umbrella = yaml.safe_load((REPO_ROOT / "charts" / "mlwp-platform" / "values.yaml").read_text())
    [root] = airflow_storage_roots(umbrella["airflow"])
    assert root.startswith("s3://")
    serving = one(render(values=umbrella["mlwp"]), "Deployment", "-serving")["spec"]["template"]
    assert env_of(container(serving["spec"], "serving"))["MLWP_STORAGE_ROOT"] == root
    assert {volume["name"] for volume in serving["spec"]["volumes"]} == {"state", "tmp"}


def test_serving_shares_a_claim_with_the_airflow_pods_as_their_user() -> None:
    """On a single-node cluster's PersistentVolumeClaim serving mounts the Airflow pods' path,
    takes its file:// root, and runs as their user (50000, group 0, the serving image's too):
    either may then write into folders the other made."""
    spec = one(render(FIXED), "Deployment", "-serving")["spec"]["template"]["spec"]
    serving = container(spec, "serving")
    assert env_of(serving)["MLWP_STORAGE_ROOT"] == "file:///var/lib/mlwp/storage"
    assert {"name": "storage", "mountPath": "/var/lib/mlwp/storage"} in serving["volumeMounts"]
    claims = [v["persistentVolumeClaim"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [{"claimName": "mlwp-storage"}]
    for context in (spec["securityContext"], serving["securityContext"]):
        assert (context["runAsUser"], context["runAsGroup"]) == (50000, 0)
    assert "MLWP_STORAGE_ROOT" not in env_of(deployed(render(MINIMAL), "-serving", "serving"))
    with pytest.raises(RenderError, match="/serving/storage/root"):
        render(MINIMAL, values={"serving": {"storage": {"root": "/var/lib/mlwp/storage"}}})


def test_images_by_tag_or_digest() -> None:
    objects = render(PRODUCTION)
    serving = deployed(objects, "-serving", "serving")
    assert re.fullmatch(r".*/mlwp/serving@sha256:[0-9a-f]{64}", serving["image"])
    mlflow = deployed(objects, "-mlflow", "mlflow")
    assert mlflow["image"].endswith("/mlwp/platform:3f2c1ab")


# --- disabled by default -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Ingress", "ServiceMonitor"])
def test_optional_objects_are_disabled_by_default(kind: str) -> None:
    assert find(render(MINIMAL), kind) == []


def test_the_service_monitor_scrapes_metrics_when_enabled() -> None:
    monitor = one(render(PRODUCTION), "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]


@pytest.mark.parametrize(
    ("values", "kind", "suffix"),
    [
        ({"serving": {"enabled": False}}, "Deployment", "-serving"),
        ({"serving": {"enabled": False}}, "HorizontalPodAutoscaler", ""),
        ({"mlflow": {"enabled": False, "trackingUri": "http://m"}}, "Deployment", "-mlflow"),
        ({"rolesSync": {"enabled": False}}, "Job", ""),
        ({"serving": {"podDisruptionBudget": {"enabled": False}}}, "PodDisruptionBudget", ""),
    ],
)
def test_each_switch_removes_its_objects(values: dict[str, Any], kind: str, suffix: str) -> None:
    assert find(render(MINIMAL), kind, suffix)
    assert find(render(MINIMAL, values=values), kind, suffix) == []
