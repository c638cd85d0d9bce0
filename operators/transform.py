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
    """Run the transform ``steps`` (mlwp.transform) on the upstream dataset.

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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not steps:
            raise ValueError(f"task {self.task_id!r}: 'steps' needs at least one step")
        for index, step in enumerate(steps):
            if not isinstance(step, dict) or "op" not in step:
                raise ValueError(f"task {self.task_id!r}: steps[{index}] needs an 'op'")
        self.steps = [dict(step) for step in steps]
        self.input = input

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp.transform import TransformError, run_transform
        from operators.links import dataset_url

        started = time.monotonic()
        storage = self.storage()
        dataset = self.upstream_document(context, "sha256", self.input)
        frame = storage.read_dataset(dataset["uri"])
        try:
            result = run_transform(frame, self.steps)
        except TransformError as exc:
            # A missing column or a bad step will fail the same way on a retry.
            raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc
        lineage = self.lineage(context)
        splits: dict[str, dict[str, Any]] = {}
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
