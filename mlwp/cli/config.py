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
) -> None:
    """Write FAB's webserver_config.py (login, sessions, rate limit) from the settings.

    The login limit counts where MLWP_AUTH_RATE_LIMIT_STORAGE says (MLWP_REDIS_URL by default).
    """
    from mlwp.platform.secrets import write_private
    from mlwp.platform.webserver_config import webserver_config_text
    from mlwp.settings import get_settings

    target = output or Path(os.environ.get("AIRFLOW_HOME", ".")) / "webserver_config.py"
    try:
        text = webserver_config_text(get_settings(), auth_rate_limit=rate_limit)
    except MlwpError as exc:
        raise _fail(exc.message) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    write_private(target, text.encode())
    typer.echo(f"wrote {target}")


@app.command("pod-template")
def pod_template_command(
    output: Annotated[
        Path | None,
        typer.Option(
            help="Where to write; '-' prints it. Default: the [kubernetes_executor] "
            "pod_template_file mlwp configures ($AIRFLOW_HOME under MLWP_HOME/airflow)."
        ),
    ] = None,
) -> None:
    """Write the KubernetesExecutor's task pod template (YAML) from the settings.

    The same file `mlwp up` writes with KubernetesExecutor, for the official chart's
    `podTemplate` value or a ConfigMap. It holds no secret: secret variables are references
    to the keys of MLWP_KUBERNETES_SECRET.
    """
    from mlwp.platform.airflow_config import POD_TEMPLATE_NAME
    from mlwp.platform.kubernetes import pod_template_yaml
    from mlwp.platform.secrets import write_private
    from mlwp.settings import get_settings

    try:
        settings = get_settings()
        text = pod_template_yaml(settings)
    except MlwpError as exc:
        raise _fail(exc.message) from None
    if output is not None and str(output) == "-":
        typer.echo(text, nl=False)
        return
    target = output or settings.airflow_home / POD_TEMPLATE_NAME
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


@app.command("serving-entity-fields")
def serving_entity_fields_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Definition files or folders; the DAG folder's projects/ by default."),
    ] = None,
) -> None:
    """Print serving's MLWP_SERVING_ENTITY_FIELDS (JSON) as the definitions' labels tasks
    declare each model's entity key; exit 1 when definitions disagree or do not load.

    `mlwp up` passes it to serving itself; for the Helm chart:
    helm ... --set-json "serving.entityFields=$(mlwp config serving-entity-fields)".
    """
    import json

    from mlwp.definitions.entity_keys import serving_entity_fields
    from mlwp.definitions.loading import find_definitions
    from mlwp.settings import get_settings

    targets = paths or [get_settings().dags_folder / "projects"]
    fields, problems = serving_entity_fields(find_definitions(targets))
    typer.echo(json.dumps(fields, sort_keys=True))
    for problem in problems:
        typer.echo(f"mlwp: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
