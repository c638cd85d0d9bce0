"""Changes to what serves, and their history: promote, roll back, set the traffic split, deploy.

One code path for every actor: people (``mlwp models`` on the command line, the Models view in
the Airflow UI), workflows (the deploy and rollout tasks) and guardrails (a guarded rollout
moving traffic back to the champion). Each change is the registry change
(:mod:`mlwp.registry`) followed by one audit event (:mod:`mlwp.security.audit`) whose
``details`` hold:

- ``from`` and ``to``: the aliases and traffic before and after
  (``{"aliases": {"champion": "1", "challenger": "2"}, "traffic": {"champion": 90, ...}}``);
- ``reason`` (when given), ``kind`` (``person``, ``workflow`` or ``guardrail``) and, for
  workflows and guardrails, ``run`` (dag_id, run_id, task_id) and any evidence.

:func:`history` reads them back (``mlwp models history``); :func:`rollback` returns to any
recorded state in one step: the state before the last promotion by default, or the state
right after a given event (``to=<event id>``) or in force at a given time
(``to=<ISO time>``). The rollback is itself a recorded change.

A person's change that would change nothing (the split already set, a promotion of the
champion, a rollback to the state in force) writes and records nothing: its result is marked
:func:`unchanged`, as ``kubectl apply`` says "unchanged". A workflow's or a guardrail's is
recorded all the same: it carries its run and evidence, and a rollout's step is a step of
its record even when the deploy had already set that split. Who may make a change is decided
by the caller's front end (the Airflow permissions for the view, see
:func:`mlwp.security.roles.may_change_model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from mlwp import registry
from mlwp.security import audit

# The audit actions of model changes; ``history`` reads them back.
PROMOTE, ROLLBACK, TRAFFIC, DEPLOY = (
    "model.promote",
    "model.rollback",
    "traffic.set",
    "model.deploy",
)
HISTORY_ACTIONS = (PROMOTE, ROLLBACK, TRAFFIC, DEPLOY)
# Who made a change (details["kind"]).
KINDS = ("person", "workflow", "guardrail")


class _Unchanged(dict[str, Any]):
    """A change function's result when nothing changed (see :func:`unchanged`)."""


def unchanged(result: Mapping[str, Any]) -> bool:
    """Whether a change function changed nothing (and so recorded nothing)."""
    return isinstance(result, _Unchanged)


def _split(traffic: Mapping[str, Any] | None) -> dict[str, Any]:
    # {"champion": 100, "challenger": 0} routes exactly as {"champion": 100}
    return {alias: percent for alias, percent in (traffic or {"champion": 100}).items() if percent}


def same_state(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two states serve alike: the same aliases and the same non-zero split."""
    return dict(a.get("aliases") or {}) == dict(b.get("aliases") or {}) and _split(
        a.get("traffic")
    ) == _split(b.get("traffic"))


def workflow_actor(dag_id: str) -> str:
    """The actor recorded for a change a workflow's task makes."""
    return f"workflow:{dag_id}"


def guardrail_actor(dag_id: str) -> str:
    """The actor recorded for a change a guarded rollout's guardrail makes."""
    return f"guardrail:{dag_id}"


def _record(
    actor: str,
    action: str,
    name: str,
    *,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    reason: str | None,
    kind: str = "person",
    **extra: Any,
) -> dict[str, Any]:
    if kind not in KINDS:
        raise registry.RegistryError(f"change kind must be one of {', '.join(KINDS)}, got {kind!r}")
    details: dict[str, Any] = {
        **after,
        "from": dict(before),
        "to": dict(after),
        "kind": kind,
        **{key: value for key, value in extra.items() if value is not None},
    }
    if reason:
        details["reason"] = reason
    event = audit.record(actor, action, name, details)
    return {"event": event.id, **after}


def snapshot(name: str) -> dict[str, Any]:
    """The aliases and traffic of ``name`` now (empty aliases for an unregistered model)."""
    if not registry.registered_model_exists(name):
        return {"aliases": {}, "traffic": {"champion": 100}}
    return registry.snapshot(name)


def promote(
    actor: str,
    name: str,
    version: str | int | None = None,
    reason: str | None = None,
    *,
    kind: str = "person",
    **extra: Any,
) -> dict[str, Any]:
    """Make ``version`` (default: the challenger) the champion with all the traffic.

    A person promoting the champion when it already has all the traffic changes nothing:
    nothing is recorded and the result is marked :func:`unchanged`.
    """
    before = snapshot(name)
    current = before["aliases"]
    if (
        kind == "person"
        and version is not None
        and current.get("champion") == str(version)
        and current.get("challenger") != str(version)
        and _split(before["traffic"]) == {"champion": 100}
    ):
        return _Unchanged(before)
    after = registry.promote(name, version)
    _record(actor, PROMOTE, name, before=before, after=after, reason=reason, kind=kind, **extra)
    return after


def set_traffic(
    actor: str,
    name: str,
    traffic: Mapping[str, Any],
    reason: str | None = None,
    *,
    kind: str = "person",
    **extra: Any,
) -> dict[str, int]:
    """Set the traffic split (percent per alias, summing to 100).

    A person setting the split already in force changes nothing: nothing is written or
    recorded and the result is marked :func:`unchanged`.
    """
    before = snapshot(name)
    if kind == "person":  # checked first, so a bad split is refused, never "unchanged"
        wanted = registry.validate_traffic(name, traffic)
        if _split(wanted) == _split(before["traffic"]):
            return cast(dict[str, int], _Unchanged(wanted))
    split = registry.set_traffic(name, traffic)
    after = {**before, "traffic": split}
    _record(actor, TRAFFIC, name, before=before, after=after, reason=reason, kind=kind, **extra)
    return split


def deploy(
    actor: str,
    name: str,
    version: str | int,
    alias: str,
    traffic: Mapping[str, Any] | None = None,
    *,
    reason: str | None = None,
    kind: str = "workflow",
    **extra: Any,
) -> dict[str, Any]:
    """What a deploy task does (:func:`mlwp.registry.deploy`), recorded."""
    before = snapshot(name)
    after = registry.deploy(name, version, alias, traffic)
    _record(
        actor,
        DEPLOY,
        name,
        before=before,
        after=after,
        reason=reason,
        kind=kind,
        alias=alias,
        version=str(version),
        **extra,
    )
    return after


def history(name: str, limit: int = 50) -> list[dict[str, Any]]:
    """The alias and traffic changes of ``name``, newest first, from the audit trail."""
    events = _changes(name)
    return [event.model_dump(mode="json") for event in reversed(events[-limit:])]


def _changes(name: str) -> list[audit.AuditEvent]:
    """Every recorded change of ``name``, oldest first."""
    return [
        event
        for event in audit.list_events(target=name)
        if event.action in HISTORY_ACTIONS or event.action.startswith("deploy.")
    ]


def _state(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping) or not isinstance(value.get("aliases"), Mapping):
        return None
    return {
        "aliases": {str(a): str(v) for a, v in value["aliases"].items()},
        "traffic": dict(value.get("traffic") or {"champion": 100}),
    }


def parse_point(text: str) -> int | datetime:
    """An event id (``42``) or a time (ISO 8601; UTC when it names no zone)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise registry.RegistryError(
            f"--to: expected an event id (see `mlwp models history`) or an ISO time such as "
            f"2026-01-31T09:00, got {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def target_state(name: str, to: int | datetime | None = None) -> tuple[dict[str, Any], str]:
    """The recorded state a rollback of ``name`` returns to, and a description of it.

    ``to=None``: the state before the newest promotion (by a person, a deploy as champion or
    a rollout). An ``int``: the state right after that event. A ``datetime``: the state in
    force at that time (after the last change at or before it).
    """
    changes = _changes(name)
    if isinstance(to, int):
        for event in changes:
            if event.id == to:
                state = _state(event.details.get("to"))
                if state is None:
                    break
                return state, f"the state after event {to} ({event.action} by {event.actor})"
        raise registry.RegistryError(
            f"event {to} is not a recorded alias or traffic change of {name!r} "
            "(see `mlwp models history`)"
        )
    if isinstance(to, datetime):
        when = to.astimezone(UTC)
        if when > datetime.now(UTC):
            # the state "in force" then is not recorded yet: taking today's instead would
            # record a rollback that changed nothing and say "rolled back" (a local time
            # read as UTC, a typo in the year)
            raise registry.RegistryError(
                f"--to {when.isoformat()} is in the future; give a past time (UTC unless it "
                "names a zone) or an event id from `mlwp models history`"
            )
        before = [event for event in changes if event.timestamp <= when]
        if before:
            state = _state(before[-1].details.get("to"))
            if state is not None:
                return state, f"the state at {when.isoformat()} (after event {before[-1].id})"
        later = [event for event in changes if event.timestamp > when]
        if later:
            state = _state(later[0].details.get("from"))
            if state is not None and state["aliases"]:
                return state, f"the state at {when.isoformat()} (before event {later[0].id})"
        raise registry.RegistryError(
            f"no recorded state of {name!r} at {when.isoformat()}: its history starts later"
        )
    first: audit.AuditEvent | None = None  # a promotion with nothing before it
    for event in reversed(changes):
        promoted = event.action == PROMOTE or (
            event.action == DEPLOY and event.details.get("alias") == "champion"
        )
        state = _state(event.details.get("from"))
        if promoted and state is not None and state["aliases"]:
            return state, f"the state before the promotion of event {event.id}"
        if promoted:
            first = event
    if first is not None:
        # "no promotion recorded" was wrong here: the first deploy is one, with no state
        # before it (a model whose only promotion made its first champion)
        raise registry.RegistryError(
            f"{name!r} has nothing to roll back: its only promotion, event {first.id} "
            f"({first.action} by {first.actor}), made its first champion, and no state came "
            "before it (give --to with an event id or time from `mlwp models history`)"
        )
    raise registry.RegistryError(f"{name!r} has nothing to roll back (no promotion recorded)")


def rollback(
    actor: str,
    name: str,
    reason: str | None = None,
    *,
    to: int | datetime | str | None = None,
    kind: str = "person",
    **extra: Any,
) -> dict[str, Any]:
    """Return ``name`` to a recorded state in one step (see :func:`target_state`).

    A person giving with ``to`` the state already in force changes nothing: nothing is recorded
    and the result is marked :func:`unchanged` (the default rollback refuses instead: with
    no ``to``, a person asked to undo something and nothing is undone).

    Without any recorded history (changes made before the trail existed), the state saved
    by the last promotion in the registry tag ``mlwp.rollback`` is restored.
    """
    if isinstance(to, str):
        to = parse_point(to)
    before = snapshot(name)
    try:
        state, described = target_state(name, to)
    except registry.RegistryError:
        if to is not None or _changes(name):
            raise
        after = registry.rollback(name)
        _record(
            actor, ROLLBACK, name, before=before, after=after, reason=reason, kind=kind, **extra
        )
        return after
    if same_state(state, before):
        if to is None:
            raise registry.RegistryError(
                f"{name!r} is already in {described}; nothing to roll back "
                "(give --to with an event id or time from `mlwp models history`)"
            )
        if kind == "person":
            return _Unchanged(before)
    after = registry.restore(name, state)
    _record(
        actor,
        ROLLBACK,
        name,
        before=before,
        after=after,
        reason=reason,
        kind=kind,
        restored=described,
        **extra,
    )
    return after


def to_champion(
    actor: str, name: str, reason: str, *, kind: str = "guardrail", **extra: Any
) -> dict[str, Any]:
    """Send all traffic back to the champion at once (a guardrail's rollback).

    The challenger alias stays where it is (with 0 %), so what failed can be looked at and
    the history shows which version it was; recorded as ``model.rollback``.
    """
    before = snapshot(name)
    state = {"aliases": before["aliases"], "traffic": {"champion": 100}}
    after = registry.restore(name, state)
    _record(actor, ROLLBACK, name, before=before, after=after, reason=reason, kind=kind, **extra)
    return after


def describe_state(state: Mapping[str, Any] | None) -> str:
    """``champion v1 90%, challenger v2 10%`` (``-`` for no state)."""
    if not state:
        return "-"
    aliases = state.get("aliases") or {}
    traffic = state.get("traffic") or {}
    if not aliases:
        return "none"
    return ", ".join(
        f"{alias} v{aliases[alias]} {traffic.get(alias, 0)}%"
        for alias in registry.ALIASES
        if alias in aliases
    )
