"""Evaluation metrics and the metric line format SageMaker metric definitions match.

The entry point prints one line per final metric::

    mlwp-metric validation:roc_auc=0.843215

besides XGBoost's own per-round evaluation lines (``[12]\ttrain-logloss:...\tvalidation-auc:...``,
which CloudWatch shows with ``#011`` for the tab). :func:`metric_regex` gives the regex of a
metric name for a SageMaker ``MetricDefinition``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from mlwp.training.metric_names import LOWER_IS_BETTER, METRICS_BY_OBJECTIVE

__all__ = ["LOWER_IS_BETTER", "METRICS_BY_OBJECTIVE", "better", "compute_metrics"]

METRIC_PREFIX = "mlwp-metric"
_NUMBER = r"([-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|nan|inf))"
# The names the entry point prints: <split>:<metric> for split in train, validation, test.
SPLIT_NAMES = ("train", "validation", "test")


def metric_line(name: str, value: float) -> str:
    """The line the entry point prints for one metric."""
    return f"{METRIC_PREFIX} {name}={value:.6f}"


def metric_regex(name: str) -> str:
    """Regex (one capture group: the value) matching :func:`metric_line` output for ``name``."""
    return rf"{METRIC_PREFIX} {re.escape(name)}={_NUMBER}"


def metric_definitions(
    objective: str, splits: tuple[str, ...] = ("validation",)
) -> list[dict[str, str]]:
    """SageMaker MetricDefinitions for every metric of ``objective`` on ``splits``."""
    return [
        {"Name": f"{split}:{metric}", "Regex": metric_regex(f"{split}:{metric}")}
        for split in splits
        for metric in METRICS_BY_OBJECTIVE[objective]
    ]


def parse_metric_lines(text: str) -> dict[str, float]:
    """The metrics printed in ``text`` (the last value wins)."""
    pattern = re.compile(rf"^{METRIC_PREFIX} ([A-Za-z0-9_:.-]+)={_NUMBER}\s*$", re.MULTILINE)
    return {m.group(1): float(m.group(2)) for m in pattern.finditer(text)}


def compute_metrics(
    objective: str, y_true: Any, raw: Any, threshold: float = 0.5
) -> dict[str, float]:
    """Metrics of booster outputs ``raw`` against encoded labels ``y_true``.

    ``raw`` is the positive-class probability (binary), the class probability matrix
    (multiclass) or the prediction (regression); ``y_true`` holds class indices or values.
    """
    from sklearn import metrics as skm

    y = np.asarray(y_true, dtype=np.float64)
    scores = np.asarray(raw, dtype=np.float64)
    out: dict[str, float] = {}
    if len(y) == 0:
        return out
    if objective == "binary":
        positive = scores.reshape(-1)
        predicted = (positive >= threshold).astype(np.int64)
        if len(np.unique(y)) == 2:
            out["roc_auc"] = float(skm.roc_auc_score(y, positive))
        out["accuracy"] = float(skm.accuracy_score(y, predicted))
        out["f1"] = float(skm.f1_score(y, predicted, zero_division=0))
        out["logloss"] = float(skm.log_loss(y, np.clip(positive, 1e-15, 1 - 1e-15), labels=[0, 1]))
    elif objective == "multiclass":
        probabilities = scores.reshape(len(y), -1)
        # float32 softmax outputs miss 1.0 by a few ulps; log_loss warns about that
        probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
        predicted = np.argmax(probabilities, axis=1)
        out["accuracy"] = float(skm.accuracy_score(y, predicted))
        out["f1_macro"] = float(skm.f1_score(y, predicted, average="macro", zero_division=0))
        out["logloss"] = float(
            skm.log_loss(y, probabilities, labels=list(range(probabilities.shape[1])))
        )
    else:
        predicted_values = scores.reshape(-1)
        out["rmse"] = float(math.sqrt(skm.mean_squared_error(y, predicted_values)))
        out["mae"] = float(skm.mean_absolute_error(y, predicted_values))
        if len(y) > 1:
            out["r2"] = float(skm.r2_score(y, predicted_values))
    return out


def better(metric: str, new: float, old: float, margin: float = 0.0) -> bool:
    """Whether ``new`` beats ``old`` on ``metric`` by more than ``margin``.

    Strict: a tie is not better, so an identical retrain never displaces the champion
    (a gate's ``margin`` is how much better it must be; negative only with ``allow_worse``).
    """
    improvement = old - new if metric in LOWER_IS_BETTER else new - old
    return improvement > margin
