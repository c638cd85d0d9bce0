"""EvaluateOperator: metrics of the new model and of the champion on the same test split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from operators._common import MlwpOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


def evaluation_document(
    operator: MlwpOperator,
    training: dict[str, Any],
    metrics: list[str] | None,
    model_name: str | None,
) -> dict[str, Any]:
    """Score the trained model, and the champion of ``model_name`` if any, on the test split.

    ``metrics`` holds every metric computed (the gate may use any); ``shown`` those asked for.
    """
    from mlwp import registry
    from operators import _registry

    splits = training["splits"]
    split = "test" if "test" in splits else ("validation" if "validation" in splits else "train")
    frame = operator.storage().read_dataset(splits[split]["uri"])
    model = _registry.load_model(training["model_uri"])
    if model_name:
        comparison = registry.compare_with_champion(model_name, model, frame)
    else:
        comparison = registry.Comparison(registry.evaluate(model, frame))
    champion = (
        None
        if comparison.champion is None
        else {"version": comparison.champion_version, "metrics": comparison.champion}
    )
    predicted = registry.predicted_class_counts(model, frame)
    if predicted is not None and len(predicted) == 1:
        [(only, rows)] = predicted.items()
        operator.log.warning(
            "The model predicts class %r for all %d rows of the %s split: it never predicts "
            "the other class, so F1 is 0 and accuracy is the majority share. The target is "
            "probably imbalanced: set the train task's 'threshold' below 0.5, or "
            "params.scale_pos_weight, and gate on roc_auc",
            only,
            rows,
            split,
        )
    return {
        "split": split,
        "dataset_uri": splits[split]["uri"],
        "dataset_sha256": splits[split]["sha256"],
        "metrics": comparison.new,
        "shown": _registry.only(comparison.new, metrics),
        "champion": champion,
        "predicted_classes": predicted,
    }


class EvaluateOperator(MlwpOperator):
    """Compute ``metrics`` of the trained model on the held-out test split.

    When a downstream register task names a model with a champion, the champion is scored
    on the same rows, so the gate and the approver compare like with like. The metrics are
    also logged to the training's MLflow run as ``eval_<metric>``.
    """

    template_fields: Sequence[str] = ("metrics", "input")
    ui_color = "#fadbd8"

    def __init__(
        self,
        *,
        metrics: list[str] | None = None,
        input: str | None = None,
        model: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.metrics = list(metrics or [])
        self.input = input
        self.model = model

    def _model_name(self) -> str | None:
        if self.model:
            return self.model
        for task in self.get_flat_relatives(upstream=False):
            name = getattr(task, "model", None)
            if type(task).__name__ == "RegisterOperator" and isinstance(name, str):
                return name
        return None

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp import registry
        from operators import _registry

        _registry.use_tracking_server()
        training = self.upstream_document(context, "model_uri", self.input)
        evaluation = evaluation_document(self, training, self.metrics or None, self._model_name())
        mlflow_client = registry.client()
        for name, value in evaluation["shown"].items():
            mlflow_client.log_metric(training["run_id"], f"eval_{name}", value)
        self.log.info(
            "New model on %s (%s): %s; champion: %s",
            evaluation["split"],
            evaluation["dataset_uri"],
            evaluation["shown"],
            evaluation["champion"],
        )
        for name, value in evaluation["shown"].items():
            self.stat("gauge", f"evaluate.{name}", value)
        return {**training, "evaluation": evaluation}
