"""The churn train workflow for the e2e tests: its DAG from the example's YAML (automatic
approval, short tuning) and readers of a DAG run's outcome. Test modules here import it by
name (pytest puts this folder on ``sys.path``); fixtures live in ``conftest.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlwp.settings import REPO_ROOT

CHURN = REPO_ROOT / "dags" / "projects" / "churn"
MODEL = "churn"


def churn_dag(
    project_dir: Path,
    *,
    model: str = MODEL,
    trials: int = 3,
    num_boost_round: int = 120,
    approval: str = "auto",
    approve: dict[str, Any] | None = None,
    alerts: Any = None,
) -> Any:
    """The churn train DAG from its YAML, with automatic approval and a short tuning.

    ``model`` renames the registered model (register and deploy tasks), so that a test can
    own its model in the session's shared MLflow server; ``approval="human"`` keeps the
    definition's human approval; ``approve`` overrides other fields of the approve task
    (its four-eyes rules).
    """
    return train_dag(
        CHURN / "workflow.yaml",
        project_dir,
        model=model,
        trials=trials,
        num_boost_round=num_boost_round,
        approval=approval,
        approve=approve,
        alerts=alerts,
    )


def train_dag(
    definition: Path,
    project_dir: Path,
    *,
    model: str | None = None,
    trials: int,
    num_boost_round: int,
    approval: str | None = None,
    approve: dict[str, Any] | None = None,
    alerts: Any = None,
) -> Any:
    """The ``train`` DAG of a project definition, shortened for a test.

    The train task gets ``trials`` tuning trials and ``num_boost_round`` rounds; ``model``
    (when given) renames the model of the register and deploy tasks; ``approval`` (when given)
    sets the approve task's mode. Notifiers are dropped unless ``alerts`` (an ``Alerts``) is
    given; the rollout after deploy is dropped.
    """
    from mlwp.definitions import Alerts
    from mlwp.definitions.loading import load_project
    from operators.compiler import build_dag

    project = load_project(definition)
    workflow = project.workflows["train"]
    tasks = dict(workflow.tasks)
    # The guarded rollout after deploy lasts days by design; test_rollout.py runs rollouts.
    tasks.pop("rollout", None)
    if approval is not None:
        tasks["approve"] = tasks["approve"].model_copy(update={"mode": approval})
    if approve:
        tasks["approve"] = tasks["approve"].model_copy(update=approve)
    train = tasks["train"]
    assert train.tuning is not None
    tasks["train"] = train.model_copy(
        update={
            "tuning": train.tuning.model_copy(update={"trials": trials}),
            "num_boost_round": num_boost_round,
        }
    )
    register = tasks["register"]
    if register.gate is not None and register.gate.beat is not None:
        # These tests retrain the same data with the same seed, so the retrain ties the
        # champion; the definition's strict `beat` (an identical retrain is not promoted)
        # would skip the second registration the tests are about.
        tasks["register"] = register.model_copy(
            update={"gate": register.gate.model_copy(update={"margin": -1e-6, "allow_worse": True})}
        )
    if model is not None:
        for task_id in ("register", "deploy"):
            tasks[task_id] = tasks[task_id].model_copy(update={"model": model})
    project = project.model_copy(
        update={
            # The definition's notifiers name the team's connections; a test that wants alerts
            # passes its own (receivers it started), the others none.
            "alerts": alerts if alerts is not None else Alerts(),
            "workflows": {
                **project.workflows,
                "train": workflow.model_copy(update={"tasks": tasks}),
            },
        }
    )
    return build_dag(project, "train", project_dir=project_dir)


def xcom(run: Any, task_id: str, key: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == run.dag_id,
                XComModel.run_id == run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == key,
            )
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def versions(client: Any, model: str = MODEL) -> list[Any]:
    from mlflow.exceptions import MlflowException

    try:
        return list(client.search_model_versions(f"name = '{model}'"))
    except MlflowException:
        return []


def assert_lineage(
    tags: dict[str, str],
    *,
    project: str,
    run: Any,
    version: Any,
    extracted: dict[str, Any],
    metric: str,
) -> None:
    """The lineage tags of contract 4 on a version registered by ``run`` from ``extracted``."""
    assert tags["mlwp.project"] == project
    assert tags["mlwp.workflow"] == "train"
    assert tags["mlwp.dag_id"] == f"{project}.train"
    assert tags["mlwp.airflow_run_id"] == run.run_id
    assert tags["mlwp.dataset_uri"] == extracted["uri"]
    assert tags["mlwp.dataset_sha256"] == extracted["sha256"]
    assert tags["mlwp.gx_success"] == "true"
    assert '"unsuccessful":0' in tags["mlwp.gx_statistics"]
    assert tags["mlwp.backend"] == "local"
    assert tags["mlwp.code_version"]
    assert tags["mlwp.mlflow_run_id"] == version.run_id
    assert tags["mlwp.job_name"].startswith(run.run_id)
    assert f'"{metric}"' in tags["mlwp.test_metrics"]
