"""Registration: a model version with its lineage tags, created once.

Registration is idempotent: a version is looked up by the tags ``mlwp.airflow_run_id`` and
``mlwp.task_id`` (plus ``mlwp.mlflow_run_id`` when there is no Airflow run) before one is created.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import orjson

from mlwp.registry.connection import RegistryError, client, not_found
from mlwp.registry.lineage import TAG, Lineage, code_version

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

TEST_METRICS_TAG = "mlwp.test_metrics"


def registered_model_exists(name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client().get_registered_model(name)
    except MlflowException as exc:
        if not_found(exc):
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


def model_project(name: str) -> str | None:
    """The project whose pipeline registered ``name``'s newest version (its lineage tag)."""
    found = client().search_model_versions(
        f"name = '{_quote(name)}'", max_results=1, order_by=["version_number DESC"]
    )
    return next((v.tags.get(f"{TAG}project") for v in found), None)
