"""The churn example's own transform steps, so these tests train what the example trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CHURN = Path(__file__).resolve().parents[2] / "dags" / "projects" / "churn" / "workflow.yaml"


def churn_steps() -> list[dict[str, Any]]:
    """The ``features`` task's steps of the churn ``train`` workflow."""
    document = yaml.safe_load(CHURN.read_text())
    steps: list[dict[str, Any]] = document["workflows"]["train"]["tasks"]["features"]["steps"]
    return steps
