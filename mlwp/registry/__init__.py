"""MLflow model registry helpers: evaluate, gate, register with lineage, aliases and traffic.

The registry is the whole contract between the pipeline and the serving service:

- a registered model per definition ``model:``; each version carries the lineage tags
  ``mlwp.<key>`` listed in :data:`LINEAGE_KEYS`;
- aliases ``champion`` and ``challenger`` mark what serves;
- the model tag ``mlwp.traffic`` holds the traffic split as JSON, e.g.
  ``{"champion": 90, "challenger": 10}`` (absent means all traffic to the champion);
- the model tag ``mlwp.rollback`` holds the aliases and traffic before the last promotion, so
  :func:`rollback` restores them exactly.

The helpers live in one module per job and are re-exported here, so callers write
``registry.register(...)``: ``connection`` (the MLflow client, :class:`RegistryError`),
``lineage`` (the ``mlwp.<key>`` version tags), ``evaluation`` (new model against champion, the
gate), ``registration`` (idempotent registration, versions), ``traffic`` (aliases, the traffic
split, promote/rollback/restore/deploy) and ``catalog`` (what ``mlwp models list`` shows).

Registration is idempotent: a version is looked up by the tags ``mlwp.airflow_run_id`` and
``mlwp.task_id`` (plus ``mlwp.mlflow_run_id`` when there is no Airflow run) before one is created.

Beside these helpers, the package holds what builds on them: ``model_changes`` (every alias and
traffic change, recorded in the audit trail and the model's history), ``rollout`` (the guarded
rollout policy) and ``serving_client`` (telling serving to reload, and waiting until it has).
"""

from mlwp.registry.catalog import describe, list_models
from mlwp.registry.connection import RegistryError, client
from mlwp.registry.evaluation import (
    Comparison,
    GateDecision,
    compare_with_champion,
    evaluate,
    gate,
    load_alias,
    predicted_class_counts,
)
from mlwp.registry.lineage import LINEAGE_KEYS, TAG, Lineage, code_version
from mlwp.registry.registration import (
    TEST_METRICS_TAG,
    Registration,
    find_version,
    model_project,
    register,
    registered_model_exists,
    versions,
)
from mlwp.registry.traffic import (
    ALIASES,
    ROLLBACK_TAG,
    TRAFFIC_TAG,
    alias_version,
    aliases,
    delete_alias,
    deploy,
    get_traffic,
    promote,
    restore,
    rollback,
    set_alias,
    set_traffic,
    snapshot,
    validate_traffic,
)

__all__ = [
    "ALIASES",
    "LINEAGE_KEYS",
    "ROLLBACK_TAG",
    "TAG",
    "TEST_METRICS_TAG",
    "TRAFFIC_TAG",
    "Comparison",
    "GateDecision",
    "Lineage",
    "Registration",
    "RegistryError",
    "alias_version",
    "aliases",
    "client",
    "code_version",
    "compare_with_champion",
    "delete_alias",
    "deploy",
    "describe",
    "evaluate",
    "find_version",
    "gate",
    "get_traffic",
    "list_models",
    "load_alias",
    "model_project",
    "predicted_class_counts",
    "promote",
    "register",
    "registered_model_exists",
    "restore",
    "rollback",
    "set_alias",
    "set_traffic",
    "snapshot",
    "validate_traffic",
    "versions",
]
