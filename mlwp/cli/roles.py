"""``mlwp roles``: sync the platform roles into Airflow, print the role-by-action matrix."""

from __future__ import annotations

import getpass
import os
import subprocess
import time
from typing import Annotated, Any

import orjson
import typer

app = typer.Typer(help="Airflow roles: Admin, DataScientist, Viewer, project:<project>.")


def current_actor() -> str:
    """Return who is acting, for the audit trail (``MLWP_ACTOR`` or the login name)."""
    return os.environ.get("MLWP_ACTOR") or getpass.getuser()


def _sync(extra_projects: list[str]) -> dict[str, Any]:
    """Run one sync of the roles against the definitions; record changes in the audit trail."""
    from mlwp.security.audit import record
    from mlwp.security.client import run_rbac
    from mlwp.security.projects import ProjectMembers, discover_projects
    from mlwp.security.roles import check_project_name
    from mlwp.settings import get_settings

    settings = get_settings()
    projects = discover_projects(settings.dags_folder)
    for name in extra_projects:
        projects.setdefault(check_project_name(name), ProjectMembers(name))
    request = {"projects": {name: p.as_request() for name, p in projects.items()}}
    report = run_rbac("sync", request, settings)
    changes = {
        k: report.get(k, [])
        for k in ("created_roles", "added", "removed", "memberships", "created_pools")
    }
    if any(changes.values()):
        summary = {
            "created_roles": report["created_roles"],
            "memberships": report["memberships"],
            "created_pools": report.get("created_pools", []),
            "permissions_granted": len(report["added"]),
            "permissions_revoked": len(report["removed"]),
        }
        record(current_actor(), "role.sync", "roles", summary)
    return report


def _print_report(report: dict[str, Any], *, prefix: str = "") -> None:
    changed = False
    for key, title in (
        ("created_roles", "created role"),
        ("added", "granted"),
        ("removed", "revoked"),
        ("memberships", "membership"),
        ("created_pools", "created pool"),
        ("warnings", "warning"),
    ):
        for line in report.get(key, []):
            changed = changed or key != "warnings"
            typer.echo(f"{prefix}{title}: {line}")
    if not changed:
        typer.echo(f"{prefix}roles already in sync")


def _watch(extra_projects: list[str], interval: float, resync: float, initial: bool) -> None:
    """Sync again whenever the definitions change (and every ``resync`` seconds); never exit.

    A project added while the platform runs gets its role within ``interval`` plus one sync
    (a few seconds), so the DAG loader names it in access_control at its next parse. A
    failing sync (a database away, a broken YAML file) is printed and retried at the next
    change or resync: the watcher is supervised and must not take the platform down.
    """
    from mlwp.errors import MlwpError
    from mlwp.security.projects import definitions_fingerprint
    from mlwp.settings import get_settings

    folder = get_settings().dags_folder
    last = None if initial else definitions_fingerprint(folder)
    synced_at = time.monotonic()
    typer.echo(f"watching {folder / 'projects'} every {interval:g}s")
    while True:
        current = definitions_fingerprint(folder)
        if current != last or time.monotonic() - synced_at >= resync:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            try:
                _print_report(_sync(extra_projects), prefix=f"{stamp} ")
            except MlwpError as exc:
                typer.echo(f"{stamp} error: {exc.message}", err=True)
            except (subprocess.SubprocessError, OSError) as exc:
                typer.echo(f"{stamp} error: {type(exc).__name__}: {exc}", err=True)
            last, synced_at = current, time.monotonic()
        time.sleep(interval)


@app.command("sync")
def sync_command(
    project: Annotated[
        list[str] | None,
        typer.Option("--project", "-p", help="A project role to create besides those in dags/."),
    ] = None,
    *,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Keep running: sync again whenever a definition changes (`mlwp up` runs it).",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.5, help="--watch: seconds between looks at the definitions.")
    ] = 5.0,
    resync: Annotated[
        float, typer.Option(min=10, help="--watch: sync at least this often (seconds).")
    ] = 600.0,
    initial: Annotated[
        bool, typer.Option(help="--watch: sync at once (--no-initial: only on changes).")
    ] = True,
) -> None:
    """Create or update the roles and their permissions; idempotent."""
    from mlwp.security.roles import SecurityError

    if watch:
        _watch(project or [], interval, resync, initial)
        return
    try:
        report = _sync(project or [])
    except SecurityError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    if json_output:
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    _print_report(report)


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
