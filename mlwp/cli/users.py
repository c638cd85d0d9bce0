"""``mlwp users``: Airflow (FAB) users with a platform role and project memberships."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Users of the platform (Airflow FAB users).", no_args_is_help=True)


def _run(command: str, request: dict[str, Any]) -> dict[str, Any]:
    from mlwp.security.client import run_rbac
    from mlwp.security.roles import SecurityError
    from mlwp.settings import get_settings

    try:
        return run_rbac(command, request, get_settings())
    except SecurityError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc


def _mlflow_users() -> Any:
    """Return MLflow's user API when MLflow admin credentials are configured, else None.

    With ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` set (the MLflow server runs
    its basic-auth app), platform users are kept in step in MLflow.
    """
    import os

    from mlwp.security.mlflow_auth import MlflowUsers
    from mlwp.settings import get_settings

    username = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not username or not password:
        return None
    return MlflowUsers(get_settings().mlflow_url, username, password)


def _audit(action: str, target: str, details: dict[str, Any]) -> None:
    from mlwp.cli.roles import current_actor
    from mlwp.security.audit import record

    record(current_actor(), action, target, details)


@app.command("add")
def add_command(
    username: Annotated[str, typer.Argument(help="Login name.")],
    *,
    email: Annotated[str, typer.Option(help="E-mail address (unique).")],
    role: Annotated[str, typer.Option(help="Admin, DataScientist or Viewer.")] = "DataScientist",
    project: Annotated[
        list[str] | None, typer.Option("--project", "-p", help="Project to join; repeatable.")
    ] = None,
    first_name: Annotated[str | None, typer.Option(help="Given name.")] = None,
    last_name: Annotated[str | None, typer.Option(help="Family name.")] = None,
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="MLWP_NEW_USER_PASSWORD",
            help="Asked for when not given by MLWP_NEW_USER_PASSWORD (never an argument).",
        ),
    ] = "",
) -> None:
    """Create a user with a role and project memberships."""
    request = {
        "username": username,
        "email": email,
        "role": role,
        "projects": project or [],
        "first_name": first_name,
        "last_name": last_name,
        "password": password,
    }
    answer = _run("user_add", request)
    _audit("user.add", username, {"role": role, "projects": answer["user"]["projects"]})
    mlflow = _mlflow_users()
    if mlflow is not None:
        from mlwp.security.mlflow_auth import MlflowAuthError

        try:
            with mlflow:
                outcome = mlflow.sync_user(username, password, admin=role == "Admin")
        except MlflowAuthError as exc:
            typer.echo(f"error: Airflow user created, MLflow user not: {exc.message}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(f"MLflow user {username!r} {outcome}")
    typer.echo(f"user {username!r} created: role {role}, projects {answer['user']['projects']}")


@app.command("remove")
def remove_command(username: Annotated[str, typer.Argument(help="Login name.")]) -> None:
    """Delete a user."""
    answer = _run("user_remove", {"username": username})
    _audit("user.remove", username, {"roles": answer["user"]["roles"]})
    mlflow = _mlflow_users()
    if mlflow is not None:
        from mlwp.security.mlflow_auth import MlflowAuthError

        try:
            with mlflow:
                mlflow.delete_user(username)
        except MlflowAuthError as exc:
            typer.echo(f"error: Airflow user removed, MLflow user not: {exc.message}", err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"user {username!r} removed")


@app.command("grant")
def grant_command(
    username: Annotated[str, typer.Argument(help="Login name.")],
    project: Annotated[str, typer.Argument(help="Project to join.")],
) -> None:
    """Make a DataScientist (or Admin) a member of a project."""
    answer = _run("membership", {"username": username, "project": project, "grant": True})
    _audit("user.grant", username, {"project": project})
    typer.echo(f"{username}: projects {answer['user']['projects']}")


@app.command("revoke")
def revoke_command(
    username: Annotated[str, typer.Argument(help="Login name.")],
    project: Annotated[str, typer.Argument(help="Project to leave.")],
) -> None:
    """Remove a user's membership of a project."""
    answer = _run("membership", {"username": username, "project": project, "grant": False})
    _audit("user.revoke", username, {"project": project})
    typer.echo(f"{username}: projects {answer['user']['projects']}")


@app.command("list")
def list_command(
    project: Annotated[str | None, typer.Option(help="Only members of this project.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List users with their roles and projects."""
    users = _run("user_list", {"project": project})["users"]
    if json_output:
        typer.echo(orjson.dumps(users, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("username", "email", "roles", "projects", "active")
    for user in users:
        table.add_row(
            user["username"],
            user["email"],
            ", ".join(user["roles"]),
            ", ".join(user["projects"]),
            "yes" if user["active"] else "no",
        )
    Console().print(table)
