"""Roles and permissions of the platform, as data, and the rule Airflow applies to them.

This table is the single source for three things: ``mlwp roles sync`` (which writes these exact
permission sets into Airflow's FAB tables), the compiler (which grants a project's DAGs to its
project role through ``access_control``) and the tests and docs (the role-by-action matrix is
computed from it). It imports nothing from Airflow, so it can be used anywhere.

How FAB (provider 3.10, Airflow 3.3) decides, and why the sets look the way they do:

- A permission is ``(action, resource)``: actions ``can_read``, ``can_create``, ``can_edit``,
  ``can_delete``, ``menu_access``; resources are global (``DAGs``, ``DAG Runs``, ``Task
  Instances``, ``HITL Detail``, ``Users`` ...) or DAG-level (``DAG:<dag_id>``).
- Acting on a DAG itself (view, pause) needs the method's action on ``DAGs`` (every DAG) or on
  ``DAG:<dag_id>`` (that DAG).
- Acting on something inside a DAG (trigger a run, clear a task, answer an approval) needs the
  method's action on the global sub-resource (``DAG Runs``, ``Task Instances``, ``HITL
  Detail``) AND ``can_read`` (for GET) or ``can_edit`` (for any write) on the DAG itself.

So a DataScientist holds ``can_read`` on every DAG and the write actions on the sub-resources,
but ``can_edit`` only on ``DAG:<dag_id>`` of their projects, through the project role
``project:<project>`` that each generated DAG names in its ``access_control``. Without the
project role every write inside a DAG is refused; with it, exactly that project's DAGs open up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from mlwp.errors import MlwpError

Permission = tuple[str, str]
Method = Literal["GET", "POST", "PUT", "DELETE"]

READ = "can_read"
CREATE = "can_create"
EDIT = "can_edit"
DELETE = "can_delete"
MENU = "menu_access"

DAGS = "DAGs"
DAG_PREFIX = "DAG:"
DAG_RUNS = "DAG Runs"
DAG_RUN_PREFIX = "DAG Run:"
TASK_INSTANCES = "Task Instances"
HITL_DETAIL = "HITL Detail"
USERS = "Users"
ROLES = "Roles"

PROJECT_ROLE_PREFIX = "project:"
# The Airflow Variable where `mlwp roles sync` lists the project roles that exist. The DAG
# loader reads it at parse time (the only way DAG code can learn it: the DAG processor's
# parsing processes have no database access) and names a project's role in access_control
# only once the role exists, because one DAG naming a missing role fails the serialization of
# every DAG of the loader file (Airflow records an import error and marks them all stale).
PROJECT_ROLES_VARIABLE = "mlwp_project_roles"
# MLflow's basic-auth app refuses shorter passwords; the platform applies the same rule to
# Airflow users so that one password works for both.
MIN_PASSWORD_LENGTH = 12
_PROJECT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")

# FAB maps REST methods to actions this way (``get_fab_action_from_method_map``).
METHOD_ACTION: dict[str, str] = {"GET": READ, "POST": CREATE, "PUT": EDIT, "DELETE": DELETE}


class SecurityError(MlwpError):
    """A role, project or membership request that the platform cannot honour."""

    code = "security_error"


# Read-only access to everything an ML team looks at. FAB's built-in Viewer, on purpose (FAB
# re-adds its built-in permissions at every api-server start, so a smaller Viewer could not
# be kept), plus ``can_read`` on ``Plugins``: Airflow 3.3's UI builds its navigation, the
# Models view's entry included, from ``GET /api/v2/plugins``, which needs it (docs/ui.md).
VIEWER_PERMISSIONS: frozenset[Permission] = frozenset(
    {
        (READ, "Plugins"),
        (READ, DAGS),
        (READ, "DAG Dependencies"),
        (READ, "DAG Code"),
        (READ, DAG_RUNS),
        (READ, "DAG Versions"),
        (READ, "DAG Warnings"),
        (READ, "Assets"),
        (READ, "Asset Aliases"),
        (READ, "Backfills"),
        (READ, "Cluster Activity"),
        (READ, "Pools"),
        (READ, "ImportError"),
        (READ, "Jobs"),
        (READ, "My Password"),
        (EDIT, "My Password"),
        (READ, "My Profile"),
        (EDIT, "My Profile"),
        (READ, "SLA Misses"),
        (READ, TASK_INSTANCES),
        (READ, "Task Logs"),
        (READ, "XComs"),
        (READ, HITL_DETAIL),
        (READ, "Website"),
        (MENU, "Browse"),
        (MENU, DAGS),
        (MENU, "DAG Dependencies"),
        (MENU, DAG_RUNS),
        (MENU, "Assets"),
        (MENU, "Cluster Activity"),
        (MENU, "Documentation"),
        (MENU, "Docs"),
        (MENU, "Jobs"),
        (MENU, "SLA Misses"),
        (MENU, TASK_INSTANCES),
    }
)

# Writes inside DAGs. Each one is gated by ``can_edit`` on the DAG itself, which only the
# project roles grant, so these never reach another project's DAGs. Deliberately absent:
# ``can_edit``/``can_delete`` on ``DAGs`` (that would open every DAG), Backfills and Asset
# creation (not DAG-scoped the same way), connections, variables, pools, users, roles.
DATA_SCIENTIST_PERMISSIONS: frozenset[Permission] = VIEWER_PERMISSIONS | {
    (CREATE, DAG_RUNS),
    (EDIT, DAG_RUNS),
    (DELETE, DAG_RUNS),
    (CREATE, TASK_INSTANCES),
    (EDIT, TASK_INSTANCES),
    (DELETE, TASK_INSTANCES),
    (EDIT, HITL_DETAIL),
    (MENU, HITL_DETAIL),
}

# What the Admin role must hold at least. FAB's own Admin sync grants every permission that
# exists; this explicit list is what the matrix and the tests reason with.
ADMIN_PERMISSIONS: frozenset[Permission] = DATA_SCIENTIST_PERMISSIONS | {
    (EDIT, DAGS),
    (DELETE, DAGS),
    (CREATE, "Backfills"),
    (EDIT, "Backfills"),
    (DELETE, "Backfills"),
    (CREATE, "Assets"),
    (READ, "Audit Logs"),
    (READ, "All Audit Logs"),
    (READ, "Configurations"),
    (CREATE, "Connections"),
    (READ, "Connections"),
    (EDIT, "Connections"),
    (DELETE, "Connections"),
    (CREATE, "Variables"),
    (READ, "Variables"),
    (EDIT, "Variables"),
    (DELETE, "Variables"),
    (CREATE, "Pools"),
    (EDIT, "Pools"),
    (DELETE, "Pools"),
    (READ, "Providers"),
    (CREATE, USERS),
    (READ, USERS),
    (EDIT, USERS),
    (DELETE, USERS),
    (READ, ROLES),
    (EDIT, ROLES),
    (CREATE, ROLES),
    (DELETE, ROLES),
}

# What a project role grants on each DAG of its project (the ``access_control`` value).
PROJECT_DAG_ACCESS: dict[str, frozenset[str]] = {DAGS: frozenset({READ, EDIT})}


@dataclass(frozen=True)
class RoleSpec:
    """A platform role: its Airflow name, what it is for, and its global permissions."""

    name: str
    description: str
    permissions: frozenset[Permission]
    fab_builtin: bool


ADMIN = RoleSpec(
    "Admin", "Everything, including users, roles and connections.", ADMIN_PERMISSIONS, True
)
DATA_SCIENTIST = RoleSpec(
    "DataScientist",
    "Reads every DAG; triggers, clears, pauses and approves in the projects they belong to.",
    DATA_SCIENTIST_PERMISSIONS,
    False,
)
VIEWER = RoleSpec(
    "Viewer", "Read-only: DAGs, runs, logs, assets, approvals.", VIEWER_PERMISSIONS, True
)
BUILTIN_ROLES: dict[str, RoleSpec] = {role.name: role for role in (ADMIN, DATA_SCIENTIST, VIEWER)}
# Only these roles can hold project memberships: a Viewer member would get can_edit on the
# project's DAGs (pause) without the run permissions, a half-role nobody asked for.
MEMBER_ROLES = frozenset({ADMIN.name, DATA_SCIENTIST.name})


def check_project_name(project: str) -> str:
    """Return ``project`` when it is a valid project name, else raise naming the rule."""
    if not _PROJECT_NAME.match(project):
        raise SecurityError(
            f"invalid project name {project!r}: use lower-case letters, digits, '_' or '-', "
            "starting with a letter, at most 63 characters"
        )
    return project


def project_role(project: str) -> str:
    """Return the Airflow role of ``project`` (``project:churn`` for ``churn``)."""
    return f"{PROJECT_ROLE_PREFIX}{check_project_name(project)}"


def project_of_role(role: str) -> str | None:
    """Return the project of a project role name, or None for any other role."""
    if role.startswith(PROJECT_ROLE_PREFIX):
        return role[len(PROJECT_ROLE_PREFIX) :]
    return None


def project_access_control(project: str) -> dict[str, dict[str, set[str]]]:
    """Return the ``access_control`` every DAG of ``project`` must carry.

    The compiler passes this to ``DAG(access_control=...)``; when the DAG is serialized,
    Airflow grants these DAG-level permissions to the project role (which must already exist:
    ``mlwp roles sync`` creates it).
    """
    return {project_role(project): {res: set(acts) for res, acts in PROJECT_DAG_ACCESS.items()}}


def dag_project(dag_id: str) -> str:
    """Return the project of a generated dag_id (``churn.train`` -> ``churn``)."""
    project, dot, workflow = dag_id.partition(".")
    if not dot or not project or not workflow:
        raise SecurityError(f"dag_id {dag_id!r} is not '<project>.<workflow>'")
    return project


def user_permissions(
    roles: Iterable[str], dag_projects: Mapping[str, str]
) -> frozenset[Permission]:
    """Return every permission a user with ``roles`` holds, given each DAG's project.

    ``dag_projects`` maps dag_id -> project for the DAGs that carry the project's
    ``access_control``; project roles among ``roles`` contribute their DAG-level permissions.
    Unknown non-project roles are an error, so a typo never silently grants nothing.
    """
    perms: set[Permission] = set()
    projects: set[str] = set()
    for role in roles:
        project = project_of_role(role)
        if project is not None:
            projects.add(project)
        elif role in BUILTIN_ROLES:
            perms |= BUILTIN_ROLES[role].permissions
        else:
            raise SecurityError(f"unknown role {role!r}; known: {sorted(BUILTIN_ROLES)}")
    for dag_id, project in dag_projects.items():
        if project in projects:
            for resource, actions in PROJECT_DAG_ACCESS.items():
                prefix = DAG_PREFIX if resource == DAGS else DAG_RUN_PREFIX
                perms |= {(action, f"{prefix}{dag_id}") for action in actions}
    return frozenset(perms)


class Target(StrEnum):
    """What an action is aimed at, relative to the acting user."""

    OWN = "own"  # a DAG of a project the member DataScientist belongs to
    OTHER = "other"  # a DAG of another project
    NONE = "none"  # not about a DAG


@dataclass(frozen=True)
class PlatformAction:
    """One thing a user does through the UI or REST API, and what Airflow checks for it.

    ``entity`` are the global sub-resource permissions Airflow requires; ``dag_method`` is the
    method checked on the DAG itself (None when the action is not about a DAG).
    """

    name: str
    title: str
    target: Target
    entity: tuple[Permission, ...]
    dag_method: Method | None


ACTIONS: tuple[PlatformAction, ...] = (
    PlatformAction("view_dag", "View a DAG of the project", Target.OWN, (), "GET"),
    PlatformAction(
        "trigger_dag", "Trigger a DAG of the project", Target.OWN, ((CREATE, DAG_RUNS),), "PUT"
    ),
    PlatformAction("pause_dag", "Pause or edit a DAG of the project", Target.OWN, (), "PUT"),
    PlatformAction(
        "clear_tasks",
        "Clear task instances of the project",
        Target.OWN,
        ((EDIT, DAG_RUNS), (EDIT, TASK_INSTANCES)),
        "PUT",
    ),
    PlatformAction(
        "view_approval",
        "View an approval (HITL) of the project",
        Target.OWN,
        ((READ, HITL_DETAIL),),
        "GET",
    ),
    PlatformAction(
        "answer_approval",
        "Answer an approval (HITL) of the project",
        Target.OWN,
        ((EDIT, HITL_DETAIL),),
        "PUT",
    ),
    PlatformAction("view_other_dag", "View another project's DAG", Target.OTHER, (), "GET"),
    PlatformAction(
        "trigger_other_dag",
        "Trigger another project's DAG",
        Target.OTHER,
        ((CREATE, DAG_RUNS),),
        "PUT",
    ),
    PlatformAction("pause_other_dag", "Pause another project's DAG", Target.OTHER, (), "PUT"),
    # The Models view's promote, roll back and traffic actions: allowed to whoever may edit a
    # DAG of the model's project, i.e. Admins and the project's DataScientist members.
    PlatformAction(
        "change_model",
        "Promote, roll back or set the traffic of the project's model",
        Target.OWN,
        (),
        "PUT",
    ),
    PlatformAction(
        "change_other_model",
        "Promote or set the traffic of another project's model",
        Target.OTHER,
        (),
        "PUT",
    ),
    PlatformAction("manage_users", "List and manage users", Target.NONE, ((READ, USERS),), None),
)
ACTIONS_BY_NAME: dict[str, PlatformAction] = {action.name: action for action in ACTIONS}


def is_allowed(perms: frozenset[Permission], action: PlatformAction, dag_id: str | None) -> bool:
    """Decide ``action`` on ``dag_id`` the way FAB's auth manager does for these permissions."""
    for fab_action, resource in action.entity:
        per_dag_run = (
            dag_id is not None
            and resource == DAG_RUNS
            and (fab_action, f"{DAG_RUN_PREFIX}{dag_id}") in perms
        )
        if (fab_action, resource) not in perms and not per_dag_run:
            return False
    if action.dag_method is None:
        return True
    if dag_id is None:
        raise SecurityError(f"action {action.name!r} is about a DAG: give its dag_id")
    fab_action = METHOD_ACTION[action.dag_method]
    return (fab_action, DAGS) in perms or (fab_action, f"{DAG_PREFIX}{dag_id}") in perms


class ActorKind(StrEnum):
    """The columns of the role-by-action matrix."""

    ADMIN = "Admin"
    MEMBER = "DataScientist (member)"
    NON_MEMBER = "DataScientist (not a member)"
    VIEWER = "Viewer"
    ANONYMOUS = "anonymous"


# The sample the matrix is computed on: the member belongs to OWN_PROJECT only, the
# non-member to no project; OWN_DAG is the member's project, OTHER_DAG belongs to nobody here.
OWN_PROJECT, OTHER_PROJECT = "churn", "fraud"
OWN_DAG, OTHER_DAG = f"{OWN_PROJECT}.train", f"{OTHER_PROJECT}.train"
ACTOR_ROLES: dict[ActorKind, tuple[str, ...]] = {
    ActorKind.ADMIN: (ADMIN.name,),
    ActorKind.MEMBER: (DATA_SCIENTIST.name, f"{PROJECT_ROLE_PREFIX}{OWN_PROJECT}"),
    ActorKind.NON_MEMBER: (DATA_SCIENTIST.name,),
    ActorKind.VIEWER: (VIEWER.name,),
    ActorKind.ANONYMOUS: (),
}


def target_dag(action: PlatformAction) -> str | None:
    """Return the sample dag_id an action of the matrix is aimed at (None: not about a DAG)."""
    return {Target.OWN: OWN_DAG, Target.OTHER: OTHER_DAG, Target.NONE: None}[action.target]


def expected_matrix() -> dict[tuple[str, ActorKind], bool]:
    """Return whether each actor may perform each action, computed from the table above.

    Anonymous users hold no permission at all (no public role is configured), so every cell of
    that column is False; the API answers them 401 rather than 403.
    """
    dag_projects = {OWN_DAG: OWN_PROJECT, OTHER_DAG: OTHER_PROJECT}
    matrix: dict[tuple[str, ActorKind], bool] = {}
    for actor, roles in ACTOR_ROLES.items():
        perms = user_permissions(roles, dag_projects)
        for action in ACTIONS:
            matrix[(action.name, actor)] = is_allowed(perms, action, target_dag(action))
    return matrix


def render_matrix_markdown() -> str:
    """Return the role-by-action matrix as a Markdown table (published in docs/security.md)."""
    matrix = expected_matrix()
    actors = list(ActorKind)
    lines = [
        "| action | " + " | ".join(actor.value for actor in actors) + " |",
        "| --- | " + " | ".join("---" for _ in actors) + " |",
    ]
    for action in ACTIONS:
        cells = ["yes" if matrix[(action.name, actor)] else "no" for actor in actors]
        lines.append(f"| {action.title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
