"""Check charts/airflow-values.yaml against a copy of the official apache-airflow chart.

    helm pull airflow --repo https://airflow.apache.org --version 1.22.0
    uv run --frozen --no-sync python tools/check_official_chart.py airflow-1.22.0.tgz
    uv run --frozen --no-sync python tools/check_official_chart.py airflow-1.22.0.tgz \
        --values charts/airflow-values.yaml --values charts/airflow-values-git-bundle.yaml

The official chart cannot be downloaded on the development and CI machines of this
repository, and nothing of it is committed; this script runs wherever a copy exists (the
GitHub workflow pulls one). It checks, and exits non-zero naming each problem:

1. every key of the values file is a key the chart's values.schema.json defines (the schema
   accepts unknown top-level keys, so Helm alone would not catch a misspelt section);
2. ``helm lint --strict`` and ``helm template`` accept the values (the schema's types);
3. every rendered object is valid against the Kubernetes schema of the given versions
   (kubernetes-validate, strict), the pod template file included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
VALUES = REPO_ROOT / "charts" / "airflow-values.yaml"
KUBE_VERSIONS = ("1.31", "1.35")
# Objects whose kinds come from CRDs (KEDA), unknown to the Kubernetes schema.
CRD_KINDS = {"ScaledObject", "TriggerAuthentication"}
# Values the schema leaves open (free-form maps, strings holding documents).
OPEN_KEYS = {"config", "env", "secret", "podTemplate", "labels", "annotations", "resources"}


def undefined_keys(values: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Key paths of ``values`` that ``schema`` does not define (following $ref and oneOf)."""
    problems = []
    if not isinstance(values, dict):
        return problems
    properties = schema.get("properties")
    if properties is None:
        return problems  # a free-form map
    for key, value in values.items():
        where = f"{path}.{key}" if path else key
        if key not in properties:
            problems.append(f"{where}: not a key of the official chart's values")
        elif key not in OPEN_KEYS and "properties" in properties[key]:
            problems += undefined_keys(value, properties[key], where)
    return problems


def helm(*argv: str) -> str:
    result = subprocess.run(
        [str(REPO_ROOT / ".tools" / "bin" / "helm"), *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"helm {argv[0]} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def kubernetes_problems(objects: list[dict[str, Any]], version: str) -> list[str]:
    import kubernetes_validate

    problems = []
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.path)
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            problems.append(f"{version} {name} {where}: {exc.message}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chart", type=Path, help="the official chart: a folder or a .tgz")
    parser.add_argument(
        "--values",
        type=Path,
        action="append",
        help="values files, in order (charts/airflow-values.yaml when none is given)",
    )
    args = parser.parse_args()
    values_files: list[Path] = args.values or [VALUES]
    values_args = [arg for path in values_files for arg in ("--values", str(path))]

    with tempfile.TemporaryDirectory() as scratch:
        chart = args.chart
        if chart.suffix == ".tgz":
            with tarfile.open(chart) as archive:
                archive.extractall(scratch, filter="data")
            chart = Path(scratch) / "airflow"
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        schema = json.loads((chart / "values.schema.json").read_text())
        problems = []
        for path in values_files:
            problems += undefined_keys(yaml.safe_load(path.read_text()), schema)
        print(f"official chart {meta['name']} {meta['version']} (Airflow {meta['appVersion']})")

        helm("lint", "--strict", str(chart), *values_args)
        for version in KUBE_VERSIONS:
            rendered = helm(
                "template",
                "mlwp",
                str(chart),
                "--namespace",
                "mlwp",
                "--kube-version",
                version,
                *values_args,
            )
            objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
            for obj in objects:
                data = obj.get("data") or {}
                if obj["kind"] == "ConfigMap" and "pod_template_file.yaml" in data:
                    objects.append(yaml.safe_load(data["pod_template_file.yaml"]))
            problems += kubernetes_problems(objects, version)
            print(f"kubernetes {version}: {len(objects)} objects rendered and validated")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
