"""Batch prediction: score a stored dataset with a registered model alias.

Two forms (docs/scale.md): :class:`BatchPredictOperator`, one task reading the dataset whole;
and, with ``map_partitions: true``, :func:`batch_predict_tasks`: a plan task pins the model
version and lists the input's partitions, Airflow dynamic task mapping runs one scoring task
per partition (spread over the workers), each scoring its file in chunks, and a collect task
gathers their files into one partitioned, content-addressed output with its lineage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from operators._common import MlwpOperator, check_choice

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context

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


# --------------------------------------------------------------------------- across workers


class BatchPredictPlanOperator(MlwpOperator):
    """Pin the model version and list the input dataset's partitions, one per mapped task.

    The version the alias points to now is the version every mapped task loads, so a
    promotion during the run cannot give one output two models.
    """

    template_fields: Sequence[str] = ("model", "alias", "input")
    ui_color = "#f9e79f"

    def __init__(
        self, *, model: str, alias: str = "champion", input: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        check_choice(self.task_id, "alias", alias, ALIASES)
        self.model = model
        self.alias = alias
        self.input = input

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from mlwp import registry
        from mlwp.partitions import partitions_of
        from operators import _registry

        _registry.use_tracking_server()
        version = registry.alias_version(self.model, self.alias)
        if version is None:
            raise AirflowFailException(
                f"task {self.task_id!r}: model {self.model!r} has no {self.alias!r} alias yet"
            )
        dataset = self.upstream_document(context, "sha256", self.input)
        partitions = partitions_of(self.storage(), dataset["uri"])
        self.log.info(
            "Scoring %s rows of %s in %s mapped tasks with %s version %s",
            dataset["rows"],
            dataset["uri"],
            len(partitions),
            self.model,
            version.version,
        )
        return [
            {
                "dataset_uri": dataset["uri"],
                "dataset_sha256": dataset["sha256"],
                "partition": partition.to_dict(),
                "index": index,
                "model_version": str(version.version),
            }
            for index, partition in enumerate(partitions)
        ]


class BatchPredictPartitionOperator(MlwpOperator):
    """Score one partition (a mapped task) in chunks and stage its output file."""

    template_fields: Sequence[str] = ("model", "partition")
    ui_color = "#f9e79f"

    def __init__(
        self,
        *,
        model: str,
        partition: dict[str, Any],
        dataset: str,
        chunk_rows: int = 65_536,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if chunk_rows < 1:
            raise ValueError(f"task {self.task_id!r}: chunk_rows must be >= 1, got {chunk_rows}")
        self.model = model
        self.partition = partition
        self.dataset = dataset
        self.chunk_rows = chunk_rows

    def execute(self, context: Context) -> dict[str, Any]:
        import time

        from mlwp.batch_scoring import score_stream
        from mlwp.partitions import Partition, PartitionedReader, stage_part
        from mlwp.preprocessing import PreprocessingError
        from operators import _registry

        started = time.monotonic()
        plan = self.partition
        storage = self.storage()
        model = _registry.load_model(f"models:/{self.model}/{plan['model_version']}")
        reader = PartitionedReader(storage, plan["dataset_uri"])
        partition = Partition.from_dict(plan["partition"])
        first = reader.batches(partition, batch_rows=self.chunk_rows)
        try:
            head = next(first, None)
            if head is None:
                raise AirflowFailException(
                    f"task {self.task_id!r}: partition {partition.path or plan['dataset_uri']} "
                    "has no rows"
                )
            schema, scored = score_stream(model, _chain(head, first), head.schema)
            ti = context["ti"]
            staged = stage_part(
                storage,
                schema,
                scored,
                project=self.project,
                name=self.dataset,
                key=_run_key(ti.run_id),
                index=int(plan["index"]),
            )
        except PreprocessingError as exc:
            raise AirflowFailException(
                f"task {self.task_id!r}: partition {partition.path or plan['dataset_uri']}: "
                f"{exc.message}"
            ) from exc
        seconds = time.monotonic() - started
        self.log.info(
            "Scored %s rows of %s in %.1f s (%.0f rows/s) -> %s",
            staged["rows"],
            partition.path or plan["dataset_uri"],
            seconds,
            staged["rows"] / max(seconds, 1e-9),
            staged["uri"],
        )
        self.stat("gauge", "batch_predict.partition_rows", staged["rows"])
        return {**staged, "source_partition": partition.path}


class BatchPredictCollectOperator(MlwpOperator):
    """Gather the mapped tasks' files into one partitioned output dataset with its lineage.

    Keeps the definition's task id: downstream tasks and XCom lookups see one batch
    prediction task, as with the single-task form.
    """

    template_fields: Sequence[str] = ("staged", "plan", "output_path")
    ui_color = "#f9e79f"

    def __init__(
        self,
        *,
        model: str,
        alias: str,
        staged: Any,
        plan: Any,
        output: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.alias = alias
        self.staged = staged
        self.plan = plan
        self.output_path = output

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp.etl import resolve_source
        from mlwp.partitions import commit_staged, copy_dataset

        storage = self.storage()
        plan = list(self.plan)
        staged = [dict(item) for item in self.staged]
        if not plan:
            raise AirflowFailException(f"task {self.task_id!r}: the input has no partitions")
        version = plan[0]["model_version"]
        ref = commit_staged(
            storage,
            staged,
            project=self.project,
            name=self.task_id,
            source=plan[0]["dataset_uri"],
            metadata={
                "model": self.model,
                "alias": self.alias,
                "version": version,
                "input_sha256": plan[0]["dataset_sha256"],
                "mapped_tasks": len(staged),
            },
        )
        storage.update_sidecar(ref.uri, produced_by=self.lineage(context))
        output_uri = None
        if self.output_path:
            output_uri = resolve_source(self.output_path, self.project_dir)
            copy_dataset(storage, ref.uri, output_uri)
        self.log.info(
            "Scored %s rows with %s@%s (version %s) in %s mapped tasks -> %s",
            ref.rows,
            self.model,
            self.alias,
            version,
            len(staged),
            ref.uri,
        )
        self.emit_dataset_event(
            context,
            {
                "uri": ref.uri,
                "sha256": ref.sha256,
                "rows": ref.rows,
                "model": self.model,
                "version": version,
            },
        )
        self.stat("gauge", "batch_predict.rows", ref.rows)
        return {
            **ref.to_dict(),
            "model": self.model,
            "version": version,
            "output_uri": output_uri,
            "task_id": self.task_id,
        }


def _chain(head: Any, rest: Any) -> Any:
    yield head
    yield from rest


def _run_key(run_id: str) -> str:
    """A storage-safe key of a run (run ids hold ':' and '+')."""
    import hashlib

    return hashlib.sha256(run_id.encode()).hexdigest()[:16]


def batch_predict_tasks(
    *,
    task_id: str,
    model: str,
    alias: str = "champion",
    input: str | None = None,
    output: str | None = None,
    chunk_rows: int = 65_536,
    project: str,
    workflow: str | None = None,
    project_dir: str | None = None,
    **base: Any,
) -> tuple[BaseOperator, BaseOperator]:
    """Build plan -> score (mapped over partitions) -> collect; return (head, tail).

    The tail keeps ``task_id`` and the outlets, so the asset event and downstream wiring are
    those of a single batch prediction task.
    """
    context = {"project": project, "workflow": workflow, "project_dir": project_dir}
    outlets = base.pop("outlets", None)
    base.pop("task_id", None)
    plan = BatchPredictPlanOperator(
        task_id=f"{task_id}_plan", model=model, alias=alias, input=input, **context, **base
    )
    score = BatchPredictPartitionOperator.partial(
        task_id=f"{task_id}_score",
        model=model,
        dataset=task_id,
        chunk_rows=chunk_rows,
        **context,
        **base,
    ).expand(partition=plan.output)
    collect = BatchPredictCollectOperator(
        task_id=task_id,
        model=model,
        alias=alias,
        staged=score.output,
        plan=plan.output,
        output=output,
        outlets=outlets or [],
        **context,
        **base,
    )
    plan >> score >> collect
    return plan, collect
