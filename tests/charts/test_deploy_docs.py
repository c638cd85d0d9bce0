"""docs/deploy.md and the charts name Terraform's outputs and service accounts as they are.

The outputs the deploy guide tells a platform team to read must exist in terraform/outputs.tf,
and the service accounts the charts create must be those Terraform binds to IAM roles (the
default of its ``service_accounts`` variable), or the pods run without their AWS role.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from checkers import REPO_ROOT

pytestmark = pytest.mark.unit

DEPLOY = REPO_ROOT / "docs" / "deploy.md"
OUTPUTS = REPO_ROOT / "terraform" / "outputs.tf"
VARIABLES = REPO_ROOT / "terraform" / "variables.tf"


def terraform_file(path: Path) -> str:
    assert path.exists(), f"{path.relative_to(REPO_ROOT)} is missing: docs/deploy.md names it"
    return path.read_text()


def test_every_output_the_guide_names_exists() -> None:
    outputs = set(re.findall(r'^output "(\w+)"', terraform_file(OUTPUTS), flags=re.MULTILINE))
    guide = DEPLOY.read_text()
    table = guide[guide.index("| output | used in |") : guide.index("## 3.")]
    first_cells = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    named = {name for cell in first_cells for name in re.findall(r"`(\w+)`", cell)}
    assert named, "the outputs table of docs/deploy.md names no output"
    assert named - outputs == set()


def test_the_charts_service_accounts_are_terraforms() -> None:
    text = terraform_file(VARIABLES)
    block = text[text.index('variable "service_accounts"') :]
    block = block[: block.index("\n}\n")]
    bound = set(re.findall(r'name\s*=\s*"(mlwp-[\w-]+)"', block))
    airflow = yaml.safe_load((REPO_ROOT / "charts" / "airflow-values.yaml").read_text())
    created = {
        airflow[component]["serviceAccount"]["name"]
        for component in ("apiServer", "scheduler", "dagProcessor", "triggerer", "workers")
    }
    # charts/mlwp in release mlwp: <release>-<component> for serving and MLflow.
    created |= {"mlwp-serving", "mlwp-mlflow"}
    assert created == bound
