"""One MLflow run per training: params, metrics, the two-flavour model, plots, drift baseline.

Works for any backend: it only needs the model directory the entry point wrote (locally, or
downloaded from SageMaker's ``model.tar.gz``) and the raw splits for the plots.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlwp.model import load
from mlwp.model.features import Feature
from mlwp.training import flavor
from mlwp.training.core import TrainingError

if TYPE_CHECKING:
    import pandas as pd

    from mlwp.model import Model

MODEL_ARTIFACT = "model"
_COLSPEC_TYPES = {"float": "double", "int": "long", "bool": "boolean", "str": "string"}


@dataclass
class TrackedModel:
    """The MLflow identity of a logged model."""

    run_id: str
    experiment_id: str
    model_uri: str
    model_id: str | None
    metrics: dict[str, float]


class LocalArtifactRoot(TrainingError):
    """An MLflow experiment keeps its artifacts in a folder of one host, in production."""

    code = "local_artifact_root"


def experiment_id(client: Any, name: str) -> str:
    """The id of the experiment ``name``, created if needed (two tasks may race to create it).

    A new experiment gets the tracking server's default artifact root, ``mlflow-artifacts:/``:
    clients send artifacts to the server, which stores them at its
    ``--artifacts-destination`` (S3 in production), so no client writes to its own disk. An
    experiment created earlier with a ``file://`` root (an old server, ``--default-artifact-
    root``, a local tracking store) would make every client write to its own disk, and MLflow
    cannot move an experiment's root: on a production-shaped platform that is refused, naming
    the experiment and the fix; on a laptop (one disk) it still works and is left alone.
    """
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return str(client.create_experiment(name))
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
        found = client.get_experiment_by_name(name)
    check_artifact_root(found)
    return str(found.experiment_id)


def check_artifact_root(experiment: Any) -> None:
    """Refuse, on a production-shaped platform, an experiment whose artifacts are local."""
    from urllib.parse import urlparse

    from mlwp.settings import get_settings

    location = str(experiment.artifact_location or "")
    if urlparse(location).scheme not in ("", "file") or not get_settings().production_shaped:
        return
    raise LocalArtifactRoot(
        f"MLflow experiment {experiment.name!r} (id {experiment.experiment_id}) keeps its "
        f"artifacts at {location}, a folder on one host: runs logged from other hosts would "
        f"land on their own disks. MLflow cannot move it; rename it (`mlflow experiments "
        f"rename --experiment-id {experiment.experiment_id} --new-name "
        f"'{experiment.name} (local artifacts)'`) and the next run creates {experiment.name!r} "
        "again under the tracking server's artifact proxy (mlflow-artifacts:/)."
    )


def mlflow_metric_name(name: str) -> str:
    """``validation:roc_auc`` -> ``validation_roc_auc`` (MLflow refuses ':' on Windows)."""
    return name.replace(":", "_")


def signature(features: list[Feature]) -> Any:
    """An MLflow signature on the raw features (what a client sends)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [ColSpec(_COLSPEC_TYPES[f.dtype], f.name, required=f.required) for f in features]
        )
    )


def input_example(model: Model, frame: pd.DataFrame, rows: int = 3) -> pd.DataFrame:
    """A few raw rows restricted to the model's features."""
    names = [f.name for f in model.features if f.name in frame.columns]
    return frame[names].head(rows).reset_index(drop=True)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


def log_model_run(
    run_id: str,
    model_dir: str | Path,
    *,
    splits: Mapping[str, pd.DataFrame],
    metrics: Mapping[str, float],
    params: Mapping[str, Any],
) -> TrackedModel:
    """Log params, metrics, plots and the model into the (active or given) MLflow run."""
    import mlflow
    from mlflow.models import Model as MlflowModel

    client = mlflow.MlflowClient()
    model = load(model_dir)
    client.log_batch(
        run_id,
        params=[mlflow.entities.Param(k, v) for k, v in flatten_params(params).items()],
        metrics=[
            mlflow.entities.Metric(mlflow_metric_name(k), float(v), 0, 0)
            for k, v in metrics.items()
        ],
    )
    example_frame = splits.get("train")
    example = input_example(model, example_frame) if example_frame is not None else None
    info = MlflowModel.log(
        None,
        name=MODEL_ARTIFACT,
        flavor=flavor,
        flavor_name="mlwp",
        run_id=run_id,
        model_dir=str(model_dir),
        signature=signature(model.features),
        input_example=example,
        metadata={"mlwp_objective": model.objective},
    )
    log_plots(run_id, model, splits)
    if "train" in splits and len(splits["train"]):
        # the drift baseline of this version (docs/monitoring.md, "Drift")
        from mlwp.monitoring.drift import log_baseline

        log_baseline(run_id, model, splits["train"])
    run = client.get_run(run_id)
    return TrackedModel(
        run_id=run_id,
        experiment_id=run.info.experiment_id,
        model_uri=info.model_uri,
        model_id=getattr(info, "model_id", None),
        metrics=dict(metrics),
    )


def log_plots(run_id: str, model: Model, splits: Mapping[str, pd.DataFrame]) -> None:
    """Feature importance, and ROC and confusion matrix (or predicted vs actual) on the
    test split (the validation split when there is no test split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import numpy as np
    from sklearn import metrics as skm

    from mlwp.training.core import dataset

    client = mlflow.MlflowClient()
    scores = model.booster.get_score(importance_type="gain")
    top = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[:20]
    fig, ax = plt.subplots(figsize=(8, 6))
    ax.barh([k for k, _ in reversed(top)], [v for _, v in reversed(top)])
    ax.set_xlabel("gain")
    ax.set_title("Feature importance")
    fig.tight_layout()
    client.log_figure(run_id, fig, "plots/feature_importance.png")
    plt.close(fig)

    split_name = "test" if "test" in splits else "validation" if "validation" in splits else None
    if split_name is None or model.target is None or len(splits[split_name]) == 0:
        return
    data = dataset(
        model.preprocessing, splits[split_name], model.objective, model.classes, split_name
    )
    raw = np.asarray(model.booster.inplace_predict(data.matrix), dtype=np.float64)
    if model.objective == "regression":
        fig, ax = plt.subplots(figsize=(6, 6))
        ax.scatter(data.labels, raw, s=6, alpha=0.5)
        ax.set_xlabel("actual")
        ax.set_ylabel("predicted")
        ax.set_title(f"Predicted vs actual ({split_name})")
        client.log_figure(run_id, fig, "plots/predicted_vs_actual.png")
        plt.close(fig)
        return
    classes = [str(c) for c in model.classes or []]
    if model.objective == "binary":
        fig, ax = plt.subplots(figsize=(6, 6))
        skm.RocCurveDisplay.from_predictions(data.labels, raw.reshape(-1), ax=ax)
        ax.set_title(f"ROC ({split_name})")
        client.log_figure(run_id, fig, "plots/roc.png")
        plt.close(fig)
        predicted = (raw.reshape(-1) >= model.threshold).astype(int)
    else:
        predicted = np.argmax(raw.reshape(len(data.labels), -1), axis=1)
    fig, ax = plt.subplots(figsize=(6, 6))
    skm.ConfusionMatrixDisplay.from_predictions(
        data.labels.astype(int),
        predicted,
        labels=list(range(len(classes))),
        display_labels=classes,
        ax=ax,
        colorbar=False,
    )
    ax.set_title(f"Confusion matrix ({split_name})")
    client.log_figure(run_id, fig, "plots/confusion_matrix.png")
    plt.close(fig)
