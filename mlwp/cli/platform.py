"""``mlwp up``, ``mlwp down``, ``mlwp status``, ``mlwp worker`` and ``mlwp airflow ...``."""

from __future__ import annotations

import os
import sys

import orjson
import typer

from mlwp.errors import MlwpError
from mlwp.settings import get_settings

app = typer.Typer(no_args_is_help=True)


def _say(line: str) -> None:
    print(line, flush=True)


def _fail(message: str) -> typer.Exit:
    print(f"mlwp: {message}", file=sys.stderr, flush=True)
    return typer.Exit(1)


@app.command()
def up() -> None:
    """Run Airflow (FAB login), MLflow and serving in the foreground until Ctrl-C."""
    from mlwp.platform.launcher import run_up

    try:
        result = run_up(get_settings(), _say)
    except MlwpError as exc:
        raise _fail(exc.message) from None
    if result.exit_code != 0:
        raise _fail(result.message or "stopped after a fault")
    _say(f"mlwp: {result.message or 'stopped'}")


@app.command()
def down(
    timeout: float = typer.Option(90.0, help="Seconds to wait for everything to stop."),
) -> None:
    """Stop the platform started by `mlwp up` (from any terminal)."""
    from mlwp.platform.launcher import run_down

    try:
        result = run_down(get_settings(), timeout=timeout)
    except MlwpError as exc:
        raise _fail(exc.message) from None
    _say(result.message)


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Show which platform processes are up and where they answer; exit 1 when not running."""
    from mlwp.platform.launcher import platform_status

    settings = get_settings()
    try:
        report = platform_status(settings)
    except MlwpError as exc:
        raise _fail(exc.message) from None
    if as_json:
        payload = {
            "running": report.running,
            "home": str(settings.home),
            "urls": report.state.urls if report.state else {},
            "status": report.state.status if report.state else None,
            "processes": [vars(proc) for proc in report.processes],
        }
        _say(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
    elif not report.running or report.state is None:
        _say(f"mlwp is not running (home {settings.home})")
    else:
        from rich.console import Console
        from rich.table import Table

        state = report.state
        table = Table(title=f"mlwp {state.status} (supervisor pid {state.supervisor_pid})")
        for column in ("process", "pid", "health", "url"):
            table.add_column(column)
        for proc in report.processes:
            table.add_row(proc.name, str(proc.pid), proc.health, proc.url or "")
        console = Console()
        console.print(table)
        console.print(f"login: see {settings.credentials_file}; logs: {settings.logs_dir}")
    if not report.running or not all(proc.alive for proc in report.processes):
        raise typer.Exit(1)


@app.command()
def worker(
    name: str = typer.Option(
        "worker",
        help="Celery node name; '@<this host>' is appended unless it has an '@'. Unique per "
        "broker.",
    ),
    queues: str | None = typer.Option(
        None, help="Comma-separated queues to consume (default: MLWP_CELERY_QUEUES)."
    ),
    concurrency: int | None = typer.Option(
        None, min=1, help="Tasks run at once (default: MLWP_CELERY_WORKER_CONCURRENCY)."
    ),
    serve_logs: bool = typer.Option(
        False,
        "--serve-logs/--skip-serve-logs",
        help="Serve this host's task logs to the api-server (Airflow's log server, "
        "[logging] worker_log_server_port); not needed with remote logging.",
    ),
) -> None:
    """Run one Celery worker in the foreground with the platform's configuration.

    For a worker on another host or with another MLWP_HOME: it reads the same MLWP_*
    settings (executor, database, broker, api-server address) and needs nothing from the
    scheduler's home. `mlwp up` starts MLWP_CELERY_WORKERS of these itself.
    """
    from mlwp.platform.executors import ExecutorKind
    from mlwp.platform.processes import (
        celery_node_name,
        celery_worker_argv,
        child_environment,
    )

    settings = get_settings()
    if not settings.configured_executors.uses(ExecutorKind.CELERY):
        raise _fail(
            f"MLWP_EXECUTOR={settings.executor} has no CeleryExecutor; a Celery worker would "
            "receive nothing"
        )
    queue_list = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    node = name if "@" in name else celery_node_name(name)
    try:
        env = child_environment(settings)
        argv = celery_worker_argv(
            settings, node, queues=queue_list, concurrency=concurrency, serve_logs=serve_logs
        )
    except MlwpError as exc:
        raise _fail(exc.message) from None
    # Replace this process, so signals (warm shutdown on SIGTERM) reach the worker itself.
    os.execve(argv[0], argv, env)  # noqa: S606


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def airflow(ctx: typer.Context) -> None:
    """Run the airflow CLI with the platform's configuration (e.g. `mlwp airflow dags list`)."""
    from mlwp.platform.processes import child_environment, executable

    try:
        program = executable("airflow")
        env = child_environment(get_settings())
    except MlwpError as exc:
        raise _fail(exc.message) from None
    # Replace this process, so exit codes, signals and the terminal belong to airflow.
    os.execve(program, [program, *ctx.args], env)  # noqa: S606
