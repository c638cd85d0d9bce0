"""TransformOperator: declarative feature steps and the train/validation/test split."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from operators._common import MlwpOperator
from operators.links import DatasetLink

if TYPE_CHECKING:
    from airflow.sdk import Context

PREPROCESSING_NAME = "preprocessing.json"


class TransformOperator(MlwpOperator):
    """Run the transform ``steps`` (mlwp.data.transform) on the upstream dataset.

    Each split (train, validation, test: the raw rows after the leading dataset steps, label
    included) is stored as its own dataset ``<task_id>-<split>``; the fitted preprocessing is
    stored as JSON beside the train split. The document returned holds ``splits`` (dataset
    documents) and ``preprocessing_uri``; the asset event carries the same.
    """

    template_fields: Sequence[str] = ("steps", "input")
    template_fields_renderers = {"steps": "json"}
    ui_color = "#d5f5e3"
    operator_extra_links = (DatasetLink(),)

    def __init__(
        self,
        *,
        steps: list[dict[str, Any]],
        input: str | None = None,
        fit_sample_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fit_sample_rows = fit_sample_rows
        if not steps:
            raise ValueError(f"task {self.task_id!r}: 'steps' needs at least one step")
        for index, step in enumerate(steps):
            if not isinstance(step, dict) or "op" not in step:
                raise ValueError(f"task {self.task_id!r}: steps[{index}] needs an 'op'")
        self.steps = [dict(step) for step in steps]
        self.input = input

    def _transform_partitions(self, storage: Any, dataset: dict[str, Any]) -> Any:
        """A partitioned input: fit on a seeded sample, split partition by partition."""
        from mlwp.data.transform import TransformError
        from mlwp.data.transform_partitions import DEFAULT_SAMPLE_ROWS, transform_partitioned

        try:
            result = transform_partitioned(
                storage,
                dataset["uri"],
                self.steps,
                project=self.project,
                name=self.task_id,
                sample_rows=self.fit_sample_rows or DEFAULT_SAMPLE_ROWS,
                metadata={"input_sha256": dataset["sha256"]},
            )
        except TransformError as exc:
            raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc
        self.log.info(
            "Fitted on a seeded sample of %s of %s rows (seed %s); split %s partitions",
            result.fit_sample["rows"],
            result.fit_sample["of_rows"],
            result.fit_sample["seed"],
            dataset.get("partitions"),
        )
        return result

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp.data.transform import TransformError, run_transform
        from operators.links import dataset_url

        started = time.monotonic()
        storage = self.storage()
        dataset = self.upstream_document(context, "sha256", self.input)
        lineage = self.lineage(context)
        splits: dict[str, dict[str, Any]] = {}
        fit_sample: dict[str, Any] | None = None
        if dataset.get("layout") == "partitioned":
            result: Any = self._transform_partitions(storage, dataset)
            fit_sample = result.fit_sample
            for split, ref in result.splits.items():
                storage.update_sidecar(ref.uri, produced_by=lineage)
                splits[split] = ref.to_dict()
                self.log.info("Split %s: %s rows -> %s", split, ref.rows, ref.uri)
        else:
            frame = storage.read_dataset(dataset["uri"])
            try:
                result = run_transform(frame, self.steps)
            except TransformError as exc:
                # A missing column or a bad step will fail the same way on a retry.
                raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc
            for split, rows in result.splits.items():
                ref = storage.write_dataset(
                    rows,
                    project=self.project,
                    name=f"{self.task_id}-{split}",
                    source=dataset["uri"],
                    metadata={"split": split, "input_sha256": dataset["sha256"]},
                )
                storage.update_sidecar(ref.uri, produced_by=lineage)
                splits[split] = ref.to_dict()
                self.log.info("Split %s: %s rows -> %s", split, ref.rows, ref.uri)
        DatasetLink.persist(context, dataset_url(*(s["uri"] for s in splits.values())))
        preprocessing = result.preprocessing.to_json()
        train_uri = splits["train"]["uri"]
        preprocessing_uri = train_uri[: -len(".parquet")] + f".{PREPROCESSING_NAME}"
        storage.write_bytes(preprocessing_uri, preprocessing)
        document = {
            "splits": splits,
            "preprocessing_uri": preprocessing_uri,
            "input": {"uri": dataset["uri"], "sha256": dataset["sha256"]},
            "rows_in": result.rows_in,
            "rows_filtered": result.rows_filtered,
            # Per suite: success, statistics, result and data docs URIs (from the sidecar).
            "validation": storage.read_sidecar(dataset["uri"]).get("validation") or {},
            "task_id": self.task_id,
        }
        if fit_sample is not None:
            document["fit_sample"] = fit_sample
        self.emit_dataset_event(
            context,
            {
                "splits": {
                    name: {"uri": s["uri"], "sha256": s["sha256"], "rows": s["rows"]}
                    for name, s in splits.items()
                },
                "preprocessing_uri": preprocessing_uri,
                "input_sha256": dataset["sha256"],
                "run_id": lineage["run_id"],
            },
        )
        self.stat("timing", "transform.seconds", (time.monotonic() - started) * 1000)
        return document
