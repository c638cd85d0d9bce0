"""Changes to what serves, by people: promote, roll back, set the traffic split.

One code path for every front end (``mlwp models`` on the command line, the Models view in
the Airflow UI): the registry change (:mod:`mlwp.registry`) followed by its audit event, with
the actor, the reason and the aliases and traffic before and after (``from``/``to``), so the
alias/traffic history of a model can be read back from the audit trail
(:func:`history`). Who may make a change is decided by the caller's front end (the Airflow
permissions for the view, see :func:`mlwp.security.roles.may_change_model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlwp import audit, registry

# The audit actions of model changes; ``history`` reads them back.
PROMOTE, ROLLBACK, TRAFFIC = "model.promote", "model.rollback", "traffic.set"
HISTORY_ACTIONS = (PROMOTE, ROLLBACK, TRAFFIC)


def _record(
    actor: str,
    action: str,
    name: str,
    *,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    reason: str | None,
    **extra: Any,
) -> None:
    details: dict[str, Any] = {**after, "from": dict(before), "to": dict(after), **extra}
    if reason:
        details["reason"] = reason
    audit.record(actor, action, name, details)


def snapshot(name: str) -> dict[str, Any]:
    """The aliases and traffic of ``name`` now."""
    return {"aliases": registry.aliases(name), "traffic": registry.get_traffic(name)}


def promote(
    actor: str, name: str, version: str | int | None = None, reason: str | None = None
) -> dict[str, Any]:
    """Make ``version`` (default: the challenger) the champion with all the traffic."""
    before = snapshot(name)
    after = registry.promote(name, version)
    _record(actor, PROMOTE, name, before=before, after=after, reason=reason)
    return after


def rollback(actor: str, name: str, reason: str | None = None) -> dict[str, Any]:
    """Restore the aliases and traffic from before the last promotion."""
    before = snapshot(name)
    after = registry.rollback(name)
    _record(actor, ROLLBACK, name, before=before, after=after, reason=reason)
    return after


def set_traffic(
    actor: str, name: str, traffic: Mapping[str, Any], reason: str | None = None
) -> dict[str, int]:
    """Set the traffic split (percent per alias, summing to 100)."""
    before = snapshot(name)
    split = registry.set_traffic(name, traffic)
    after = {**before, "traffic": split}
    _record(actor, TRAFFIC, name, before=before, after=after, reason=reason)
    return split


def history(name: str, limit: int = 50) -> list[dict[str, Any]]:
    """The alias and traffic changes of ``name``, newest first, from the audit trail."""
    events = [
        event
        for event in audit.list_events(target=name)
        if event.action in HISTORY_ACTIONS or event.action.startswith("deploy.")
    ]
    return [event.model_dump(mode="json") for event in reversed(events[-limit:])]
