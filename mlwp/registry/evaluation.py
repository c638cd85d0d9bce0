"""Evaluation and the gate: the new model and the champion on the same test rows, and
whether the new model may be registered (the definition's ``min``, ``beat: champion``,
``margin``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mlwp.registry.connection import RegistryError
from mlwp.registry.registration import registered_model_exists
from mlwp.registry.traffic import alias_version
from mlwp.training.metrics import LOWER_IS_BETTER, better, compute_metrics

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities.model_registry import ModelVersion

    from mlwp.model import Model


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
