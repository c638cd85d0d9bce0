"""``mlwp config``: write the generated configuration files a container deployment needs.

``mlwp up`` writes these itself; docker-compose.yaml and the Helm charts run these commands
in an init step instead, so a container gets the same files from the same code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from mlwp.errors import MlwpError

app = typer.Typer(help="Generated configuration files.", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"mlwp: {message}", err=True)
    return typer.Exit(1)


@app.command("webserver")
def webserver_command(
    output: Annotated[
        Path | None,
        typer.Option(help="Where to write; $AIRFLOW_HOME/webserver_config.py by default."),
    ] = None,
    rate_limit: Annotated[
        str,
        typer.Option(envvar="MLWP_AUTH_RATE_LIMIT", help="FAB login form limit (limits syntax)."),
    ] = "5 per 40 second",
    rate_limit_storage: Annotated[
        str,
        typer.Option(
            envvar="MLWP_AUTH_RATE_LIMIT_STORAGE",
            help="Where the login limit counts: memory:// per process, redis://... shared.",
        ),
    ] = "memory://",
) -> None:
    """Write FAB's webserver_config.py (login, sessions, rate limit) from the settings."""
    from mlwp.platform.secrets import write_private
    from mlwp.platform.webserver_config import webserver_config_text
    from mlwp.settings import get_settings

    target = output or Path(os.environ.get("AIRFLOW_HOME", ".")) / "webserver_config.py"
    try:
        text = webserver_config_text(
            get_settings(), auth_rate_limit=rate_limit, rate_limit_storage_uri=rate_limit_storage
        )
    except MlwpError as exc:
        raise _fail(exc.message) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    write_private(target, text.encode())
    typer.echo(f"wrote {target}")


@app.command("mlflow-auth")
def mlflow_auth_command(
    output: Annotated[Path, typer.Option(help="Where to write basic_auth.ini.")],
    database_uri: Annotated[
        str,
        typer.Option(
            envvar="MLWP_MLFLOW_AUTH_DATABASE_URI",
            help="Database of MLflow's users and permissions (never on the command line in "
            "production: give it through the environment).",
        ),
    ],
    admin_username: Annotated[
        str, typer.Option(envvar="MLFLOW_AUTH_ADMIN_USERNAME", help="MLflow's admin user.")
    ] = "admin",
) -> None:
    """Write the basic_auth.ini of MLflow's basic-auth app (MLFLOW_AUTH_CONFIG_PATH)."""
    from mlwp.security.mlflow_auth import write_basic_auth_config

    try:
        write_basic_auth_config(output, database_uri=database_uri, admin_username=admin_username)
    except MlwpError as exc:
        raise _fail(exc.message) from None
    typer.echo(f"wrote {output}")
