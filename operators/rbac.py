"""Role sync and user management against Airflow's FAB tables (runs under the Airflow config).

``mlwp roles sync`` and ``mlwp users ...`` run ``python -m operators.rbac <command>`` with the
platform's generated Airflow environment and a JSON request on stdin (so passwords never appear
in a process list); the answer is one JSON document on stdout. Errors exit with status 2 and
``{"error": {"code", "message"}}``.

The permission sets come from :mod:`mlwp.security.roles`; this module only writes them.
Syncing is idempotent: a second run changes nothing and reports nothing changed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlwp.security.roles import (
    ADMIN,
    BUILTIN_ROLES,
    DAG_PREFIX,
    DAG_RUN_PREFIX,
    MEMBER_ROLES,
    MIN_PASSWORD_LENGTH,
    PROJECT_ROLE_PREFIX,
    PROJECT_ROLES_VARIABLE,
    SecurityError,
    check_project_name,
    project_of_role,
    project_role,
)


@contextmanager
def _app_builder() -> Iterator[Any]:
    """Yield FAB's application builder bound to the metadata database of this environment."""
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        yield appbuilder


@contextmanager
def _security_manager() -> Iterator[Any]:
    """Yield FAB's security manager bound to the metadata database of this environment."""
    with _app_builder() as appbuilder:
        yield appbuilder.sm


def _is_dag_level(resource: str) -> bool:
    # DAG-level permissions belong to access_control (synced from each DAG); never touch them.
    return resource.startswith((DAG_PREFIX, DAG_RUN_PREFIX))


def _ensure_role(sm: Any, name: str, report: dict[str, list[str]]) -> Any:
    role = sm.find_role(name)
    if role is None:
        role = sm.add_role(name)
        report["created_roles"].append(name)
    return role


def _sync_role_permissions(
    sm: Any,
    name: str,
    wanted: frozenset[tuple[str, str]],
    exact: bool,
    report: dict[str, list[str]],
) -> None:
    role = _ensure_role(sm, name, report)
    have = {
        (p.action.name, p.resource.name): p for p in role.permissions if p.action and p.resource
    }
    for action, resource in sorted(wanted - have.keys()):
        perm = sm.get_permission(action, resource) or sm.create_permission(action, resource)
        sm.add_permission_to_role(role, perm)
        report["added"].append(f"{name}: {action} on {resource}")
    if exact:
        for key in sorted(have.keys() - wanted):
            if not _is_dag_level(key[1]):
                sm.remove_permission_from_role(role, have[key])
                report["removed"].append(f"{name}: {key[0]} on {key[1]}")


def _role_names(user: Any) -> list[str]:
    return sorted(role.name for role in user.roles)


def _grant(sm: Any, user: Any, project: str, report: dict[str, list[str]]) -> None:
    roles = _role_names(user)
    if not MEMBER_ROLES & set(roles):
        raise SecurityError(
            f"user {user.username!r} has roles {roles}: project membership needs one of "
            f"{sorted(MEMBER_ROLES)} (a Viewer member would get edit rights without run rights)"
        )
    name = project_role(project)
    role = _ensure_role(sm, name, report)
    if role not in user.roles:
        user.roles.append(role)
        sm.update_user(user)
        report["memberships"].append(f"{user.username} +{name}")


def sync(request: dict[str, Any]) -> dict[str, Any]:
    """Write the platform roles and the project roles; add definition owners and members.

    ``request["projects"]`` maps project -> {"owner": user or None, "members": [users],
    "pools": {name: {"slots", "description"}}}. Users named by a definition but not existing
    yet are reported, not created. Declared pools that do not exist are created.
    """
    report: dict[str, list[str]] = {
        "created_roles": [],
        "added": [],
        "removed": [],
        "memberships": [],
        "created_pools": [],
        "warnings": [],
    }
    projects: dict[str, dict[str, Any]] = request.get("projects", {})
    for project, declared in sorted(projects.items()):
        for name, spec in sorted((declared.get("pools") or {}).items()):
            _ensure_pool(project, name, spec, report)
    with _app_builder() as appbuilder:
        # FAB's own sync first, as `airflow sync-perm` does it: its views' permissions and
        # its default roles. `mlwp up` runs this before anything else writes the FAB tables
        # and starts the api-server with [fab] update_fab_perms off: concurrent syncs collide
        # on the tables' unique constraints.
        appbuilder.add_permissions(update_perms=True)
        sm = appbuilder.sm
        sm.sync_roles()
        for spec in BUILTIN_ROLES.values():
            # Admin keeps whatever else FAB grants it (FAB gives Admin every permission).
            _sync_role_permissions(sm, spec.name, spec.permissions, spec is not ADMIN, report)
        for project in sorted(projects):
            _ensure_role(sm, project_role(project), report)
        for project, people in sorted(projects.items()):
            names = [people.get("owner"), *people.get("members", [])]
            for username in dict.fromkeys(n for n in names if n):
                user = sm.find_user(username=username)
                if user is None:
                    report["warnings"].append(
                        f"project {project!r}: user {username!r} does not exist yet; "
                        f"add it with `mlwp users add {username} --project {project}`"
                    )
                    continue
                try:
                    _grant(sm, user, project, report)
                except SecurityError as exc:
                    report["warnings"].append(f"project {project!r}: {exc.message}")
        known = {role.name for role in sm.get_all_roles()}
    report["project_roles"] = sorted(r for r in known if r.startswith(PROJECT_ROLE_PREFIX))
    _publish_project_roles(report["project_roles"])
    return report


def _ensure_pool(
    project: str, name: str, spec: dict[str, Any], report: dict[str, list[str]]
) -> None:
    """Create a pool a definition declares, once; an existing pool is never resized.

    Pools are shared by every project and admins size them in Airflow (Admin > Pools): the
    definition's ``slots`` are the initial size, and a difference is reported, not applied.
    """
    from airflow.models.pool import Pool

    slots = int(spec["slots"])
    existing = Pool.get_pool(name)
    if existing is None:
        Pool.create_or_update_pool(
            name, slots, spec.get("description") or f"declared by project {project}", False
        )
        report["created_pools"].append(f"{name} ({slots} slots, declared by project {project})")
    elif existing.slots != slots:
        report["warnings"].append(
            f"pool {name!r} has {existing.slots} slots in Airflow, project {project!r} declares "
            f"{slots}; resize it in Airflow (Admin > Pools) if that is meant"
        )


def _publish_project_roles(roles: list[str]) -> None:
    """Tell the DAG loader which project roles exist (``PROJECT_ROLES_VARIABLE``)."""
    from airflow.models.variable import Variable

    current = Variable.get(PROJECT_ROLES_VARIABLE, default_var=None, deserialize_json=True)
    if current != roles:
        Variable.set(
            PROJECT_ROLES_VARIABLE,
            roles,
            description="Project roles that exist; written by `mlwp roles sync`, read by the "
            "DAG loader (a project's DAGs name their role in access_control once it exists).",
            serialize_json=True,
        )


def _user_view(user: Any) -> dict[str, Any]:
    roles = _role_names(user)
    return {
        "username": user.username,
        "email": user.email,
        "active": bool(user.active),
        "roles": [r for r in roles if project_of_role(r) is None],
        "projects": sorted(p for r in roles if (p := project_of_role(r)) is not None),
    }


def user_add(request: dict[str, Any]) -> dict[str, Any]:
    """Create a user with a platform role and project memberships."""
    username = request["username"]
    role_name = request["role"]
    if role_name not in BUILTIN_ROLES:
        raise SecurityError(f"role {role_name!r} is not one of {sorted(BUILTIN_ROLES)}")
    projects = [check_project_name(p) for p in request.get("projects", [])]
    if projects and role_name not in MEMBER_ROLES:
        raise SecurityError(
            f"--project needs role {' or '.join(sorted(MEMBER_ROLES))}, not {role_name!r}"
        )
    if len(request.get("password") or "") < MIN_PASSWORD_LENGTH:
        raise SecurityError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    report: dict[str, list[str]] = {"created_roles": [], "memberships": []}
    with _security_manager() as sm:
        if sm.find_user(username=username) is not None:
            raise SecurityError(f"user {username!r} already exists", code="user_exists")
        role = sm.find_role(role_name)
        if role is None:
            raise SecurityError(f"role {role_name!r} does not exist yet: run `mlwp roles sync`")
        user = sm.add_user(
            username,
            request.get("first_name") or username,
            request.get("last_name") or "-",
            request["email"],
            role,
            request["password"],
        )
        for project in projects:
            _grant(sm, user, project, report)
        return {"user": _user_view(user), **report}


def user_remove(request: dict[str, Any]) -> dict[str, Any]:
    """Delete a user (its memberships go with it)."""
    username = request["username"]
    with _security_manager() as sm:
        user = sm.find_user(username=username)
        if user is None:
            raise SecurityError(f"user {username!r} does not exist", code="user_not_found")
        view = _user_view(user)
        user.roles.clear()
        if not sm.del_register_user(user):
            raise SecurityError(f"user {username!r} could not be deleted")
        return {"user": view}


def user_list(request: dict[str, Any]) -> dict[str, Any]:
    """List users with their platform roles and projects, optionally of one project."""
    project = request.get("project")
    with _security_manager() as sm:
        users = [_user_view(user) for user in sm.get_all_users()]
    if project:
        users = [u for u in users if project in u["projects"]]
    return {"users": sorted(users, key=lambda u: u["username"])}


def membership(request: dict[str, Any]) -> dict[str, Any]:
    """Add (``grant: true``) or remove a user's membership of a project."""
    username, project = request["username"], check_project_name(request["project"])
    report: dict[str, list[str]] = {"created_roles": [], "memberships": []}
    with _security_manager() as sm:
        user = sm.find_user(username=username)
        if user is None:
            raise SecurityError(f"user {username!r} does not exist", code="user_not_found")
        if request.get("grant", True):
            _grant(sm, user, project, report)
        else:
            name = project_role(project)
            if name in _role_names(user):
                user.roles = [r for r in user.roles if r.name != name]
                sm.update_user(user)
                report["memberships"].append(f"{username} -{name}")
        return {"user": _user_view(user), **report}


def roles_show(request: dict[str, Any]) -> dict[str, Any]:
    """Return each role's permissions as ``[action, resource]`` pairs (all roles, or the named)."""
    wanted = set(request.get("roles") or [])
    with _security_manager() as sm:
        return {
            "roles": {
                role.name: sorted(
                    [p.action.name, p.resource.name]
                    for p in role.permissions
                    if p.action and p.resource
                )
                for role in sm.get_all_roles()
                if not wanted or role.name in wanted
            }
        }


def people(request: dict[str, Any]) -> dict[str, Any]:
    """For ``mlwp validate``: which named users exist (with their roles) and which roles do."""
    names = [str(name) for name in request.get("users", [])]
    with _security_manager() as sm:
        users = {}
        for name in names:
            user = sm.find_user(username=name)
            users[name] = None if user is None else _role_names(user)
        roles = sorted(role.name for role in sm.get_all_roles())
    return {"users": users, "roles": roles}


COMMANDS = {
    "people": people,
    "roles_show": roles_show,
    "sync": sync,
    "user_add": user_add,
    "user_remove": user_remove,
    "user_list": user_list,
    "membership": membership,
}


def main(argv: list[str]) -> int:
    """Run one command with the JSON request on stdin; print the JSON answer on stdout."""
    if len(argv) != 1 or argv[0] not in COMMANDS:
        print(json.dumps({"error": {"code": "usage", "message": f"commands: {sorted(COMMANDS)}"}}))
        return 2
    try:
        request = json.loads(sys.stdin.read() or "{}")
        result = COMMANDS[argv[0]](request)
    except SecurityError as exc:
        print(json.dumps({"error": {"code": exc.code, "message": exc.message}}))
        return 2
    except (KeyError, json.JSONDecodeError) as exc:
        message = f"bad request for {argv[0]}: {exc}"
        print(json.dumps({"error": {"code": "bad_request", "message": message}}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
