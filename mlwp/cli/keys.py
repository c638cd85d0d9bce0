"""``mlwp keys``: create, list and revoke the serving service's API keys.

The key store lives in ``serving.keys.store`` (the serving image needs it without the CLI);
mlwp may import serving, never the reverse for Airflow. Each change is recorded in the audit
trail (never the secret).
"""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from serving.keys.store import KeyStore

app = typer.Typer(help="API keys of the serving service.", no_args_is_help=True)


def _store() -> KeyStore:
    from serving.core.config import ServingSettings
    from serving.keys.store import KeyStore, migrate

    settings = ServingSettings()
    migrate(settings.key_database_url)
    pepper = settings.key_pepper.get_secret_value() if settings.key_pepper else None
    return KeyStore(settings.key_database_url, pepper=pepper, cache_seconds=0)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command("create")
def create_command(
    name: Annotated[str, typer.Argument(help="Who or what uses the key (e.g. 'checkout-app').")],
    *,
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            "-s",
            help="admin, model:<name>, model:*, feedback:<name> or feedback:*; repeatable.",
        ),
    ],
    rate_limit: Annotated[
        str | None, typer.Option(help="Per-key limit such as '100/second'; default setting.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a key and print its token once (it is stored only as a hash)."""
    from mlwp.security.audit import record
    from serving.core.errors import KeyStoreError

    store = _store()
    try:
        key, token = store.create(name, scope, rate_limit=rate_limit)
    except KeyStoreError as exc:
        _fail(exc.message)
        return
    finally:
        store.close()
    record(
        getpass.getuser(),
        "apikey.create",
        key.key_id,
        {"name": key.name, "scopes": list(key.scopes), "rate_limit": key.rate_limit},
    )
    if json_output:
        typer.echo(orjson.dumps({**key.as_dict(), "token": token}).decode())
        return
    typer.echo(f"created key {key.key_id} ({key.name}) scopes={','.join(key.scopes)}")
    typer.echo("token (shown once, store it now):")
    typer.echo(token)


@app.command("list")
def list_command(
    *,
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List keys (never their secrets)."""
    store = _store()
    try:
        keys = store.list(include_revoked=all_keys)
    finally:
        store.close()
    if json_output:
        for key in keys:
            typer.echo(orjson.dumps(key.as_dict()).decode())
        return
    # In 80 columns the id and the scopes were cut to "c13dd491eb…" and "feedback:c…": the
    # id `mlwp keys revoke` needs could not be read from the list. Now the id is never cut,
    # the name and scopes keep their width (folded past 24 and 32), without borders, and
    # the times are days (--json has them whole); "revoked" only with --all, the one list
    # that holds revoked keys.
    table = Table(box=None, pad_edge=False, header_style="bold underline")
    table.add_column("key id", no_wrap=True, min_width=16)
    widest = {
        "name": max((len(k.name) for k in keys), default=4),
        "scopes": max((len(", ".join(k.scopes)) for k in keys), default=6),
    }
    table.add_column("name", overflow="fold", min_width=min(widest["name"], 24))
    table.add_column("scopes", overflow="fold", min_width=min(widest["scopes"], 32))
    table.add_column("limit", overflow="fold")
    table.add_column("created", no_wrap=True, min_width=10)
    if all_keys:
        table.add_column("revoked", no_wrap=True)
    for key in keys:
        info = key.as_dict()
        row = [key.key_id, key.name, ", ".join(key.scopes), key.rate_limit or "default"]
        row.append(_when(info["created_at"]))
        if all_keys:
            row.append(_when(info["revoked_at"]))
        table.add_row(*row)
    Console().print(table)


def _when(iso: str | None) -> str:
    """The day (UTC) of an ISO time, or nothing; ``--json`` has the times."""
    return iso[:10] if iso else ""


@app.command("revoke")
def revoke_command(
    key_id: Annotated[str, typer.Argument(help="The key id (the part after 'mlwp_').")],
) -> None:
    """Revoke a key; the service refuses it within its key cache time (5 s by default)."""
    from mlwp.security.audit import record
    from serving.core.errors import KeyStoreError

    store = _store()
    try:
        key = store.revoke(key_id)
    except KeyStoreError as exc:
        _fail(exc.message)
        return
    finally:
        store.close()
    record(getpass.getuser(), "apikey.revoke", key.key_id, {"name": key.name})
    typer.echo(f"revoked key {key.key_id} ({key.name})")


@app.command("install-admin")
def install_admin_command() -> None:
    """Register the deploy task's admin key in serving's key store, as `mlwp up` does.

    The token is ``MLWP_SERVING_ADMIN_KEY`` when set (the Helm chart's generated Secret), else
    the one kept in ``<MLWP_HOME>/secrets.json``, made there on first use (docker compose's
    init service, whose Airflow containers share that folder). Idempotent; the token is
    never printed.
    """
    from mlwp.errors import PlatformError
    from mlwp.platform.serving_key import KEY_NAME, ensure_serving_admin_key
    from mlwp.settings import get_settings

    try:
        key_id = ensure_serving_admin_key(get_settings(), install_configured=True)
    except PlatformError as exc:
        _fail(str(exc))
        return
    typer.echo(f"serving admin key {key_id} ({KEY_NAME}) is registered")
