"""The metric names of each objective, importable without numpy (definitions check them)."""

from __future__ import annotations

METRICS_BY_OBJECTIVE: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "accuracy", "f1", "logloss"),
    "multiclass": ("accuracy", "f1_macro", "logloss"),
    "regression": ("rmse", "mae", "r2"),
}
# Metrics where lower is better; every other one is maximised.
LOWER_IS_BETTER = frozenset({"logloss", "rmse", "mae"})
