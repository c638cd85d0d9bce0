"""MLflow model registry helpers: evaluate, gate, register with lineage, aliases and traffic.

The registry is the whole contract between the pipeline and the serving service:

- a registered model per definition ``model:``; each version carries the lineage tags
  ``mlwp.<key>`` listed in :data:`LINEAGE_KEYS`;
- aliases ``champion`` and ``challenger`` mark what serves;
- the model tag ``mlwp.traffic`` holds the traffic split as JSON, e.g.
  ``{"champion": 90, "challenger": 10}`` (absent means all traffic to the champion);
- the model tag ``mlwp.rollback`` holds the aliases and traffic before the last promotion, so
  :func:`rollback` restores them exactly.

Registration is idempotent: a version is looked up by the tags ``mlwp.airflow_run_id`` and
``mlwp.task_id`` (plus ``mlwp.mlflow_run_id`` when there is no Airflow run) before one is created.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from mlwp.errors import MlwpError
from mlwp.training.metrics import LOWER_IS_BETTER, better, compute_metrics

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from mlwp.model import Model

TAG = "mlwp."
TRAFFIC_TAG = "mlwp.traffic"
ROLLBACK_TAG = "mlwp.rollback"
TEST_METRICS_TAG = "mlwp.test_metrics"
ALIASES = ("champion", "challenger")
LINEAGE_KEYS = (
    "project",
    "workflow",
    "dag_id",
    "airflow_run_id",
    "task_id",
    "mlflow_run_id",
    "dataset_uri",
    "dataset_sha256",
    "gx_success",
    "gx_statistics",
    "code_version",
    "backend",
    "job_name",
)


class RegistryError(MlwpError):
    """A registry operation cannot be done as asked."""

    code = "registry_error"


def client() -> MlflowClient:
    import mlflow

    return mlflow.MlflowClient()


def code_version(repo: Path | None = None) -> str | None:
    """``MLWP_CODE_VERSION`` if set, else the git commit of the repository (``+dirty`` if so)."""
    if os.environ.get("MLWP_CODE_VERSION"):
        return os.environ["MLWP_CODE_VERSION"]
    root = repo or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha or None


@dataclass
class Lineage:
    """Where a model version came from; becomes the version's ``mlwp.*`` tags."""

    project: str | None = None
    workflow: str | None = None
    dag_id: str | None = None
    airflow_run_id: str | None = None
    task_id: str | None = None
    mlflow_run_id: str | None = None
    dataset_uri: str | None = None
    dataset_sha256: str | None = None
    gx_success: bool | None = None
    gx_statistics: Mapping[str, Any] | None = None
    code_version: str | None = None
    backend: str | None = None
    job_name: str | None = None

    def tags(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in asdict(self).items():
            if value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, Mapping):
                text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
            else:
                text = str(value)
            out[f"{TAG}{key}"] = text[:5000]
        return out

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Lineage:
        values: dict[str, Any] = {}
        for key in LINEAGE_KEYS:
            text = tags.get(f"{TAG}{key}")
            if text is None:
                continue
            if key == "gx_success":
                values[key] = text == "true"
            elif key == "gx_statistics":
                values[key] = orjson.loads(text)
            else:
                values[key] = text
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# Evaluation and the gate.


def evaluate(model: Model, test: pd.DataFrame) -> dict[str, float]:
    """Metrics of ``model`` on raw test rows (its own preprocessing and label encoding)."""
    from mlwp.training.core import TrainingError, dataset

    if model.target is None:
        raise RegistryError("the model has no target; cannot evaluate it")
    try:
        data = dataset(model.preprocessing, test, model.objective, model.classes, "test")
    except TrainingError as exc:
        raise RegistryError(f"cannot evaluate on the test split: {exc.message}") from exc
    raw = model.booster.inplace_predict(data.matrix)
    return compute_metrics(model.objective, data.labels, raw, model.threshold)


def predicted_class_counts(model: Model, test: pd.DataFrame) -> dict[str, int] | None:
    """How many test rows a classifier assigns to each class (None for a regression).

    A classifier that puts every row in one class (a rare positive class at threshold 0.5)
    has an F1 of 0 and an accuracy equal to the majority share: the evaluation warns.
    """
    import numpy as np

    from mlwp.training.core import TrainingError, dataset

    if model.objective == "regression" or model.target is None or not model.classes:
        return None
    try:
        data = dataset(model.preprocessing, test, model.objective, model.classes, "test")
    except TrainingError:
        return None
    raw = np.asarray(model.booster.inplace_predict(data.matrix))
    if model.objective == "binary":
        index = (raw.reshape(-1) >= model.threshold).astype(np.int64)
    else:
        index = raw.argmax(axis=1)
    values, counts = np.unique(index, return_counts=True)
    return {str(model.classes[int(v)]): int(c) for v, c in zip(values, counts, strict=True)}


def load_alias(name: str, alias: str) -> tuple[ModelVersion, Model] | None:
    """The version behind ``name@alias`` and the loaded model, or None if the alias is unset."""
    import mlflow

    from mlwp.model import load

    version = alias_version(name, alias)
    if version is None:
        return None
    path = mlflow.artifacts.download_artifacts(f"models:/{name}@{alias}")
    return version, load(path)


@dataclass
class Comparison:
    """The new model's and the champion's metrics on the same test rows."""

    new: dict[str, float]
    champion: dict[str, float] | None = None
    champion_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_with_champion(name: str, model: Model, test: pd.DataFrame) -> Comparison:
    """Evaluate the new model and the current champion (if any) on the same test split."""
    new = evaluate(model, test)
    champion = load_alias(name, "champion") if registered_model_exists(name) else None
    if champion is None:
        return Comparison(new)
    version, champion_model = champion
    return Comparison(new, evaluate(champion_model, test), str(version.version))


@dataclass
class GateDecision:
    """Whether the new model may be registered, and why (never touches aliases)."""

    passed: bool
    metric: str
    value: float | None
    reasons: list[str] = field(default_factory=list)
    champion_value: float | None = None
    minimum: float | None = None
    margin: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def summary(self) -> str:
        verdict = "passed" if self.passed else "failed"
        return f"gate {verdict} on {self.metric}: " + "; ".join(self.reasons)


def gate(
    comparison: Comparison,
    metric: str,
    *,
    minimum: float | None = None,
    beat_champion: bool = False,
    margin: float = 0.0,
) -> GateDecision:
    """Apply the definition's gate (``min``, ``beat: champion``, ``margin``) to a comparison."""
    value = comparison.new.get(metric)
    decision = GateDecision(True, metric, value, minimum=minimum, margin=margin)
    if value is None:
        decision.passed = False
        decision.reasons.append(
            f"metric {metric!r} not computed (available: {', '.join(sorted(comparison.new))})"
        )
        return decision
    lower = metric in LOWER_IS_BETTER
    if minimum is not None:
        ok = value <= minimum if lower else value >= minimum
        word = "at most" if lower else "at least"
        decision.reasons.append(
            f"{metric}={value:.4f} is {'' if ok else 'not '}{word} the required {minimum}"
        )
        decision.passed &= ok
    if beat_champion:
        if comparison.champion is None:
            decision.reasons.append("no champion yet: nothing to beat")
        else:
            old = comparison.champion.get(metric)
            decision.champion_value = old
            if old is None:
                decision.reasons.append(f"champion has no {metric}: nothing to beat")
            else:
                ok = better(metric, value, old, margin)
                decision.reasons.append(
                    f"{metric}={value:.4f} {'beats' if ok else 'does not beat'} champion "
                    f"v{comparison.champion_version} ({old:.4f}) by the margin {margin}"
                )
                decision.passed &= ok
    if not decision.reasons:
        decision.reasons.append("no conditions")
    return decision


# ---------------------------------------------------------------------------------------------
# Registration.


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def registered_model_exists(name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client().get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            return False
        raise
    return True


def versions(name: str) -> list[ModelVersion]:
    """Every version of ``name``, newest first."""
    found = list(client().search_model_versions(f"name = '{_quote(name)}'"))
    return sorted(found, key=lambda v: int(v.version), reverse=True)


def _quote(name: str) -> str:
    return name.replace("'", "''")


def find_version(name: str, lineage: Lineage) -> ModelVersion | None:
    """The version registered earlier for the same Airflow run and task (idempotency key)."""
    if not registered_model_exists(name):
        return None
    key = _identity(lineage)
    for version in versions(name):
        if all(version.tags.get(tag) == value for tag, value in key.items()):
            return version
    return None


def _identity(lineage: Lineage) -> dict[str, str]:
    if lineage.airflow_run_id:
        return {
            f"{TAG}airflow_run_id": lineage.airflow_run_id,
            f"{TAG}task_id": lineage.task_id or "",
            f"{TAG}dag_id": lineage.dag_id or "",
        }
    if lineage.mlflow_run_id:
        return {f"{TAG}mlflow_run_id": lineage.mlflow_run_id}
    raise RegistryError(
        "lineage needs airflow_run_id (and task_id) or mlflow_run_id, so that a retried "
        "registration finds the version it already created"
    )


@dataclass
class Registration:
    """The registered version, and whether this call created it."""

    name: str
    version: str
    created: bool
    source: str | None
    run_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def register(
    name: str,
    model_uri: str,
    lineage: Lineage,
    *,
    test_metrics: Mapping[str, float] | None = None,
    description: str | None = None,
) -> Registration:
    """Register ``model_uri`` as a new version of ``name`` with lineage tags, once.

    A second call with the same lineage identity (Airflow dag_id, run_id and task_id) returns
    the version the first call created instead of creating another.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    if lineage.task_id and lineage.airflow_run_id is None and lineage.mlflow_run_id is None:
        raise RegistryError("lineage.task_id without airflow_run_id")
    existing = find_version(name, lineage)
    if existing is not None:
        return Registration(name, str(existing.version), False, existing.source, existing.run_id)
    if lineage.code_version is None:
        lineage.code_version = code_version()
    tags = lineage.tags()
    if test_metrics:
        tags[TEST_METRICS_TAG] = orjson.dumps(dict(test_metrics)).decode()
    mlflow_client = client()
    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    with _notes_to_log():
        version = mlflow.register_model(model_uri, name, tags=tags)
    if description:
        mlflow_client.update_model_version(name, version.version, description=description)
    return Registration(name, str(version.version), True, version.source, version.run_id)


# MLflow's fluent registry API prints these notes to stderr (its ``eprint``), which Airflow's
# task supervisor logs at ERROR.
_MLFLOW_NOTES = ("Created version ", "Successfully registered model ", "Registered model ")


@contextmanager
def _notes_to_log() -> Iterator[None]:
    """Log what MLflow prints to stderr meanwhile: its notes at INFO, anything else at WARNING."""
    import contextlib
    import io
    import logging

    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            yield
    finally:
        log = logging.getLogger("mlwp.registry")
        for line in printed.getvalue().splitlines():
            if line.strip():
                level = logging.INFO if line.startswith(_MLFLOW_NOTES) else logging.WARNING
                log.log(level, "%s", line.strip())


# ---------------------------------------------------------------------------------------------
# Aliases, traffic, promotion and rollback.


def alias_version(name: str, alias: str) -> ModelVersion | None:
    """The version ``name@alias`` points to, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _not_found(exc) or "alias" in str(exc).lower():
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
        if _not_found(exc):
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


def describe(name: str) -> dict[str, Any]:
    """A registered model's aliases, traffic and versions (for ``mlwp models list NAME``)."""
    snapshot = _snapshot(name)
    by_version: dict[str, list[str]] = {}
    for alias, version in snapshot["aliases"].items():
        by_version.setdefault(version, []).append(alias)
    return {
        "name": name,
        **snapshot,
        "versions": [
            {
                "version": str(v.version),
                "aliases": sorted(by_version.get(str(v.version), [])),
                "run_id": v.run_id,
                "created": v.creation_timestamp,
                "status": v.status,
                "dag_id": v.tags.get(f"{TAG}dag_id"),
                "airflow_run_id": v.tags.get(f"{TAG}airflow_run_id"),
                "dataset_sha256": v.tags.get(f"{TAG}dataset_sha256"),
                "test_metrics": orjson.loads(v.tags[TEST_METRICS_TAG])
                if TEST_METRICS_TAG in v.tags
                else None,
                "lineage": asdict(Lineage.from_tags(v.tags)),
                # The newest monitor look that analysed this version (mlwp.monitoring.monitor).
                "monitoring_run": v.tags.get(f"{TAG}monitoring_run"),
            }
            for v in versions(name)
        ],
    }


def model_project(name: str) -> str | None:
    """The project whose pipeline registered ``name``'s newest version (its lineage tag)."""
    found = client().search_model_versions(
        f"name = '{_quote(name)}'", max_results=1, order_by=["version_number DESC"]
    )
    return next((v.tags.get(f"{TAG}project") for v in found), None)


def list_models() -> list[dict[str, Any]]:
    """Every registered model with its aliases and traffic."""
    out = []
    for model in client().search_registered_models(max_results=1000):
        tags = model.tags or {}
        out.append(
            {
                "name": model.name,
                "aliases": {a: str(v) for a, v in (model.aliases or {}).items()},
                "traffic": orjson.loads(tags[TRAFFIC_TAG])
                if TRAFFIC_TAG in tags
                else {"champion": 100},
                "latest_version": max(
                    (int(v.version) for v in model.latest_versions or []), default=None
                ),
            }
        )
    return out
