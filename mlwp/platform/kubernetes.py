"""The KubernetesExecutor's pod template and per-task pod overrides, from the platform settings.

Airflow's KubernetesExecutor starts each task in a pod built from ``[kubernetes_executor]
pod_template_file``, then merges the task's ``executor_config["pod_override"]`` onto it (the
container to change is the one named ``base``). Both come from here, as plain manifests (dicts),
so they can be printed, embedded in the official chart's values (``mlwp config pod-template``),
validated offline against the Kubernetes schema, and converted to Airflow's ``V1Pod`` objects by
the compiler; nothing here imports Airflow or the Kubernetes client.

What a task pod gets:

- the platform image (``MLWP_KUBERNETES_IMAGE``), running as the image's non-root user
  (uid 50000, group 0, as the official Airflow image), no privilege escalation, no
  capabilities, the runtime's default seccomp profile, a writable ``/tmp`` (emptyDir);
- the same environment as every other platform process
  (:func:`mlwp.platform.airflow_config.airflow_environment`), minus the secrets: each secret
  variable is a ``secretKeyRef`` to the key of the same name in ``MLWP_KUBERNETES_SECRET``
  (Fernet key, JWT secret, session key, database, broker and result-backend URLs, serving's
  key...), so the rendered template holds no secret and can be committed or printed;
- default requests of ``MLWP_KUBERNETES_TASK_CPU`` / ``MLWP_KUBERNETES_TASK_MEMORY`` and a
  memory limit equal to the request (no CPU limit: it throttles a task that could use idle
  cores); a task's ``resources`` in its definition overrides them;
- the service account ``MLWP_KUBERNETES_SERVICE_ACCOUNT`` (for IRSA on EKS: S3, SageMaker).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from mlwp.platform.airflow_config import POD_TEMPLATE_NAME, airflow_environment
from mlwp.settings import Settings

# Airflow merges a pod_override onto the template's container of this name.
BASE_CONTAINER = "base"
# The platform image's user: the official Airflow image's uid, in group 0 (OpenShift-style).
RUN_AS_USER, RUN_AS_GROUP = 50000, 0

# Variables whose value is a secret by name, whatever it looks like.
_SECRET_SUFFIXES = ("_KEY", "_SECRET", "_PASSWORD", "_TOKEN")
# Connection strings: they carry a password in production even when this one has none.
_CONNECTION_VARIABLES = frozenset(
    {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW__CELERY__RESULT_BACKEND",
        "MLWP_AUDIT_DATABASE_URL",
        "MLWP_SERVING_DATABASE_URL",
        "MLWP_AUTH_RATE_LIMIT_STORAGE",
    }
)
# Host-local variables a pod must not inherit (the pod has its own home and paths).
_HOST_ONLY = frozenset({"PYTHONPATH"})


def is_secret(name: str, value: str) -> bool:
    """Whether an environment variable must reach a pod by reference, not by value."""
    if name in _CONNECTION_VARIABLES or name.endswith(_SECRET_SUFFIXES):
        return True
    try:
        return urlsplit(value).password is not None
    except ValueError:
        return False


def task_environment(
    settings: Settings, env: Mapping[str, str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``env`` list of a task container, and the secret keys it references."""
    plain: list[dict[str, Any]] = []
    secret_keys: list[str] = []
    overrides = {}
    if settings.kubernetes_api_server_url:
        # Pods reach the api-server through the cluster, not the address it binds.
        base = settings.kubernetes_api_server_url.rstrip("/")
        overrides["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"{base}/execution/"
    for name in sorted({**env, **overrides}):
        if name in _HOST_ONLY:
            continue
        value = overrides.get(name, env.get(name, ""))
        if is_secret(name, value):
            secret_keys.append(name)
            ref = {"name": settings.kubernetes_secret, "key": name}
            plain.append({"name": name, "valueFrom": {"secretKeyRef": ref}})
        else:
            plain.append({"name": name, "value": value})
    return plain, secret_keys


def resource_requirements(cpu: str | None, memory: str | None) -> dict[str, Any]:
    """Requests of ``cpu`` and ``memory``, and a memory limit equal to its request."""
    requests = {key: value for key, value in (("cpu", cpu), ("memory", memory)) if value}
    resources: dict[str, Any] = {"requests": requests}
    if memory:
        resources["limits"] = {"memory": memory}
    return resources


def pod_template(settings: Settings, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The pod template of every task pod, as a manifest."""
    if env is None:
        env = airflow_environment(settings)
    container_env, _ = task_environment(settings, env)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_GROUP,
            "fsGroup": RUN_AS_GROUP,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": BASE_CONTAINER,
                "image": settings.kubernetes_image,
                "imagePullPolicy": settings.kubernetes_image_pull_policy,
                "env": container_env,
                "resources": resource_requirements(
                    settings.kubernetes_task_cpu, settings.kubernetes_task_memory
                ),
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
                # In the pod, not on this host: a writable /tmp under any root filesystem.
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if settings.kubernetes_service_account:
        spec["serviceAccountName"] = settings.kubernetes_service_account
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            # Airflow replaces the name per task; a template needs one to be a valid Pod.
            "name": "mlwp-task",
            "namespace": settings.kubernetes_namespace,
            "labels": {
                "app.kubernetes.io/name": "mlwp",
                "app.kubernetes.io/component": "task",
            },
        },
        "spec": spec,
    }


def task_pod_override(cpu: str | None, memory: str | None) -> dict[str, Any]:
    """The ``pod_override`` of a task with its own ``resources``, as a (partial) manifest.

    Airflow merges it onto the template: only the base container's resources change.
    """
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "spec": {
            "containers": [
                {"name": BASE_CONTAINER, "resources": resource_requirements(cpu, memory)}
            ]
        },
    }


def pod_template_yaml(settings: Settings) -> str:
    """The pod template as YAML, with a header saying where it comes from."""
    import yaml

    header = (
        "# mlwp task pod template (KubernetesExecutor), generated from the MLWP_* settings by\n"
        "# `mlwp config pod-template`; secrets are references to the Secret "
        f"'{settings.kubernetes_secret}'.\n"
    )
    return header + yaml.safe_dump(pod_template(settings), sort_keys=False)


def write_pod_template(settings: Settings) -> None:
    """Write the pod template where ``[kubernetes_executor] pod_template_file`` points."""
    from mlwp.platform.secrets import write_private

    target = settings.airflow_home / POD_TEMPLATE_NAME
    write_private(target, pod_template_yaml(settings).encode())
