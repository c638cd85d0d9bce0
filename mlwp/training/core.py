"""Training itself: labels and matrices from raw splits, and a seeded XGBoost booster.

Shared by the entry point (one training) and the Optuna tuner (many trials in one process),
so a tuned trial and the final training compute exactly the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mlwp.errors import MlwpError
from mlwp.model import OBJECTIVES
from mlwp.model.columns import columns_from_frame
from mlwp.model.features import PreprocessingError
from mlwp.model.preprocessing import Preprocessing

if TYPE_CHECKING:
    import pandas as pd
    import xgboost

# Keys of the hyperparameters that are mlwp's own; every other key is an XGBoost parameter.
RESERVED = frozenset(
    {
        "target",
        "objective",
        "num_boost_round",
        "early_stopping_rounds",
        "seed",
        "params",
        "threshold",
        "verbose_eval",
        "data",
    }
)
# How the entry point holds the data: mlwp.training.external_memory decides "auto".
DATA_MODES = ("auto", "in_memory", "external_memory")
EVAL_METRICS = {
    "binary": ["logloss", "auc"],
    "multiclass": ["mlogloss", "merror"],
    "regression": ["mae", "rmse"],
}


class TrainingError(MlwpError):
    """Training cannot start or failed: bad hyperparameters, labels or data."""

    code = "training_error"


@dataclass
class TrainingConfig:
    """What one training needs besides data; built from the hyperparameters."""

    target: str
    objective: str = "binary"
    num_boost_round: int = 100
    early_stopping_rounds: int | None = None
    seed: int = 42
    threshold: float = 0.5
    verbose_eval: int = 10
    # auto, in_memory or external_memory (mlwp.training.external_memory)
    data: str = "auto"
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hyperparameters(cls, hyperparameters: Mapping[str, Any]) -> TrainingConfig:
        """Build from decoded hyperparameters (``sagemaker_*`` keys are ignored)."""
        values = {k: v for k, v in hyperparameters.items() if not k.startswith("sagemaker_")}
        target = values.get("target")
        if not isinstance(target, str) or not target:
            raise TrainingError("hyperparameters: 'target' (the label column) is required")
        objective = values.get("objective", "binary")
        if objective not in OBJECTIVES:
            raise TrainingError(
                f"hyperparameters.objective: expected one of {', '.join(OBJECTIVES)}, "
                f"got {objective!r}"
            )
        data = str(values.get("data") or "auto")
        if data not in DATA_MODES:
            raise TrainingError(
                f"hyperparameters.data: expected one of {', '.join(DATA_MODES)}, got {data!r}"
            )
        params = dict(values.get("params") or {})
        params.update({k: v for k, v in values.items() if k not in RESERVED})
        for key in ("objective", "num_class"):
            if key in params:
                raise TrainingError(
                    f"hyperparameters.{key}: set by mlwp from the objective; remove it"
                )
        try:
            early = values.get("early_stopping_rounds")
            return cls(
                target=target,
                objective=str(objective),
                num_boost_round=int(values.get("num_boost_round", 100)),
                early_stopping_rounds=None if early in (None, "", 0) else int(early),
                seed=int(values.get("seed", 42)),
                threshold=float(values.get("threshold", 0.5)),
                verbose_eval=int(values.get("verbose_eval", 10)),
                data=data,
                params=params,
            )
        except (TypeError, ValueError) as exc:
            raise TrainingError(f"hyperparameters: {exc}") from exc

    def xgboost_params(self, num_class: int | None) -> dict[str, Any]:
        """The full XGBoost parameter dict (objective, eval metrics and seed included)."""
        params: dict[str, Any] = {"tree_method": "hist", **self.params, "seed": self.seed}
        if self.objective == "binary":
            params["objective"] = "binary:logistic"
        elif self.objective == "multiclass":
            params["objective"] = "multi:softprob"
            params["num_class"] = num_class
        else:
            params["objective"] = "reg:squarederror"
        params.setdefault("eval_metric", EVAL_METRICS[self.objective])
        return params


@dataclass
class Dataset:
    """A split as the booster sees it: feature matrix and encoded labels."""

    matrix: np.ndarray[Any, Any]
    labels: np.ndarray[Any, Any]
    raw: pd.DataFrame


def label_classes(
    preprocessing: Preprocessing, train: pd.DataFrame, objective: str
) -> list[Any] | None:
    """The class labels: the label's ordinal categories, else the sorted training values."""
    if objective == "regression":
        return None
    classes = preprocessing.label_classes
    if classes is None:
        values = _label_values(preprocessing, train)
        present = [v for v in values.tolist() if not _missing(v)]
        classes = sorted(set(present), key=lambda v: (isinstance(v, str), v))
        classes = [int(c) if isinstance(c, float) and c.is_integer() else c for c in classes]
    if objective == "binary" and len(classes) != 2:
        raise TrainingError(
            f"objective binary needs exactly 2 classes in {preprocessing.target!r}, "
            f"found {len(classes)}: {classes[:10]}"
        )
    if objective == "multiclass" and len(classes) < 2:
        raise TrainingError(f"objective multiclass needs at least 2 classes, found {classes}")
    return list(classes)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _label_values(preprocessing: Preprocessing, frame: pd.DataFrame) -> np.ndarray[Any, Any]:
    target = preprocessing.target
    if target is None or target not in frame.columns:
        raise TrainingError(
            f"the data has no target column {target!r} "
            f"(columns: {', '.join(map(str, frame.columns))})"
        )
    columns = columns_from_frame(frame[[target]])
    try:
        return preprocessing.transform_label(columns.data[target])
    except PreprocessingError as exc:
        raise TrainingError(exc.message) from exc


def dataset(
    preprocessing: Preprocessing,
    frame: pd.DataFrame,
    objective: str,
    classes: Sequence[Any] | None,
    split: str,
) -> Dataset:
    """Matrix and encoded labels of one raw split."""
    try:
        matrix = preprocessing.transform_frame(frame)
    except PreprocessingError as exc:
        raise TrainingError(f"{split}: {exc.message}") from exc
    values = _label_values(preprocessing, frame)
    if objective == "regression":
        labels = np.asarray(values, dtype=np.float64)
        bad = np.flatnonzero(np.isnan(labels))
    elif preprocessing.label_classes is not None:
        labels = np.asarray(values, dtype=np.float64)  # the ordinal codes already
        bad = np.flatnonzero(np.isnan(labels))
    else:
        lookup = {(c if isinstance(c, str) else float(c)): i for i, c in enumerate(classes or [])}
        labels = np.full(len(values), np.nan)
        for i, value in enumerate(values.tolist()):
            if not _missing(value):
                labels[i] = lookup.get(value if isinstance(value, str) else float(value), np.nan)
        bad = np.flatnonzero(np.isnan(labels))
    if bad.size:
        raise TrainingError(
            f"{split}: target {preprocessing.target!r} is missing or not a known class in "
            f"{bad.size} row(s), first rows {bad[:5].tolist()}"
        )
    return Dataset(matrix, labels, frame)


def train_booster(
    config: TrainingConfig,
    train: Dataset,
    validation: Dataset | None,
    feature_names: Sequence[str],
    num_class: int | None,
    *,
    callbacks: Sequence[Any] = (),
    params: Mapping[str, Any] | None = None,
    verbose: bool = True,
) -> tuple[xgboost.Booster, int]:
    """Train a booster; returns it cut to the best iteration, and that iteration."""
    import xgboost

    names = list(feature_names)
    dtrain = xgboost.DMatrix(train.matrix, label=train.labels, feature_names=names)
    dvalid = None
    if validation is not None and len(validation.labels):
        dvalid = xgboost.DMatrix(validation.matrix, label=validation.labels, feature_names=names)
    return boost(
        config,
        dtrain,
        dvalid,
        num_class,
        callbacks=callbacks,
        params=params,
        verbose=verbose,
    )


def boost(
    config: TrainingConfig,
    dtrain: xgboost.DMatrix,
    dvalid: xgboost.DMatrix | None,
    num_class: int | None,
    *,
    callbacks: Sequence[Any] = (),
    params: Mapping[str, Any] | None = None,
    verbose: bool = True,
) -> tuple[xgboost.Booster, int]:
    """Boost on built matrices (in memory or external memory); the booster cut to its best
    iteration, and that iteration."""
    import xgboost

    evals = [(dtrain, "train")]
    if dvalid is not None:
        evals.append((dvalid, "validation"))
    full_params = config.xgboost_params(num_class)
    full_params.update(params or {})
    early = config.early_stopping_rounds if len(evals) > 1 else None
    try:
        booster = xgboost.train(
            full_params,
            dtrain,
            num_boost_round=config.num_boost_round,
            evals=evals,
            early_stopping_rounds=early,
            verbose_eval=config.verbose_eval if verbose else False,
            callbacks=list(callbacks) or None,
        )
    except xgboost.core.XGBoostError as exc:
        raise TrainingError(f"xgboost: {exc}".splitlines()[0]) from exc
    best = booster.best_iteration if early else booster.num_boosted_rounds() - 1
    if early and best + 1 < booster.num_boosted_rounds():
        booster = booster[: best + 1]
    return booster, int(best)


def predict_raw(booster: xgboost.Booster, matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Booster outputs (probabilities or values) of a feature matrix."""
    return np.asarray(booster.inplace_predict(matrix), dtype=np.float64)
