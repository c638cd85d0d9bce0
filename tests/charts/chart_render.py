"""Render the Helm charts with the real helm binary and read the objects back.

``helm template`` with given values (files and a dict), a Kubernetes version and a namespace,
as the official chart's helm-tests do; the objects come back as dicts for assertions, and
:func:`validate_objects` checks them against the Kubernetes OpenAPI schema of a version with
kubernetes-validate (its bundled schemas: nothing is downloaded).
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from checkers import REPO_ROOT, checker, run_checker

MLWP_CHART = REPO_ROOT / "charts" / "mlwp"
CI_VALUES = sorted((MLWP_CHART / "ci").glob("*-values.yaml"))
# The oldest and the newest Kubernetes minor versions the chart is checked against (EKS
# standard support at the time of writing; kubernetes-validate bundles both schemas).
KUBE_VERSIONS = ("1.31", "1.35")
NAMESPACE = "mlwp"
RELEASE = "mlwp"
# Kinds defined by CRDs, which the Kubernetes schema does not know.
CRD_KINDS = {"ServiceMonitor"}


class RenderError(Exception):
    """helm template refused the chart or the values; the message is helm's."""


def render(
    *values_files: Path,
    values: dict[str, Any] | None = None,
    kube_version: str = KUBE_VERSIONS[-1],
    chart: Path = MLWP_CHART,
) -> list[dict[str, Any]]:
    """Render ``chart`` and return its objects (raises :class:`RenderError` with helm's output)."""
    key = json.dumps(values or {}, sort_keys=True)
    return _render(tuple(values_files), key, kube_version, chart)


@functools.lru_cache(maxsize=128)
def _render(
    values_files: tuple[Path, ...], values_json: str, kube_version: str, chart: Path
) -> list[dict[str, Any]]:
    helm = checker("helm")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra:
        json.dump(json.loads(values_json), extra)
        extra.flush()
        argv = [helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE]
        argv += ["--kube-version", kube_version]
        for path in (*values_files, Path(extra.name)):
            argv += ["--values", str(path)]
        result = run_checker(argv)
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: Iterable[dict[str, Any]], kind: str, name_suffix: str = "") -> list[dict]:
    return [
        obj
        for obj in objects
        if obj["kind"] == kind and obj["metadata"]["name"].endswith(name_suffix)
    ]


def one(objects: Iterable[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = find(objects, kind, name_suffix)
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, found {len(found)}"
    return found[0]


def pod_specs(objects: Iterable[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(object name, pod spec) of every workload."""
    specs = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            specs.append((obj["metadata"]["name"], obj["spec"]["template"]["spec"]))
        elif obj["kind"] == "Pod":
            specs.append((obj["metadata"]["name"], obj["spec"]))
    return specs


def validate_objects(objects: Iterable[dict[str, Any]], kube_version: str) -> list[str]:
    """Problems of the objects against the Kubernetes schema (strict: unknown fields too)."""
    import kubernetes_validate

    problems = []
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(part) for part in exc.path)
            problems.append(f"{name} at {path or '.'}: {exc.message}")
    return problems


def write_manifests(folder: Path, objects: Iterable[dict[str, Any]], name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(list(objects), sort_keys=False))
    return path
