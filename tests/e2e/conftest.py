"""Fixtures of the e2e tests: a pipeline environment (storage under tmp, the real MLflow
server, the session's Airflow database). Helpers to build and inspect the churn DAG are in
``churn_workflow.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_process import free_port


def ensure_project_roles(*names: str) -> None:
    """Create the FAB project roles that `mlwp roles sync` creates on a real platform.

    dag.test() stores the DAG folder's DAGs first, and Airflow refuses to store a DAG whose
    access_control names an unknown role; without the stored DAG its assets are unknown
    and asset events would be dropped.
    """
    from airflow.providers.fab.auth_manager.models import Role
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        for name in names:
            if session.scalar(select(Role).where(Role.name == name)) is None:
                session.add(Role(name=name))


@pytest.fixture
def project_roles(airflow_db: None) -> None:
    """The project roles of the example projects, in the session's Airflow database."""
    ensure_project_roles("project:churn", "project:credit")


@pytest.fixture
def pipeline_env(
    tmp_path: Path, mlflow_tracking: str, airflow_db: None, monkeypatch: pytest.MonkeyPatch
) -> Path:
    ensure_project_roles("project:churn", "project:credit")
    storage = tmp_path / "storage"
    monkeypatch.setenv("MLWP_STORAGE_ROOT", storage.as_uri())
    # Nothing listens there: deploy must log the unreachable serving service and go on.
    monkeypatch.setenv("MLWP_SERVING_PORT", str(free_port()))
    return storage
