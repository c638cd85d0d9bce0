"""MLflow registry and evaluation helpers shared by evaluate, register, deploy, batch_predict.

The registry state is the contract with the serving service (DESIGN.md, contract 4): a
registered model per definition ``model:``, versions carrying ``mlwp.*`` lineage tags, the
aliases ``champion`` and ``challenger``, and the registered-model tag ``mlwp.traffic`` (JSON
alias -> percent). mlflow, pandas and xgboost are imported inside the functions.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import pandas as pd

    from mlwp.model import Model

TRAFFIC_TAG = "mlwp.traffic"
ALIASES = ("champion", "challenger")


def client() -> Any:
    """An MLflow client pointed at the platform's tracking server."""
    import mlflow

    from operators._common import mlflow_tracking_uri

    mlflow.set_tracking_uri(mlflow_tracking_uri())
    return mlflow.MlflowClient()


def load_model(model_uri: str) -> Model:
    """Download an MLflow model (``runs:/``, ``models:/``) and load it as an mlwp model."""
    import mlflow

    from mlwp.model import load

    client()
    folder = tempfile.mkdtemp(prefix="mlwp-model-")
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder)
    return load(local)


def evaluate_model(
    model: Model, frame: pd.DataFrame, metrics: list[str] | None
) -> dict[str, float]:
    """Metrics of ``model`` on raw rows ``frame`` (target included), as training computes them."""
    from mlwp.training.core import dataset, predict_raw
    from mlwp.training.metrics import compute_metrics

    data = dataset(model.preprocessing, frame, model.objective, model.classes, "test")
    values = compute_metrics(
        model.objective, data.labels, predict_raw(model.booster, data.matrix), model.threshold
    )
    if metrics:
        return {name: values[name] for name in metrics if name in values}
    return values


def alias_version(name: str, alias: str) -> Any | None:
    """The model version holding ``alias``, or None when the model or alias is absent."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def find_version(name: str, tags: Mapping[str, str]) -> Any | None:
    """The version of ``name`` whose tags include all of ``tags`` (idempotent registration)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client().search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    for version in versions:
        if all(version.tags.get(key) == value for key, value in tags.items()):
            return version
    return None


def register(name: str, model_uri: str, run_id: str, tags: Mapping[str, str]) -> Any:
    """Create a version of ``name`` from ``model_uri`` with ``tags`` (model created if new)."""
    import mlflow

    client()
    return mlflow.register_model(model_uri=model_uri, name=name, tags=dict(tags))


def set_alias(name: str, alias: str, version: str) -> str | None:
    """Point ``alias`` at ``version``; returns the version it pointed at before (or None)."""
    previous = alias_version(name, alias)
    mlflow_client = client()
    if previous is not None and str(previous.version) != str(version):
        mlflow_client.set_registered_model_tag(name, f"mlwp.previous_{alias}", previous.version)
    mlflow_client.set_registered_model_alias(name, alias, str(version))
    return None if previous is None else str(previous.version)


def set_traffic(name: str, traffic: Mapping[str, int]) -> None:
    """Store the traffic split (alias -> percent) in the registered-model tag."""
    client().set_registered_model_tag(name, TRAFFIC_TAG, orjson.dumps(dict(traffic)).decode())


def code_version(folder: str | None) -> str:
    """The git commit of the project's code, or ``unknown`` outside a git checkout."""
    if not folder:
        return "unknown"
    try:
        result = subprocess.run(
            ["git", "-C", folder, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def gate_decision(
    gate: Mapping[str, Any] | None,
    metrics: Mapping[str, float],
    champion_metrics: Mapping[str, float] | None,
) -> dict[str, Any]:
    """Decide the registration gate; returns ``passed`` and one reason per check."""
    from mlwp.training.metrics import LOWER_IS_BETTER, better

    if not gate:
        return {"passed": True, "reasons": [], "summary": "no gate"}
    metric = str(gate["metric"])
    reasons: list[str] = []
    passed = True
    value = metrics.get(metric)
    if value is None:
        return {
            "passed": False,
            "reasons": [f"metric {metric!r} was not computed (have {', '.join(sorted(metrics))})"],
            "summary": f"{metric} missing",
        }
    minimum = gate.get("min")
    if minimum is not None:
        ok = value <= minimum if metric in LOWER_IS_BETTER else value >= minimum
        comparison = "<=" if metric in LOWER_IS_BETTER else ">="
        reasons.append(f"{metric} {value:.4f} {comparison} {minimum}: {'yes' if ok else 'no'}")
        passed = passed and ok
    if gate.get("beat") == "champion":
        margin = float(gate.get("margin") or 0.0)
        old = (champion_metrics or {}).get(metric)
        if old is None:
            reasons.append("no champion to beat")
        else:
            ok = better(metric, value, old, margin)
            reasons.append(
                f"{metric} {value:.4f} vs champion {old:.4f} (margin {margin}): "
                f"{'beats' if ok else 'does not beat'}"
            )
            passed = passed and ok
    return {"passed": passed, "reasons": reasons, "summary": "; ".join(reasons) or "no checks"}
