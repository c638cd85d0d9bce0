"""Properties of the role table: access to each DAG equals project membership.

Two layers, both fast: the permission computation of ``mlwp.security.roles`` for generated
projects, DAGs and memberships; and the same permission sets handed to FAB's real
``FabAuthManager`` decision code, which must agree with the table's rule on every action.
"""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlwp.security.roles import (
    ACTIONS,
    ADMIN,
    DAG_PREFIX,
    DATA_SCIENTIST,
    VIEWER,
    PlatformAction,
    is_allowed,
    project_access_control,
    project_role,
    user_permissions,
)

pytestmark = [pytest.mark.property, pytest.mark.unit]

project_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
workflow_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)


@st.composite
def platforms(draw: st.DrawFn) -> dict[str, Any]:
    """Projects with DAGs, and users with a role and (for DataScientists) memberships."""
    projects = draw(st.lists(project_names, min_size=1, max_size=4, unique=True))
    dag_projects: dict[str, str] = {}
    for project in projects:
        for workflow in draw(st.lists(workflow_names, min_size=1, max_size=3, unique=True)):
            dag_projects[f"{project}.{workflow}"] = project
    users = []
    for _ in range(draw(st.integers(1, 5))):
        role = draw(st.sampled_from([ADMIN.name, DATA_SCIENTIST.name, VIEWER.name]))
        member_of = (
            draw(st.sets(st.sampled_from(projects))) if role == DATA_SCIENTIST.name else set()
        )
        users.append((role, member_of))
    return {"dag_projects": dag_projects, "users": users}


def _expected(role: str, member_of: set[str], action: PlatformAction, project: str) -> bool:
    if role == ADMIN.name:
        return True
    if action.name == "manage_users":
        return False
    reads = action.dag_method == "GET"
    return reads or (role == DATA_SCIENTIST.name and project in member_of)


@settings(max_examples=200, deadline=None)
@given(platforms())
def test_access_to_each_dag_equals_membership(platform: dict[str, Any]) -> None:
    dag_projects: dict[str, str] = platform["dag_projects"]
    for role, member_of in platform["users"]:
        roles = [role, *(project_role(p) for p in member_of)]
        perms = user_permissions(roles, dag_projects)
        for dag_id, project in dag_projects.items():
            for action in ACTIONS:
                target = None if action.dag_method is None else dag_id
                assert is_allowed(perms, action, target) == _expected(
                    role, member_of, action, project
                ), (role, sorted(member_of), action.name, dag_id)
        # DAG-level permissions only ever name DAGs of the user's projects.
        for _action, resource in perms:
            if resource.startswith(DAG_PREFIX):
                assert dag_projects[resource[len(DAG_PREFIX) :]] in member_of


@given(project_names)
def test_access_control_names_only_the_project_role(project: str) -> None:
    access = project_access_control(project)
    assert list(access) == [f"project:{project}"]
    assert access[f"project:{project}"] == {"DAGs": {"can_read", "can_edit"}}


# --- the table's rule against FAB's real decision code ---------------------------------


@cache
def _fab() -> Any:
    from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager

    return FabAuthManager()


def _fab_decides(perms: frozenset[tuple[str, str]], action: PlatformAction, dag_id: str) -> bool:
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )

    user = SimpleNamespace(perms=perms)
    entity_of = {
        "trigger_dag": DagAccessEntity.RUN,
        "trigger_other_dag": DagAccessEntity.RUN,
        "clear_tasks": DagAccessEntity.TASK_INSTANCE,
        "view_approval": DagAccessEntity.HITL_DETAIL,
        "answer_approval": DagAccessEntity.HITL_DETAIL,
    }
    method_of = {"trigger_dag": "POST", "trigger_other_dag": "POST"}
    if action.name == "manage_users":
        return bool(
            _fab().is_authorized_custom_view(method="GET", resource_name="Users", user=user)
        )
    method = method_of.get(action.name, action.dag_method)
    return bool(
        _fab().is_authorized_dag(
            method=method,
            user=user,
            access_entity=entity_of.get(action.name),
            details=DagDetails(id=dag_id),
        )
    )


@settings(max_examples=60, deadline=None)
@given(platforms())
def test_fab_agrees_with_the_table(platform: dict[str, Any]) -> None:
    dag_projects: dict[str, str] = platform["dag_projects"]
    for role, member_of in platform["users"]:
        perms = user_permissions([role, *(project_role(p) for p in member_of)], dag_projects)
        for dag_id in dag_projects:
            for action in ACTIONS:
                target = None if action.dag_method is None else dag_id
                assert _fab_decides(perms, action, dag_id) == is_allowed(perms, action, target), (
                    role,
                    action.name,
                    dag_id,
                )
