"""Aliases and the traffic split: which versions serve; promote, rollback, restore, deploy.

- aliases ``champion`` and ``challenger`` mark what serves;
- the model tag ``mlwp.traffic`` holds the traffic split as JSON, e.g.
  ``{"champion": 90, "challenger": 10}`` (absent means all traffic to the champion);
- the model tag ``mlwp.rollback`` holds the aliases and traffic before the last promotion, so
  :func:`rollback` restores them exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from mlwp.registry.connection import RegistryError, client, not_found

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

TRAFFIC_TAG = "mlwp.traffic"
ROLLBACK_TAG = "mlwp.rollback"
ALIASES = ("champion", "challenger")


def alias_version(name: str, alias: str) -> ModelVersion | None:
    """The version ``name@alias`` points to, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if not_found(exc) or "alias" in str(exc).lower():
            return None
        raise


def aliases(name: str) -> dict[str, str]:
    """Alias -> version of a registered model."""
    model = client().get_registered_model(name)
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def _check_alias(alias: str) -> None:
    if alias not in ALIASES:
        raise RegistryError(f"alias must be one of {', '.join(ALIASES)}, got {alias!r}")


def _check_version(name: str, version: str | int) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client().get_model_version(name, str(version))
    except MlflowException as exc:
        if not_found(exc):
            raise RegistryError(f"model {name!r} has no version {version}") from exc
        raise
    return str(version)


def set_alias(name: str, alias: str, version: str | int) -> None:
    _check_alias(alias)
    client().set_registered_model_alias(name, alias, _check_version(name, version))


def delete_alias(name: str, alias: str) -> None:
    _check_alias(alias)
    if alias in aliases(name):
        client().delete_registered_model_alias(name, alias)


def get_traffic(name: str) -> dict[str, int]:
    """The traffic split of ``name`` (alias -> percent); all to the champion by default."""
    tags = client().get_registered_model(name).tags or {}
    if TRAFFIC_TAG not in tags:
        return {"champion": 100}
    data: dict[str, int] = orjson.loads(tags[TRAFFIC_TAG])
    return data


def validate_traffic(name: str, traffic: Mapping[str, Any]) -> dict[str, int]:
    """Check a traffic split: known aliases, integer percents summing to 100, aliases set."""
    split: dict[str, int] = {}
    for alias, percent in traffic.items():
        _check_alias(alias)
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise RegistryError(f"traffic.{alias}: expected an integer 0-100, got {percent!r}")
        split[alias] = percent
    if sum(split.values()) != 100:
        raise RegistryError(f"traffic must sum to 100, got {sum(split.values())} ({split})")
    current = aliases(name)
    missing = [alias for alias, percent in split.items() if percent > 0 and alias not in current]
    if missing:
        raise RegistryError(
            f"traffic sends requests to alias(es) {', '.join(missing)} of {name!r}, which are "
            f"not set (aliases: {current or 'none'})"
        )
    return split


def set_traffic(name: str, traffic: Mapping[str, Any]) -> dict[str, int]:
    split = validate_traffic(name, traffic)
    client().set_registered_model_tag(name, TRAFFIC_TAG, orjson.dumps(split).decode())
    return split


def _snapshot(name: str) -> dict[str, Any]:
    return {"aliases": aliases(name), "traffic": get_traffic(name)}


def promote(name: str, version: str | int | None = None) -> dict[str, Any]:
    """Make ``version`` (default: the challenger) the champion with all the traffic.

    The aliases and traffic before the promotion are saved in ``mlwp.rollback``.
    """
    before = _snapshot(name)
    if version is None:
        if "challenger" not in before["aliases"]:
            raise RegistryError(f"{name!r} has no challenger to promote; give a version")
        version = before["aliases"]["challenger"]
    version = _check_version(name, version)
    mlflow_client = client()
    mlflow_client.set_registered_model_tag(name, ROLLBACK_TAG, orjson.dumps(before).decode())
    mlflow_client.set_registered_model_alias(name, "champion", version)
    if before["aliases"].get("challenger") == version:
        mlflow_client.delete_registered_model_alias(name, "challenger")
    mlflow_client.set_registered_model_tag(
        name, TRAFFIC_TAG, orjson.dumps({"champion": 100}).decode()
    )
    return _snapshot(name)


def rollback(name: str) -> dict[str, Any]:
    """Restore the aliases and traffic saved by the last :func:`promote` (exactly)."""
    mlflow_client = client()
    tags = mlflow_client.get_registered_model(name).tags or {}
    if ROLLBACK_TAG not in tags:
        raise RegistryError(f"{name!r} has nothing to roll back (no promotion recorded)")
    before = orjson.loads(tags[ROLLBACK_TAG])
    current = aliases(name)
    for alias in ALIASES:
        target = before["aliases"].get(alias)
        if target is None and alias in current:
            mlflow_client.delete_registered_model_alias(name, alias)
        elif target is not None:
            mlflow_client.set_registered_model_alias(name, alias, target)
    mlflow_client.set_registered_model_tag(
        name, TRAFFIC_TAG, orjson.dumps(before["traffic"]).decode()
    )
    mlflow_client.delete_registered_model_tag(name, ROLLBACK_TAG)
    return _snapshot(name)


def restore(name: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """Set the aliases and traffic of ``name`` to ``state`` exactly (a recorded snapshot).

    ``state`` is ``{"aliases": {alias: version}, "traffic": {alias: percent}}`` as the history
    records it. Everything is checked before anything changes: every version must still
    exist and the traffic must only send requests to aliases the state sets.
    """
    target = {str(a): str(v) for a, v in (state.get("aliases") or {}).items()}
    traffic = dict(state.get("traffic") or {"champion": 100})
    for alias, version in target.items():
        _check_alias(alias)
        _check_version(name, version)
    for alias, percent in traffic.items():
        _check_alias(alias)
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise RegistryError(f"traffic.{alias}: expected an integer 0-100, got {percent!r}")
        if percent > 0 and alias not in target:
            raise RegistryError(
                f"the state sends {percent}% of the traffic to alias {alias!r}, which it "
                "does not set"
            )
    if sum(traffic.values()) != 100:
        raise RegistryError(f"traffic must sum to 100, got {sum(traffic.values())} ({traffic})")
    mlflow_client = client()
    current = aliases(name)
    # Aliases first, then the split: serving never reads a split naming an unset alias.
    for alias in ALIASES:
        if alias in target and current.get(alias) != target[alias]:
            mlflow_client.set_registered_model_alias(name, alias, target[alias])
    mlflow_client.set_registered_model_tag(name, TRAFFIC_TAG, orjson.dumps(traffic).decode())
    for alias in ALIASES:
        if alias not in target and alias in current:
            mlflow_client.delete_registered_model_alias(name, alias)
    return _snapshot(name)


def snapshot(name: str) -> dict[str, Any]:
    """The aliases and traffic of ``name`` now (``{"aliases": ..., "traffic": ...}``)."""
    return _snapshot(name)


def deploy(
    name: str, version: str | int, alias: str, traffic: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What the deploy task does: point ``alias`` at ``version`` and set the traffic split.

    Deploying as champion is a promotion (rollback-able); deploying as challenger only moves
    the challenger alias. A traffic split naming an unset alias is refused before anything
    changes.
    """
    _check_alias(alias)
    version = _check_version(name, version)
    if traffic is not None:
        planned = {**aliases(name), alias: version}
        for key, percent in traffic.items():
            _check_alias(key)
            if isinstance(percent, int) and percent > 0 and key not in planned:
                raise RegistryError(
                    f"traffic sends requests to alias {key!r} of {name!r}, which is not set"
                )
    if alias == "champion":
        promote(name, version)
    else:
        set_alias(name, alias, version)
    if traffic is not None:
        set_traffic(name, traffic)
    return _snapshot(name)
