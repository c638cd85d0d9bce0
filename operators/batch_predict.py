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

    from mlwp.data.storage import Storage

ALIASES = ("champion", "challenger")


class BatchPredictOperator(MlwpOperator):
    """Score the upstream dataset with ``models:/<model>@<alias>`` into storage.

    The output is each row's ``keys`` columns (or its ``row`` position when there are none;
    every input column with ``join_input``) plus ``prediction`` (and ``probability_<class>``
    columns for classifiers), stored as the dataset ``<task_id>`` and, when ``output`` is set,
    also written as Parquet at that URI (or path relative to the project folder).
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
        keys: Sequence[str] = (),
        join_input: bool = False,
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
        self.keys = list(keys)
        self.join_input = join_input

    def execute(self, context: Context) -> dict[str, Any]:
        import numpy as np
        import pandas as pd

        from mlwp import registry
        from mlwp.data.batch_scoring import ROW_COLUMN, Output, OutputColumnsError
        from mlwp.data.extract import resolve_source
        from mlwp.data.storage import frame_to_parquet_bytes
        from mlwp.model import RecordError
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
        output = Output.of(self.keys, self.join_input)
        predicted = ["prediction", *(f"probability_{label}" for label in model.classes or [])]
        try:
            output.check(list(frame.columns), f"task {self.task_id!r}: {dataset['uri']}", predicted)
        except OutputColumnsError as exc:
            raise AirflowFailException(exc.message) from exc
        records = frame.to_dict(orient="records")
        try:
            result = model.predict(records)
        except RecordError as exc:
            raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc
        if output.row_index:
            scored = pd.DataFrame({ROW_COLUMN: np.arange(len(frame), dtype=np.int64)})
        else:
            scored = frame[output.carried(list(frame.columns))].reset_index(drop=True)
        scored["prediction"] = result.predictions
        if result.probabilities is not None and model.classes:
            for index, label in enumerate(model.classes):
                scored[f"probability_{label}"] = [row[index] for row in result.probabilities]
        ref = storage.write_dataset(
            scored,
            project=self.project,
            name=self.task_id,
            source=dataset["uri"],
            metadata={
                "model": self.model,
                "alias": self.alias,
                "version": str(version.version),
                "output": output.to_dict(),
            },
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
        self,
        *,
        model: str,
        alias: str = "champion",
        input: str | None = None,
        keys: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice(self.task_id, "alias", alias, ALIASES)
        self.model = model
        self.alias = alias
        self.input = input
        self.keys = list(keys)

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from itertools import accumulate

        from mlwp import registry
        from mlwp.data.batch_scoring import Output, OutputColumnsError
        from mlwp.data.partitions import partitions_of
        from operators import _registry

        _registry.use_tracking_server()
        version = registry.alias_version(self.model, self.alias)
        if version is None:
            raise AirflowFailException(
                f"task {self.task_id!r}: model {self.model!r} has no {self.alias!r} alias yet"
            )
        dataset = self.upstream_document(context, "sha256", self.input)
        storage = self.storage()
        try:  # before any mapped task starts: a missing key would fail every one of them
            Output.of(self.keys).check(
                storage.read_sidecar(dataset["uri"]).get("columns") or [],
                f"task {self.task_id!r}: {dataset['uri']}",
            )
        except OutputColumnsError as exc:
            raise AirflowFailException(exc.message) from exc
        partitions = partitions_of(storage, dataset["uri"])
        first_rows = [0, *accumulate(p.rows for p in partitions)]
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
                "first_row": first_rows[index],
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
        keys: Sequence[str] = (),
        join_input: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if chunk_rows < 1:
            raise ValueError(f"task {self.task_id!r}: chunk_rows must be >= 1, got {chunk_rows}")
        self.model = model
        self.partition = partition
        self.dataset = dataset
        self.chunk_rows = chunk_rows
        self.keys = list(keys)
        self.join_input = join_input

    def execute(self, context: Context) -> dict[str, Any]:
        import time

        from mlwp.data.batch_scoring import (
            Output,
            OutputColumnsError,
            native_trees,
            predicted_fields,
            score_partition,
        )
        from mlwp.data.partitions import Partition, PartitionedReader, stage_part
        from mlwp.model.features import PreprocessingError
        from mlwp.settings import get_settings
        from operators import _registry

        started = time.monotonic()
        plan = self.partition
        storage = self.storage()
        model = _registry.load_model(f"models:/{self.model}/{plan['model_version']}")
        # the trees compiled to C where the worker has a compiler, as serving scores: built
        # by a worker's first task of this model version, loaded by the next ones
        trees = native_trees(model, get_settings().home / "native-trees")
        self.log.info("Scoring with %s", trees)
        reader = PartitionedReader(storage, plan["dataset_uri"])
        partition = Partition.from_dict(plan["partition"])
        if partition.rows == 0:
            raise AirflowFailException(
                f"task {self.task_id!r}: partition {partition.path or plan['dataset_uri']} "
                "has no rows"
            )
        output = Output.of(self.keys, self.join_input)
        try:
            schema, scored = score_partition(
                model,
                reader,
                partition,
                chunk_rows=self.chunk_rows,
                output=output,
                first_row=int(plan.get("first_row", 0)),
            )
            ti = context["ti"]
            staged = stage_part(
                storage,
                schema,
                scored,
                project=self.project,
                name=self.dataset,
                key=_run_key(ti.run_id),
                index=int(plan["index"]),
                unique=output.unique(),
                split_floats=True,
                no_statistics=[f.name for f in predicted_fields(model)],
            )
        except (PreprocessingError, OutputColumnsError) as exc:
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


class PredictionsCollector(MlwpOperator):
    """Base of the tasks that gather staged prediction files into the output dataset.

    Keeps the definition's task id: downstream tasks and XCom lookups see one batch
    prediction task, as with the single-task form.
    """

    def __init__(
        self,
        *,
        model: str,
        alias: str,
        output: str | None = None,
        keys: Sequence[str] = (),
        join_input: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.alias = alias
        self.output_path = output
        self.keys = list(keys)
        self.join_input = join_input

    def publish(
        self,
        context: Context,
        storage: Storage,
        staged: list[dict[str, Any]],
        *,
        plan: dict[str, Any],
        metadata: dict[str, Any],
        how: str,
    ) -> dict[str, Any]:
        """Commit ``staged`` (the plan's input scored by its pinned version) with lineage,
        copy it to ``output``, emit the asset event; the task's XCom document."""
        from mlwp.data.batch_scoring import Output
        from mlwp.data.extract import resolve_source
        from mlwp.data.partitions import commit_staged, copy_dataset

        version = plan["model_version"]
        ref = commit_staged(
            storage,
            staged,
            project=self.project,
            name=self.task_id,
            source=plan["dataset_uri"],
            metadata={
                "model": self.model,
                "alias": self.alias,
                "version": version,
                "input_sha256": plan["dataset_sha256"],
                "output": Output.of(self.keys, self.join_input).to_dict(),
                **metadata,
            },
        )
        storage.update_sidecar(ref.uri, produced_by=self.lineage(context))
        output_uri = None
        if self.output_path:
            output_uri = resolve_source(self.output_path, self.project_dir)
            copy_dataset(storage, ref.uri, output_uri)
        self.log.info(
            "Scored %s rows with %s@%s (version %s) %s -> %s",
            ref.rows,
            self.model,
            self.alias,
            version,
            how,
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


class BatchPredictCollectOperator(PredictionsCollector):
    """Gather the mapped tasks' files into one partitioned output dataset with its lineage."""

    template_fields: Sequence[str] = ("staged", "plan", "output_path")
    ui_color = "#f9e79f"

    def __init__(self, *, staged: Any, plan: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.staged = staged
        self.plan = plan

    def execute(self, context: Context) -> dict[str, Any]:
        plan = list(self.plan)
        staged = [dict(item) for item in self.staged]
        if not plan:
            raise AirflowFailException(f"task {self.task_id!r}: the input has no partitions")
        return self.publish(
            context,
            self.storage(),
            staged,
            plan=plan[0],
            metadata={"mapped_tasks": len(staged)},
            how=f"in {len(staged)} mapped tasks",
        )


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
    keys: Sequence[str] = (),
    join_input: bool = False,
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
        task_id=f"{task_id}_plan",
        model=model,
        alias=alias,
        input=input,
        keys=keys,
        **context,
        **base,
    )
    score = BatchPredictPartitionOperator.partial(
        task_id=f"{task_id}_score",
        model=model,
        dataset=task_id,
        chunk_rows=chunk_rows,
        keys=keys,
        join_input=join_input,
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
        keys=keys,
        join_input=join_input,
        outlets=outlets or [],
        **context,
        **base,
    )
    plan >> score >> collect
    return plan, collect
