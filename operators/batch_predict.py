"""BatchPredictOperator: score a stored dataset with a registered model alias."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from operators._common import MlwpOperator, check_choice

if TYPE_CHECKING:
    from airflow.sdk import Context

ALIASES = ("champion", "challenger")


class BatchPredictOperator(MlwpOperator):
    """Score the upstream dataset with ``models:/<model>@<alias>`` into storage.

    The output is the input rows plus ``prediction`` (and ``probability_<class>`` columns for
    classifiers), stored as the dataset ``<task_id>`` and, when ``output`` is set, also
    written as Parquet at that URI (or path relative to the project folder).
    """

    # `output` is BaseOperator's XComArg property, hence `output_path` for the field.
    template_fields: Sequence[str] = ("model", "alias", "input", "output_path")
    ui_color = "#f9e79f"

    def __init__(
        self,
        *,
        model: str,
        alias: str = "champion",
        input: str | None = None,
        output: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not model:
            raise ValueError(f"task {self.task_id!r}: 'model' is required")
        check_choice(self.task_id, "alias", alias, ALIASES)
        self.model = model
        self.alias = alias
        self.input = input
        self.output_path = output

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp import registry
        from mlwp.etl import resolve_source
        from mlwp.model import RecordError
        from mlwp.storage import frame_to_parquet_bytes
        from operators import _registry

        _registry.use_tracking_server()
        version = registry.alias_version(self.model, self.alias)
        if version is None:
            raise AirflowFailException(
                f"task {self.task_id!r}: model {self.model!r} has no {self.alias!r} alias yet"
            )
        storage = self.storage()
        dataset = self.upstream_document(context, "sha256", self.input)
        frame = storage.read_dataset(dataset["uri"])
        model = _registry.load_model(f"models:/{self.model}@{self.alias}")
        records = frame.to_dict(orient="records")
        try:
            result = model.predict(records)
        except RecordError as exc:
            raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc
        scored = frame.copy()
        scored["prediction"] = result.predictions
        if result.probabilities is not None and model.classes:
            for index, label in enumerate(model.classes):
                scored[f"probability_{label}"] = [row[index] for row in result.probabilities]
        ref = storage.write_dataset(
            scored,
            project=self.project,
            name=self.task_id,
            source=dataset["uri"],
            metadata={"model": self.model, "alias": self.alias, "version": str(version.version)},
        )
        storage.update_sidecar(ref.uri, produced_by=self.lineage(context))
        output_uri = None
        if self.output_path:
            output_uri = resolve_source(self.output_path, self.project_dir)
            storage.write_bytes(output_uri, frame_to_parquet_bytes(scored))
        self.log.info(
            "Scored %s rows with %s@%s (version %s) -> %s",
            len(scored),
            self.model,
            self.alias,
            version.version,
            ref.uri,
        )
        self.emit_dataset_event(
            context,
            {
                "uri": ref.uri,
                "sha256": ref.sha256,
                "rows": ref.rows,
                "model": self.model,
                "version": str(version.version),
            },
        )
        self.stat("gauge", "batch_predict.rows", len(scored))
        return {
            **ref.to_dict(),
            "model": self.model,
            "version": str(version.version),
            "output_uri": output_uri,
            "task_id": self.task_id,
        }
