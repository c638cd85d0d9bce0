"""The benchmarked workflow: the churn YAML's train workflow, auto-approved, short tuning.

Shared by the dag.test worker and by the DAG file the real scheduler parses, so both run
the very same DAG; the floor calls the same library functions the operators call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CHURN = REPO_ROOT / "dags" / "projects" / "churn"


def bench_project(model: str, trials: int, project: str = "churn") -> Any:
    """The churn project, manual only, with auto approval, ``trials`` tuning trials, ``model``.

    ``project`` renames it, so that several copies (``<project>.train``) run side by side.
    """
    from mlwp.definitions import Alerts
    from mlwp.definitions.loading import load_project

    definition = load_project(CHURN / "workflow.yaml")
    workflow = definition.workflows["train"]
    tasks = dict(workflow.tasks)
    tasks.pop("rollout", None)  # lasts days by design; the benchmark ends at deploy
    tasks["approve"] = tasks["approve"].model_copy(update={"mode": "auto"})
    train = tasks["train"]
    tuning = train.tuning.model_copy(update={"trials": trials}) if train.tuning else None
    tasks["train"] = train.model_copy(update={"tuning": tuning})
    for name in ("register", "deploy"):
        tasks[name] = tasks[name].model_copy(update={"model": model})
    return definition.model_copy(
        update={
            "project": project,
            "alerts": Alerts(),
            "defaults": definition.defaults.model_copy(update={"retries": 0}),
            # Manual only: unpausing a scheduled DAG starts its latest scheduled run at once,
            # and the triggered run would then queue behind it (max_active_runs 1).
            "workflows": {"train": workflow.model_copy(update={"tasks": tasks, "schedule": None})},
        }
    )


def bench_dag(model: str, trials: int, project: str = "churn") -> Any:
    """The Airflow DAG ``<project>.train`` of :func:`bench_project`."""
    from operators.compiler import build_dag

    dag = build_dag(bench_project(model, trials, project), "train", project_dir=CHURN)
    # The benchmark's throwaway Airflow has no project roles (`mlwp roles sync`), and Airflow
    # refuses to store a DAG whose access_control names an unknown role.
    dag.access_control = None
    return dag
