"""``mlwp audit``: list the platform's own admin actions (keys, roles, promotions, traffic)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="The platform's audit trail of admin actions.", no_args_is_help=True)


@app.command("list")
def list_command(
    *,
    actor: Annotated[str | None, typer.Option(help="Only events by this user.")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action, or a dotted prefix such as 'model'.")
    ] = None,
    target: Annotated[str | None, typer.Option(help="Only events about this target.")] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Only events at or after this time (UTC).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, the newest.")] = 50,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON lines instead of a table.")
    ] = False,
) -> None:
    """List recorded admin actions, newest last."""
    from mlwp.security.audit import list_events

    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    events = list_events(actor=actor, action=action, target=target, since=since, limit=limit)
    if json_output:
        for event in events:
            typer.echo(orjson.dumps(event.model_dump(mode="json")).decode())
        return
    table = Table("timestamp", "actor", "action", "target")
    table.add_column("details", overflow="ellipsis", no_wrap=True, max_width=60)
    for event in events:
        table.add_row(
            event.timestamp.isoformat(timespec="seconds"),
            event.actor,
            event.action,
            event.target,
            orjson.dumps(event.details).decode() if event.details else "",
        )
    Console().print(table)


@app.command("import")
def import_command(
    path: Annotated[
        Path | None,
        typer.Argument(help="A JSON-lines trail; default: audit.jsonl under MLWP_HOME."),
    ] = None,
) -> None:
    """Import a JSON-lines audit trail written by an older mlwp (each line once)."""
    from mlwp.security.audit import AuditError, audit_path, import_jsonl

    source = path or audit_path()
    if not source.is_file():
        typer.echo(f"error: no audit trail at {source}", err=True)
        raise typer.Exit(code=2)
    try:
        count = import_jsonl(source)
    except AuditError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"imported {count} new event(s) from {source}")
