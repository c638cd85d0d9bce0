"""What the train task does: (tune,) train through the backend, and track it all in MLflow.

:func:`train_model` opens one MLflow run per training (tuning trials are its nested runs),
trains with the local backend (the entry point in a subprocess) and logs params, metrics,
the two-flavour model and plots. The SageMaker backend trains elsewhere and then calls
:func:`mlwp.training.tracking.log_model_run` with the downloaded model directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlwp.training.core import TrainingConfig, TrainingError, dataset, label_classes
from mlwp.training.local import StoredSplit, train_local
from mlwp.training.tracking import TrackedModel, log_model_run
from mlwp.training.tracking import experiment_id as tracking_experiment_id

if TYPE_CHECKING:
    import pandas as pd

    from mlwp.model.preprocessing import Preprocessing


@dataclass
class TrainingOutcome:
    """Everything downstream tasks need (all JSON-friendly except ``model_dir``)."""

    run_id: str
    experiment_id: str
    model_uri: str
    model_id: str | None
    model_dir: Path
    metrics: dict[str, float]
    hyperparameters: dict[str, Any]
    tuning: dict[str, Any] | None = field(default=None)

    def to_xcom(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "model_uri": self.model_uri,
            "model_id": self.model_id,
            "metrics": self.metrics,
            "hyperparameters": self.hyperparameters,
        }


def hyperparameters_of(
    *,
    target: str,
    objective: str = "binary",
    params: Mapping[str, Any] | None = None,
    num_boost_round: int = 100,
    early_stopping_rounds: int | None = None,
    seed: int = 42,
    threshold: float | None = None,
    data: str | None = None,
) -> dict[str, Any]:
    """The entry point's hyperparameters from a train task's fields."""
    hyperparameters = {
        "target": target,
        "objective": objective,
        "num_boost_round": num_boost_round,
        "early_stopping_rounds": early_stopping_rounds,
        "seed": seed,
        **dict(params or {}),
    }
    if threshold is not None:
        hyperparameters["threshold"] = threshold
    if data is not None:
        hyperparameters["data"] = data
    return hyperparameters


def train_model(
    splits: Mapping[str, pd.DataFrame | StoredSplit],
    preprocessing: Preprocessing | None,
    hyperparameters: Mapping[str, Any],
    *,
    experiment: str,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    tuning: Any = None,
    workdir: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    timeout: float | None = None,
) -> TrainingOutcome:
    """Tune (optionally), train with the local backend and log the run; see module doc.

    A :class:`StoredSplit` stays in storage: the entry point streams its files (with
    ``data: external_memory``), and the MLflow run's input example, plots and drift baseline
    see a seeded sample of it (``local.SAMPLE_ROWS`` rows). Tuning needs every split in
    memory, so it is refused for stored splits.
    """
    import mlflow

    stored = sorted(name for name, split in splits.items() if isinstance(split, StoredSplit))
    if stored and tuning is not None:
        raise TrainingError(
            "tuning trains every trial on data held in memory and cannot run with "
            f"external memory (the {', '.join(stored)} split(s) stay in storage): remove "
            "'tuning', or set 'data: in_memory' on a worker that holds the splits, or tune "
            "on a sample in another workflow"
        )

    client = mlflow.MlflowClient()
    experiment_id = tracking_experiment_id(client, experiment)
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={"mlwp.backend": "local", **dict(tags or {})},
    )
    run_id = run.info.run_id
    hyper = dict(hyperparameters)
    tuning_summary: dict[str, Any] | None = None
    try:
        if tuning is not None:
            tuning_summary = _tune(
                {n: s for n, s in splits.items() if not isinstance(s, StoredSplit)},
                preprocessing,
                hyper,
                tuning,
                experiment_id=experiment_id,
                run_id=run_id,
            )
            hyper.update(tuning_summary["best_params"])
        result = train_local(
            splits, preprocessing, hyper, workdir=workdir, on_line=on_line, timeout=timeout
        )
        metrics = dict(result.metrics)
        if tuning_summary is not None:
            metrics["tuning_best_value"] = float(tuning_summary["best_value"])
        frames = {
            name: split.sample() if isinstance(split, StoredSplit) else split
            for name, split in splits.items()
        }
        tracked: TrackedModel = log_model_run(
            run_id, result.model_dir, splits=frames, metrics=metrics, params=hyper
        )
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return TrainingOutcome(
        run_id=run_id,
        experiment_id=experiment_id,
        model_uri=tracked.model_uri,
        model_id=tracked.model_id,
        model_dir=result.model_dir,
        metrics=metrics,
        hyperparameters=hyper,
        tuning=tuning_summary,
    )


def _tune(
    splits: Mapping[str, pd.DataFrame],
    preprocessing: Preprocessing | None,
    hyper: Mapping[str, Any],
    tuning: Any,
    *,
    experiment_id: str,
    run_id: str,
) -> dict[str, Any]:
    from mlwp.model.preprocessing import Preprocessing as _Preprocessing
    from mlwp.training.tuning import tune

    started = time.monotonic()
    config = TrainingConfig.from_hyperparameters(hyper)
    if "validation" not in splits:
        raise TrainingError("tuning needs a validation split (add validation_size to split)")
    pre = (preprocessing or _Preprocessing.identity(splits["train"])).with_target(config.target)
    classes = label_classes(pre, splits["train"], config.objective)
    train = dataset(pre, splits["train"], config.objective, classes, "train")
    validation = dataset(pre, splits["validation"], config.objective, classes, "validation")
    num_class = len(classes) if config.objective == "multiclass" and classes else None
    result = tune(
        config,
        tuning,
        train,
        validation,
        feature_names=pre.outputs,
        num_class=num_class,
        experiment_id=experiment_id,
        parent_run_id=run_id,
    )
    return {
        "best_params": result.best_params,
        "best_value": result.best_value,
        "trials": result.trials,
        "seconds": time.monotonic() - started,
    }
