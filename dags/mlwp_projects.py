"""Airflow DAG loader: every dags/projects/<project>/workflow.yaml becomes one DAG per workflow.

A broken definition never hides the others: its problems (file:line:column: path: message)
are listed among Airflow's import errors under its own file name. When Airflow runs a task,
``get_parsing_context()`` names the DAG, and only that one is built. A project whose role
does not exist yet gets its DAGs without access_control until the roles sync creates it.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import get_parsing_context

from operators.compiler import existing_project_roles, load_projects, report_import_errors

_HERE = Path(__file__).resolve().parent
_dag_id = get_parsing_context().dag_id
_result = load_projects(
    _HERE / "projects",
    dag_id=_dag_id,
    display_root=_HERE.parent,
    # Only the DAG processor serializes DAGs (and syncs access_control); a task run skips this.
    project_roles=existing_project_roles() if _dag_id is None else None,
)
globals().update(_result.dags)
report_import_errors(_result.problems, __file__)
