"""``mlwp models``: registered models, promotion, rollback and traffic, for people.

Talks to the MLflow tracking server named by ``MLFLOW_TRACKING_URI`` (default: the platform's
``MLWP_MLFLOW_TRACKING_URI`` or the embedded server). Every change is recorded in the audit
trail.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from mlwp.errors import MlwpError

ReasonOption = Annotated[
    str | None, typer.Option("--reason", help="Why; recorded in the audit trail.")
]

# how long a change waits for serving to show it (the Models view waits as long)
RELOAD_SECONDS = 20.0

app = typer.Typer(
    help="Registered models: list, promote, rollback, traffic, history.", no_args_is_help=True
)


def _connect() -> None:
    import mlflow

    from mlwp.settings import get_settings

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or get_settings().mlflow_url)


def _require_model(name: str) -> None:
    """Refuse a name the registry does not hold before anything is read or changed: MLflow's
    own "not found" is a raw MlflowException, which ended promote, rollback and traffic with
    a traceback instead of an error line."""
    from mlwp import registry

    if not registry.registered_model_exists(name):
        raise registry.RegistryError(f"no registered model named {name!r} (see `mlwp models list`)")


def _actor() -> str:
    from mlwp.cli.roles import current_actor

    return current_actor()


def _reload_serving(name: str, state: dict[str, Any]) -> dict[str, Any]:
    """Ask serving to load the change now, as the deploy task and the Models view do, and
    say what it answered; without this serving kept the old version until its next poll
    (MLWP_SERVING_POLL_INTERVAL_SECONDS, 30 s), so a rollback took effect up to 30 s after
    the command said it had. The registry change stands whatever serving answers."""
    from mlwp.platform.serving_key import reload_serving
    from mlwp.settings import get_settings

    return reload_serving(get_settings(), name, state, RELOAD_SECONDS)


def _table() -> Table:
    """A table for an 80-column terminal: no borders (they took 3 columns each)."""
    return Table(box=None, pad_edge=False, header_style="bold underline")


def split_text(traffic: dict[str, Any]) -> str:
    """A traffic split as people read it: ``champion 90%, challenger 10%``."""
    return ", ".join(f"{alias} {float(percent):g}%" for alias, percent in traffic.items())


def _fail(exc: MlwpError) -> None:
    typer.echo(f"error: {exc.message}", err=True)
    raise typer.Exit(1)


def _say_unchanged(what: str, state: dict[str, Any], json_output: bool) -> None:
    """A change that changes nothing: recorded nothing and serving is not asked to reload
    (it already serves this), said in one line; exit 0, as `kubectl apply` says unchanged."""
    if not _emit({**state, "unchanged": True}, json_output):
        typer.echo(f"unchanged: {what}")


def _emit(data: Any, json_output: bool) -> bool:
    if json_output:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    return json_output


@app.command("list")
def list_command(
    name: Annotated[str | None, typer.Argument(help="Show this model's versions.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List registered models, or one model's versions with aliases and lineage."""
    from mlwp import registry

    _connect()
    console = Console()
    try:
        if name is None:
            models = registry.list_models()
            if _emit(models, json_output):
                return
            table = _table()
            table.add_column("model", no_wrap=True, min_width=8)
            table.add_column("aliases", overflow="fold")
            table.add_column("traffic", overflow="fold")
            table.add_column("latest version", no_wrap=True)
            for model in models:
                table.add_row(
                    model["name"],
                    ", ".join(f"{a}=v{v}" for a, v in sorted(model["aliases"].items())),
                    split_text(model["traffic"]),
                    str(model["latest_version"] or ""),
                )
            console.print(table)
            return
        _require_model(name)
        described = registry.describe(name)
        if _emit(described, json_output):
            return
        console.print(f"[bold]{name}[/bold] traffic: " + split_text(described["traffic"]))
        # In 80 columns the dag run was cut to "scheduled__2026-1…", so the run a version
        # came from could not be read: it folds now (never cut), a metric per line
        table = _table()
        table.add_column("version", no_wrap=True)
        table.add_column("aliases", overflow="fold")
        table.add_column("dag run", overflow="fold", min_width=24)
        table.add_column("dataset", no_wrap=True, min_width=12)
        table.add_column("test metrics", overflow="fold", min_width=16)
        for version in described["versions"]:
            metrics = version["test_metrics"] or {}
            table.add_row(
                version["version"],
                "\n".join(version["aliases"]),
                version["airflow_run_id"] or "",
                (version["dataset_sha256"] or "")[:12],
                "\n".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())),
            )
        console.print(table)
    except MlwpError as exc:
        _fail(exc)


@app.command("promote")
def promote_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[
        str | None, typer.Option(help="Version to promote; default: the challenger.")
    ] = None,
    reason: ReasonOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Make a version (default: the challenger) the champion with 100% of the traffic."""
    from mlwp.registry import model_changes

    _connect()
    try:
        _require_model(name)
        after = model_changes.promote(_actor(), name, version, reason)
    except MlwpError as exc:
        _fail(exc)
        return
    if model_changes.unchanged(after):
        _say_unchanged(
            f"{name} champion is already v{after['aliases'].get('champion')} with all the traffic",
            after,
            json_output,
        )
        return
    serving = _reload_serving(name, after)
    if not _emit({**after, "serving": serving}, json_output):
        typer.echo(f"{name}: champion is now v{after['aliases'].get('champion')}")
        typer.echo(f"serving: {serving['message']}")


@app.command("rollback")
def rollback_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Event id (from `mlwp models history`): return to the state right after it; "
            "or a time (ISO 8601, UTC unless it names a zone): the state in force then. "
            "Default: the state before the last promotion.",
        ),
    ] = None,
    reason: ReasonOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Return the aliases and traffic to an earlier recorded state, in one step."""
    from mlwp.registry import model_changes

    _connect()
    try:
        _require_model(name)
        after = model_changes.rollback(_actor(), name, reason, to=to)
    except MlwpError as exc:
        _fail(exc)
        return
    if model_changes.unchanged(after):
        _say_unchanged(
            f"{name} is already at {model_changes.describe_state(after)}", after, json_output
        )
        return
    serving = _reload_serving(name, after)
    if not _emit({**after, "serving": serving}, json_output):
        typer.echo(f"{name}: rolled back to {model_changes.describe_state(after)}")
        typer.echo(f"serving: {serving['message']}")


@app.command("history")
def history_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    limit: Annotated[int, typer.Option(help="Show at most this many changes.", min=1)] = 50,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every alias and traffic change of a model, newest first: who, why, from -> to."""
    from mlwp.registry import model_changes

    try:
        changes = model_changes.history(name, limit)
        if not changes:
            # the trail is read without MLflow, so a mistyped name read as a model with no
            # changes (exit 0); a model deleted since keeps its recorded history
            _connect()
            _require_model(name)
    except MlwpError as exc:
        _fail(exc)
        return
    if _emit(changes, json_output):
        return
    if not changes:
        typer.echo(f"{name}: no recorded alias or traffic changes")
        return
    # Printed 200 wide, every line wrapped in an 80-column terminal. Now it fits the
    # terminal: the event id (what `rollback --to` takes), the time under it (to the minute;
    # --json has it whole) and the action are never cut; who, from -> to and the reason
    # fold in two columns rather than four narrow ones; the actor's kind is shown only when the
    # actor does not already say it ("workflow:churn.train").
    table = _table()
    table.add_column("event, time (UTC)", no_wrap=True, min_width=16)
    table.add_column("action, by", overflow="fold", min_width=14)
    table.add_column("from -> to (reason)", overflow="fold", min_width=30)
    for change in changes:
        details = change["details"]
        kind = details.get("kind")
        actor = change["actor"]
        if kind and not actor.startswith(f"{kind}:"):
            actor += f" ({kind})"
        described = (
            model_changes.describe_state(details.get("from"))
            + "\n-> "
            + model_changes.describe_state(details.get("to"))
        )
        if details.get("reason"):
            described += f"\n({details['reason']})"
        table.add_row(
            f"{change.get('id') or ''}\n{change['timestamp'][:16].replace('T', ' ')}",
            f"{change['action']}\n{actor}",
            described,
        )
    Console().print(table)


@app.command("traffic")
def traffic_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    split: Annotated[
        list[str] | None,
        typer.Argument(help="New split as alias=percent pairs, e.g. champion=90 challenger=10."),
    ] = None,
    reason: ReasonOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show, or set, the traffic split between champion and challenger."""
    from mlwp import registry
    from mlwp.registry import model_changes

    _connect()
    try:
        _require_model(name)
        if not split:
            current = registry.get_traffic(name)
            if not _emit(current, json_output):
                typer.echo(split_text(current))
            return
        traffic: dict[str, Any] = {}
        for pair in split:
            alias, sep, percent = pair.partition("=")
            if not sep or not percent.strip().isdigit():
                raise registry.RegistryError(f"expected alias=percent, got {pair!r}")
            traffic[alias.strip()] = int(percent)
        result = model_changes.set_traffic(_actor(), name, traffic, reason)
    except MlwpError as exc:
        _fail(exc)
        return
    if model_changes.unchanged(result):
        already = ", ".join(f"{a}={p}" for a, p in result.items())
        if json_output:  # the split, as for a change; the line goes to stderr
            _emit(dict(result), json_output)
            typer.echo(f"unchanged: {name} traffic is already {already}", err=True)
        else:
            typer.echo(f"unchanged: {name} traffic is already {already}")
        return
    # the split is set and recorded: a failure to read the aliases for serving's reload
    # (MLflow answering an error: a raw MlflowException) must not end the command as if it
    # had not been (it did, with a traceback and exit 1, and a person would set it again)
    try:
        aliases = registry.aliases(name)
    except Exception as exc:
        serving = {
            "state": "skipped",
            "message": f"not asked to reload: the aliases could not be read ({type(exc).__name__}: "
            f"{str(exc)[:200]}); serving picks the change up on its next registry poll",
        }
    else:
        serving = _reload_serving(name, {"aliases": aliases, "traffic": result})
    if not _emit(result, json_output):  # the split, as before
        typer.echo(f"{name}: traffic {split_text(result)}")
        typer.echo(f"serving: {serving['message']}")
