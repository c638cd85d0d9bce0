"""``mlwp roles``: sync the platform roles into Airflow, print the role-by-action matrix."""

from __future__ import annotations

import getpass
import os
from typing import Annotated

import orjson
import typer

app = typer.Typer(help="Airflow roles: Admin, DataScientist, Viewer, project:<project>.")


def current_actor() -> str:
    """Return who is acting, for the audit trail (``MLWP_ACTOR`` or the login name)."""
    return os.environ.get("MLWP_ACTOR") or getpass.getuser()


@app.command("sync")
def sync_command(
    project: Annotated[
        list[str] | None,
        typer.Option("--project", "-p", help="A project role to create besides those in dags/."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Create or update the roles and their permissions; idempotent."""
    from mlwp.audit import record
    from mlwp.security.client import run_rbac
    from mlwp.security.projects import ProjectMembers, discover_projects
    from mlwp.security.roles import SecurityError, check_project_name
    from mlwp.settings import get_settings

    settings = get_settings()
    try:
        projects = discover_projects(settings.dags_folder)
        for name in project or []:
            projects.setdefault(check_project_name(name), ProjectMembers(name))
        request = {"projects": {name: p.as_request() for name, p in projects.items()}}
        report = run_rbac("sync", request, settings)
    except SecurityError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    changes = {k: report[k] for k in ("created_roles", "added", "removed", "memberships")}
    if any(changes.values()):
        summary = {
            "created_roles": report["created_roles"],
            "memberships": report["memberships"],
            "permissions_granted": len(report["added"]),
            "permissions_revoked": len(report["removed"]),
        }
        record(current_actor(), "role.sync", "roles", summary)
    if json_output:
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    for key, title in (
        ("created_roles", "created role"),
        ("added", "granted"),
        ("removed", "revoked"),
        ("memberships", "membership"),
        ("warnings", "warning"),
    ):
        for line in report[key]:
            typer.echo(f"{title}: {line}")
    if not any(changes.values()):
        typer.echo("roles already in sync")


@app.command("matrix")
def matrix_command(
    markdown: Annotated[bool, typer.Option("--markdown", help="Markdown table.")] = True,
) -> None:
    """Print the role-by-action matrix computed from the permission table."""
    from mlwp.security.roles import ACTIONS, ActorKind, expected_matrix, render_matrix_markdown

    if markdown:
        typer.echo(render_matrix_markdown(), nl=False)
        return
    matrix = expected_matrix()
    for action in ACTIONS:
        allowed = [actor.value for actor in ActorKind if matrix[(action.name, actor)]]
        typer.echo(f"{action.name}: {', '.join(allowed)}")
