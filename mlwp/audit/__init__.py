"""The platform's own audit trail: who did which admin action to what, and when.

Airflow's audit log (``/api/v2/eventLogs``) already covers what happens inside Airflow
(triggers, clears, approvals). This module records the actions mlwp performs outside of it:
API keys, role and user changes, model promotions, traffic changes. Events are appended as
JSON lines to ``<MLWP_HOME>/audit.jsonl`` under an exclusive file lock, so several processes
(CLI, operators, serving admin calls) can record at once without interleaving lines.

Usage from any part::

    from mlwp.audit import record
    record("alice", "model.promote", "churn", {"version": 3, "alias": "champion"})
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from mlwp.errors import MlwpError

AUDIT_FILE_NAME = "audit.jsonl"


class AuditError(MlwpError):
    """An audit event could not be recorded or the audit file could not be read."""

    code = "audit_error"


class AuditEvent(BaseModel):
    """One admin action: ``actor`` did ``action`` to ``target`` at ``timestamp``."""

    model_config = ConfigDict(frozen=True)

    timestamp: datetime
    actor: str = Field(min_length=1)
    action: str = Field(min_length=1)
    target: str
    details: dict[str, Any] = Field(default_factory=dict)


def audit_path(home: Path | None = None) -> Path:
    """Return the audit file of the installation at ``home`` (``MLWP_HOME`` when omitted)."""
    if home is None:
        from mlwp.settings import get_settings

        home = get_settings().home
    return Path(home) / AUDIT_FILE_NAME


def record(
    actor: str,
    action: str,
    target: str,
    details: Mapping[str, Any] | None = None,
    *,
    home: Path | None = None,
) -> AuditEvent:
    """Append one event to the audit trail and return it.

    ``actor`` is the user (or service) that acted, ``action`` a dotted verb such as
    ``apikey.create``, ``role.sync``, ``model.promote`` or ``traffic.set``, ``target`` what
    was acted on (a key id, a role, a model name). ``details`` must be JSON-serialisable and
    must never hold a secret: the trail is meant to be read by operators.
    """
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
        line = orjson.dumps(event.model_dump(mode="json")) + b"\n"
    except (TypeError, ValueError) as exc:  # orjson and pydantic serialisation errors
        raise AuditError(
            f"audit record {action!r}: details are not JSON-serialisable: {exc}"
        ) from exc
    path = audit_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return event


def iter_events(home: Path | None = None) -> Iterator[AuditEvent]:
    """Yield the recorded events, oldest first; a corrupt line is an error naming its number."""
    path = audit_path(home)
    if not path.exists():
        return
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield AuditEvent.model_validate(orjson.loads(raw))
            except (orjson.JSONDecodeError, ValueError) as exc:
                raise AuditError(f"{path}:{number}: not a valid audit event: {exc}") from exc


def list_events(
    *,
    home: Path | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[AuditEvent]:
    """Return recorded events matching every given filter, newest last, at most ``limit``.

    ``action`` matches exactly or as a dotted prefix (``model`` matches ``model.promote``).
    """
    selected = [
        event
        for event in iter_events(home)
        if (actor is None or event.actor == actor)
        and (action is None or event.action == action or event.action.startswith(f"{action}."))
        and (target is None or event.target == target)
        and (since is None or event.timestamp >= since)
    ]
    if limit is not None:
        selected = selected[-limit:] if limit > 0 else []
    return selected
