"""The platform's own audit trail: who did which admin action to what, and when.

Airflow's audit log (``/api/v2/eventLogs``) already covers what happens inside Airflow
(triggers, clears, approvals). This module records the actions mlwp performs outside of it:
API keys, role and user changes, model promotions, traffic changes.

Events are rows of the table ``mlwp_audit_events`` in a SQL database: by default the Airflow
metadata database (``MLWP_DATABASE_URL``; SQLite under home on a laptop, PostgreSQL in
production), or the one ``MLWP_AUDIT_DATABASE_URL`` names. A database, not a file, because
the CLI, tasks on Celery workers and admins on other hosts all record and read one trail; the
database's transactions keep concurrent writers apart (the old JSON-lines file needed a lock
that only works on one host).

The schema is owned by Alembic migrations beside this module, with their own version table
(``mlwp_audit_alembic_version``), as the serving API keys do: the table can share Airflow's
database without touching Airflow's ``alembic_version``, and later columns or indexes arrive
as revisions instead of hand-made ``ALTER``s. A process checks the version once per database
(one cheap query) and runs Alembic only when the table is missing or behind.

A trail written by an older mlwp as ``<home>/audit.jsonl`` is imported by ``mlwp up`` (and
``mlwp audit import``), idempotently: each line is imported once, keyed by its sha256.

Usage from any part::

    from mlwp.security.audit import record
    record("alice", "model.promote", "churn", {"version": 3, "alias": "champion"})
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlwp.errors import MlwpError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

LEGACY_AUDIT_FILE_NAME = "audit.jsonl"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "mlwp_audit_alembic_version"
EVENTS_TABLE = "mlwp_audit_events"
# The newest revision under migrations/versions; tests check it matches the scripts.
HEAD_REVISION = "0001"


class AuditError(MlwpError):
    """An audit event could not be recorded, or the trail could not be read or imported."""

    code = "audit_error"


class AuditEvent(BaseModel):
    """One admin action: ``actor`` did ``action`` to ``target`` at ``timestamp``."""

    model_config = ConfigDict(frozen=True)

    timestamp: datetime
    actor: str = Field(min_length=1)
    action: str = Field(min_length=1)
    target: str
    details: dict[str, Any] = Field(default_factory=dict)
    # The row id in the trail (insertion order); None until recorded.
    id: int | None = None


def audit_path(home: Path | None = None) -> Path:
    """Return the legacy JSON-lines trail of the installation at ``home`` (imported by up)."""
    if home is None:
        from mlwp.settings import get_settings

        home = get_settings().home
    return Path(home) / LEGACY_AUDIT_FILE_NAME


def audit_database_url(home: Path | None = None) -> str:
    """The audit database of the installation at ``home`` (``MLWP_HOME`` when omitted)."""
    from mlwp.settings import Settings, get_settings

    settings = get_settings() if home is None else Settings(home=home)
    return settings.audit_url


# One engine per database URL per process, and the URLs whose schema is known to be current.
_engines: dict[str, Engine] = {}
_current: set[str] = set()
_lock = threading.Lock()
_migrating = threading.Lock()


def _forget_engines_after_fork() -> None:
    # A forked child must not reuse the parent's pooled connections (SQLAlchemy's advice:
    # dispose(close=False) in the child), nor trust a check made by the parent, nor inherit a
    # lock another parent thread held at the fork (it would never be released in the child).
    global _lock, _migrating
    _lock, _migrating = threading.Lock(), threading.Lock()
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()
    _current.clear()


os.register_at_fork(after_in_child=_forget_engines_after_fork)


def _table() -> Any:
    from mlwp.security.audit.schema import events_table

    return events_table


def _engine(url: str) -> Engine:
    import sqlalchemy as sa

    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(url, pool_pre_ping=True)
            _engines[url] = engine
        return engine


def _revision(engine: Engine) -> str | None:
    import sqlalchemy as sa
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with engine.connect() as connection:
            value = connection.execute(
                sa.text(f"SELECT version_num FROM {VERSION_TABLE}")  # noqa: S608 - a constant
            ).scalar()
    except SQLAlchemyError:  # no version table yet
        return None
    return str(value) if value is not None else None


def migrate(url: str, revision: str = "head") -> None:
    """Bring the audit table at ``url`` to ``revision`` with Alembic."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy.exc import SQLAlchemyError

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("version_table", VERSION_TABLE)
    engine = _engine(url)
    try:
        # Alembic runs a migration through module-global proxies (alembic.context, op): two
        # threads of one process migrating at once (an api-server's first concurrent requests)
        # break each other's run, so a process migrates one at a time.
        with _migrating, engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except SQLAlchemyError as exc:
        # Two processes migrating a new database at once: the loser's CREATE fails, and the
        # winner's schema, once committed, is what it wanted.
        if revision == "head" and _wait_for_head(engine):
            return
        raise AuditError(f"audit database {_shown(url)}: migration failed: {exc}") from exc


def _wait_for_head(engine: Engine, timeout: float = 30.0) -> bool:
    """Whether the schema reaches the head revision within ``timeout`` (another migrator)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _revision(engine) == HEAD_REVISION:
            return True
        time.sleep(0.2)
    return False


def _ready_engine(url: str) -> Engine:
    """The engine of ``url``, its schema migrated to the head revision once per process."""
    engine = _engine(url)
    if url not in _current:
        if _revision(engine) != HEAD_REVISION:
            migrate(url)
        _current.add(url)
    return engine


def _shown(url: str) -> str:
    from mlwp.platform.preflight import display_url

    return display_url(url)


def _event(
    actor: str, action: str, target: str, details: Mapping[str, Any] | None
) -> tuple[AuditEvent, dict[str, Any]]:
    if not actor or not actor.strip():
        raise AuditError("audit record: actor must be a non-empty user name")
    if not action or not action.strip():
        raise AuditError(f"audit record by {actor!r}: action must be a non-empty name")
    event = AuditEvent(
        timestamp=datetime.now(UTC),
        actor=actor,
        action=action,
        target=target,
        details=dict(details or {}),
    )
    try:
        # Through JSON and back: what is stored is exactly what a reader gets.
        stored = orjson.loads(orjson.dumps(event.details))
    except (TypeError, ValueError) as exc:  # orjson serialisation errors
        raise AuditError(
            f"audit record {action!r}: details are not JSON-serialisable: {exc}"
        ) from exc
    return event.model_copy(update={"details": stored}), stored


def record(
    actor: str,
    action: str,
    target: str,
    details: Mapping[str, Any] | None = None,
    *,
    home: Path | None = None,
    url: str | None = None,
) -> AuditEvent:
    """Record one event in the audit trail and return it.

    ``actor`` is the user (or service) that acted, ``action`` a dotted verb such as
    ``apikey.create``, ``role.sync``, ``model.promote`` or ``traffic.set``, ``target`` what
    was acted on (a key id, a role, a model name). ``details`` must be JSON-serialisable and
    must never hold a secret: the trail is meant to be read by operators. The trail is the
    database ``url``, else that of the installation at ``home`` (``MLWP_HOME``).
    """
    from sqlalchemy.exc import SQLAlchemyError

    event, stored = _event(actor, action, target, details)
    url = url or audit_database_url(home)
    try:
        engine = _ready_engine(url)
        with engine.begin() as connection:
            inserted = connection.execute(
                _table()
                .insert()
                .values(
                    timestamp=event.timestamp,
                    actor=event.actor,
                    action=event.action,
                    target=event.target,
                    details=stored,
                )
            )
            keys = inserted.inserted_primary_key
    except SQLAlchemyError as exc:
        raise AuditError(
            f"audit record {action!r} by {actor!r}: database {_shown(url)}: {exc}"
        ) from exc
    return event.model_copy(update={"id": int(keys[0])}) if keys else event


def _to_event(row: Any) -> AuditEvent:
    timestamp = row.timestamp
    if timestamp.tzinfo is None:  # SQLite keeps no zone; every timestamp is written in UTC
        timestamp = timestamp.replace(tzinfo=UTC)
    return AuditEvent(
        timestamp=timestamp,
        actor=row.actor,
        action=row.action,
        target=row.target,
        details=row.details or {},
        id=row.id,
    )


def list_events(
    *,
    home: Path | None = None,
    url: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[AuditEvent]:
    """Return recorded events matching every given filter, newest last, at most ``limit``.

    ``action`` matches exactly or as a dotted prefix (``model`` matches ``model.promote``).
    """
    import sqlalchemy as sa
    from sqlalchemy.exc import SQLAlchemyError

    if limit is not None and limit <= 0:
        return []
    table = _table()
    query = sa.select(table)
    if actor is not None:
        query = query.where(table.c.actor == actor)
    if action is not None:
        escaped = action.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(
            sa.or_(table.c.action == action, table.c.action.like(f"{escaped}.%", escape="\\"))
        )
    if target is not None:
        query = query.where(table.c.target == target)
    if since is not None:
        query = query.where(table.c.timestamp >= since.astimezone(UTC))
    # Insertion order (the id), so events recorded within one clock tick keep their order.
    query = query.order_by(table.c.id.desc())
    if limit is not None:
        query = query.limit(limit)
    url = url or audit_database_url(home)
    try:
        with _ready_engine(url).connect() as connection:
            rows = connection.execute(query).all()
    except SQLAlchemyError as exc:
        raise AuditError(f"audit trail: database {_shown(url)}: {exc}") from exc
    return [_to_event(row) for row in reversed(rows)]


def iter_events(home: Path | None = None, *, url: str | None = None) -> Iterator[AuditEvent]:
    """Yield every recorded event, oldest first."""
    yield from list_events(home=home, url=url)


def import_jsonl(path: Path, *, home: Path | None = None, url: str | None = None) -> int:
    """Import a JSON-lines trail (the format of mlwp before the database); return how many
    events were new. Importing the same file twice imports nothing the second time.

    Every line is checked before anything is written: a corrupt line is an error naming the
    file and line number, and the database is left as it was.
    """
    import sqlalchemy as sa
    from sqlalchemy.exc import SQLAlchemyError

    rows: list[dict[str, Any]] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                event = AuditEvent.model_validate(orjson.loads(line))
            except (orjson.JSONDecodeError, ValidationError) as exc:
                raise AuditError(f"{path}:{number}: not a valid audit event: {exc}") from exc
            rows.append(
                {
                    "timestamp": event.timestamp.astimezone(UTC),
                    "actor": event.actor,
                    "action": event.action,
                    "target": event.target,
                    "details": event.details,
                    "import_key": hashlib.sha256(line).hexdigest(),
                }
            )
    if not rows:
        return 0
    url = url or audit_database_url(home)
    table = _table()
    try:
        with _ready_engine(url).begin() as connection:
            known = set(
                connection.execute(
                    sa.select(table.c.import_key).where(
                        table.c.import_key.in_([row["import_key"] for row in rows])
                    )
                ).scalars()
            )
            new: list[dict[str, Any]] = []
            for row in rows:
                if row["import_key"] not in known:
                    known.add(row["import_key"])  # a line repeated within the file, once
                    new.append(row)
            if new:
                connection.execute(table.insert(), new)
    except SQLAlchemyError as exc:
        raise AuditError(f"audit import of {path}: database {_shown(url)}: {exc}") from exc
    return len(new)


def import_legacy_trail(home: Path, *, url: str | None = None) -> int | None:
    """Import ``<home>/audit.jsonl`` if present and rename it ``audit.jsonl.imported``.

    Returns the number of new events, or None when there was no file. The rename comes after
    the import's commit, so a crash in between only means the next run imports nothing new.
    """
    path = audit_path(home)
    if not path.is_file():
        return None
    count = import_jsonl(path, home=home, url=url)
    path.rename(path.with_name(f"{path.name}.imported"))
    return count
