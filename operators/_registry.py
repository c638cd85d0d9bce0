"""Thin glue between the operators and :mod:`mlwp.registry` (the MLflow registry helpers).

The registry state is the contract with the serving service (DESIGN.md, contract 4); every
rule about it (lineage tags, idempotent registration, the gate, aliases, traffic, promotion)
lives in ``mlwp.registry``. Here: pointing MLflow at the platform's tracking server, and
loading a model by URI. mlflow is imported inside the functions.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from mlwp.model import Model


def use_tracking_server() -> None:
    """Point the MLflow client library at the platform's tracking server."""
    import mlflow

    from operators._common import mlflow_tracking_uri

    mlflow.set_tracking_uri(mlflow_tracking_uri())


def load_model(model_uri: str) -> Model:
    """Download an MLflow model (``runs:/``, ``models:/``) and load it as an mlwp model."""
    import mlflow

    from mlwp.model import load

    use_tracking_server()
    folder = tempfile.mkdtemp(prefix="mlwp-model-")
    return load(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder))


def only(metrics: dict[str, float], names: list[str] | None) -> dict[str, float]:
    """The metrics named (all when ``names`` is empty), in the order given."""
    if not names:
        return metrics
    return {name: metrics[name] for name in names if name in metrics}


def evaluate_model(model: Model, frame: pd.DataFrame, names: list[str] | None) -> dict[str, Any]:
    """Metrics of ``model`` on raw rows ``frame`` (``mlwp.registry.evaluate``)."""
    from mlwp import registry

    return only(registry.evaluate(model, frame), names)
