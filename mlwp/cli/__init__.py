"""The ``mlwp`` command line.

Each command group lives in its own module under ``mlwp/cli/`` and is registered here, so
the CLI's layout mirrors the platform's parts. Heavy imports stay inside the commands.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="mlwp",
    help="mlwp: Airflow 3 for machine-learning teams.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _check_settings() -> None:
    """Refuse bad MLWP_* settings before any command runs, with one line per variable."""
    import sys

    from mlwp.errors import ConfigurationError
    from mlwp.settings import get_settings

    try:
        get_settings()
    except ConfigurationError as exc:
        print(f"mlwp: {exc.message}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None


from mlwp.cli import audit as _audit  # noqa: E402

app.add_typer(_audit.app, name="audit")

from mlwp.cli import roles as _roles  # noqa: E402
from mlwp.cli import users as _users  # noqa: E402

app.add_typer(_roles.app, name="roles")
app.add_typer(_users.app, name="users")

from mlwp.cli import definitions as _definitions  # noqa: E402

app.add_typer(_definitions.app)  # top-level commands: validate, schema

from mlwp.cli import platform as _platform  # noqa: E402

app.add_typer(_platform.app)  # top-level commands: up, down, status, airflow

from mlwp.cli import expectations as _expectations  # noqa: E402

app.add_typer(_expectations.app, name="expectations")

from mlwp.cli import models as _models  # noqa: E402

app.add_typer(_models.app, name="models")

from mlwp.cli import keys as _keys  # noqa: E402

app.add_typer(_keys.app, name="keys")

from mlwp.cli import config as _config  # noqa: E402

app.add_typer(_config.app, name="config")

from mlwp.cli import run as _run  # noqa: E402

app.add_typer(_run.app)  # top-level commands: run, predict
