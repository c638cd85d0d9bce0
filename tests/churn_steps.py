"""The churn example's own transform steps, so that tests train what the example trains.

Read through ``mlwp.definitions.loading.load_project`` (the validated definition, as the
compiler sees it), never hand-copied. Test modules import it by name: pytest puts ``tests/``
on ``sys.path`` when it loads ``tests/conftest.py``; ``tests/serving/telco.py`` (also loaded by
path from bench/serving) adds it itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHURN = Path(__file__).resolve().parents[1] / "dags" / "projects" / "churn" / "workflow.yaml"


def churn_steps() -> list[dict[str, Any]]:
    """The ``features`` task's steps of the churn ``train`` workflow."""
    from mlwp.definitions.loading import load_project
    from mlwp.definitions.schema import TransformTask

    features = load_project(CHURN).workflows["train"].tasks["features"]
    assert isinstance(features, TransformTask), features
    # As the compiler passes them (TaskBase.operator_arguments): unset options left out.
    return [step.model_dump(mode="json", exclude_none=True) for step in features.steps]
