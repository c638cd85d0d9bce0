"""Compile a one-workflow definition with a suite, run it with ``dag.test()`` and read what its
validate task recorded. The validation tests here import it by name (pytest puts this folder
on ``sys.path``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def run_workflow(
    folder: Path,
    definition: str,
    suite: dict[str, Any],
    *,
    monkeypatch: pytest.MonkeyPatch,
    dag_runner: Any,
    check_dag: Any = None,
) -> tuple[Any, dict[str, list[str]]]:
    """Run workflow ``check`` of ``definition`` (project folder ``folder/demo``, suite and
    storage beside it); return the run and each task id's instance states."""
    from mlwp.definitions import load_project
    from operators.compiler import build_dag

    project_dir = folder / "demo"
    project_dir.mkdir(parents=True, exist_ok=True)
    (project_dir / "workflow.yaml").write_text(definition)
    expectations = folder / "expectations"
    expectations.mkdir(exist_ok=True)
    (expectations / f"{suite['name']}.json").write_text(json.dumps(suite))
    monkeypatch.setenv("MLWP_STORAGE_ROOT", (folder / "storage").as_uri())
    monkeypatch.setenv("MLWP_EXPECTATIONS_FOLDER", str(expectations))
    project = load_project(project_dir / "workflow.yaml", expectations_dir=expectations)
    dag = build_dag(project, "check", project_dir=project_dir)
    if check_dag is not None:
        check_dag(dag)
    run = dag_runner(dag)
    states: dict[str, list[str]] = {}
    for ti in run.get_task_instances():
        states.setdefault(ti.task_id, []).append(str(ti.state))
    return run, states


def validation_of(run: Any, task_id: str = "validate") -> dict[str, Any]:
    """The ``validation`` document a validate task pushed to XCom (pass or fail)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=task_id, key="validation")
            .one()
        )
        return dict(XComModel.deserialize_value(row))
