"""Validation: check a stored dataset against a Great Expectations suite.

Two forms (docs/scale.md): :class:`ValidateOperator`, one task reading the dataset whole;
and, with ``map_partitions: true``, :func:`validate_tasks`: a plan task lists the partitions,
Airflow dynamic task mapping validates each in its own task, and a combine task (keeping the
definition's task id) turns their partial results into one verdict and one data-docs report.
With ``in_database: true`` the single task is given its input extract's query and runs the
suite inside PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from operators._common import MlwpOperator
from operators.links import DataDocsLink, DatasetLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context


class ValidateOperator(MlwpOperator):
    """Run ``expectations/<suite>.json`` against the upstream dataset with GX Core.

    The result JSON and the GX data docs are stored beside the dataset and recorded in its
    sidecar. Statistics go to XCom, the task log and statsd. When an expectation fails the
    task fails without retrying (the data will not change on a retry), with one line per
    failed expectation, so nothing downstream runs and the project's notifiers fire.

    On success the task returns the upstream dataset document with ``validation`` added, so
    later tasks may read the dataset from this task as well.
    """

    template_fields: Sequence[str] = ("suite", "input", "query")
    template_fields_renderers = {"query": "sql"}
    ui_color = "#fdebd0"
    operator_extra_links = (DataDocsLink(), DatasetLink())

    def __init__(
        self,
        *,
        suite: str,
        input: str | None = None,
        expectations_folder: str | None = None,
        data_docs: bool = True,
        query: str | None = None,
        conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not suite:
            raise ValueError(f"task {self.task_id!r}: 'suite' is required")
        if query is not None and not conn_id:
            raise ValueError(f"task {self.task_id!r}: a 'query' needs 'conn_id'")
        self.suite = suite
        self.input = input
        self.expectations_folder = expectations_folder
        self.data_docs = data_docs
        # With a query (the input extract's, rendered as the extract rendered it), the suite
        # runs inside PostgreSQL on the query's rows instead of on the stored dataset.
        self.query = query
        self.conn_id = conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp.data.validation import validate_dataset, validate_source
        from mlwp.errors import MlwpError
        from operators.links import dataset_url

        started = time.monotonic()
        dataset = self.upstream_document(context, "sha256", self.input)
        DatasetLink.persist(context, dataset_url(dataset["uri"]))
        try:
            if self.query is not None:
                report = validate_source(
                    self.storage(),
                    dataset["uri"],
                    self.suite,
                    connection_string=self._connection_string(),
                    query=self.query,
                    extracted_rows=int(dataset["rows"]),
                    expectations_folder=self.expectations_folder,
                    data_docs=self.data_docs,
                )
            else:
                report = validate_dataset(
                    self.storage(),
                    dataset["uri"],
                    self.suite,
                    expectations_folder=self.expectations_folder,
                    data_docs=self.data_docs,
                )
        except MlwpError as exc:  # a bad suite, or a source that changed since the extract
            raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc
        return finish_validation(self, context, dataset, report, started)

    def _connection_string(self) -> str:
        """The SQLAlchemy URL of the Airflow Postgres connection (GX's SQL data source)."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        return str(PostgresHook(postgres_conn_id=self.conn_id).get_uri())


def finish_validation(
    task: MlwpOperator,
    context: Context,
    dataset: dict[str, Any],
    report: Any,
    started: float,
) -> dict[str, Any]:
    """Link the data docs, log and count the outcome; halt on a failed suite.

    A failed suite fails the task without retrying (the data will not change on a retry),
    with one line per failed expectation, so nothing downstream runs and the project's
    notifiers fire. Otherwise the upstream dataset document comes back with ``validation``.
    """
    from operators.links import storage_file_url

    # Before a failure is raised: a failed suite is when the data docs matter most.
    DataDocsLink.persist(context, storage_file_url(report.docs_uri))
    stats = report.statistics
    task.log.info(
        "Suite %s on %s: %s/%s expectations successful (%.1f%%); result %s; data docs %s",
        report.suite,
        dataset["uri"],
        stats["successful"],
        stats["evaluated"],
        stats["success_percent"],
        report.result_uri,
        report.docs_uri,
    )
    for name, value in stats.items():
        task.stat("gauge", f"validate.{name}", value)
    task.stat("timing", "validate.seconds", (time.monotonic() - started) * 1000)
    summary = report.to_dict()
    context["ti"].xcom_push(key="validation", value=summary)
    if not report.success:
        task.stat("incr", "validate.failed")
        raise AirflowFailException(report.failure_message())
    return {**dataset, "validation": summary}


# --------------------------------------------------------------------------- per partition


class ValidatePlanOperator(MlwpOperator):
    """List the input dataset's partitions, one per mapped validation task.

    The suite is checked first: one whose expectations cannot combine across partitions
    (uniqueness, median, ...) fails here, before any partition is read.
    """

    template_fields: Sequence[str] = ("suite", "input")
    ui_color = "#fdebd0"

    def __init__(
        self,
        *,
        suite: str,
        input: str | None = None,
        expectations_folder: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.input = input
        self.expectations_folder = expectations_folder

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from mlwp.data.partitions import partitions_of
        from mlwp.data.validation import SuiteError, load_suite
        from mlwp.data.validation_partitions import suite_kinds

        dataset = self.upstream_document(context, "sha256", self.input)
        try:
            suite_kinds(load_suite(self.suite, self.expectations_folder))
        except SuiteError as exc:
            raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc
        partitions = partitions_of(self.storage(), dataset["uri"])
        self.log.info(
            "Validating %s rows of %s with suite %s in %s mapped tasks",
            dataset.get("rows"),
            dataset["uri"],
            self.suite,
            len(partitions),
        )
        return [
            {"dataset_uri": dataset["uri"], "partition": partition.to_dict(), "index": index}
            for index, partition in enumerate(partitions)
        ]


class ValidatePartitionOperator(MlwpOperator):
    """Run the suite on one partition (a mapped task); return its partial results."""

    template_fields: Sequence[str] = ("suite", "partition")
    ui_color = "#fdebd0"

    def __init__(
        self,
        *,
        suite: str,
        partition: dict[str, Any],
        expectations_folder: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.partition = partition
        self.expectations_folder = expectations_folder

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp.data.partitions import Partition
        from mlwp.data.validation import SuiteError, load_suite
        from mlwp.data.validation_partitions import partition_frames, validate_partition

        plan = self.partition
        partition = Partition.from_dict(plan["partition"])
        name = partition.path or plan["dataset_uri"].rsplit("/", 1)[-1]
        frames = partition_frames(self.storage(), plan["dataset_uri"], partition)
        try:
            spec = load_suite(self.suite, self.expectations_folder)
            document = validate_partition(frames, spec, partition=name)
        except SuiteError as exc:
            raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc
        self.log.info("Validated %s rows of partition %s", document["rows"], name)
        return {**document, "index": int(plan["index"])}


class ValidateCombineOperator(MlwpOperator):
    """Combine the partitions' results into one verdict and one data-docs report.

    Keeps the definition's task id, XCom documents, links and halt-and-alert behaviour: to
    downstream tasks and people it is the single validate task.
    """

    template_fields: Sequence[str] = ("suite", "input", "partials")
    ui_color = "#fdebd0"
    operator_extra_links = (DataDocsLink(), DatasetLink())

    def __init__(
        self,
        *,
        suite: str,
        partials: Any,
        input: str | None = None,
        expectations_folder: str | None = None,
        data_docs: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.partials = partials
        self.input = input
        self.expectations_folder = expectations_folder
        self.data_docs = data_docs

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp.data.validation import SuiteError
        from mlwp.data.validation_partitions import combine_partitions
        from operators.links import dataset_url

        started = time.monotonic()
        dataset = self.upstream_document(context, "sha256", self.input)
        DatasetLink.persist(context, dataset_url(dataset["uri"]))
        documents = [dict(item) for item in self.partials]
        try:
            report = combine_partitions(
                self.storage(),
                dataset["uri"],
                self.suite,
                documents,
                expectations_folder=self.expectations_folder,
                data_docs=self.data_docs,
            )
        except SuiteError as exc:
            raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc
        return finish_validation(self, context, dataset, report, started)


def validate_tasks(
    *,
    task_id: str,
    suite: str,
    input: str | None = None,
    expectations_folder: str | None = None,
    project: str,
    workflow: str | None = None,
    project_dir: str | None = None,
    **base: Any,
) -> tuple[BaseOperator, BaseOperator]:
    """Build plan -> validate (mapped over partitions) -> combine; return (head, tail)."""
    context: dict[str, Any] = {"project": project, "workflow": workflow, "project_dir": project_dir}
    base.pop("task_id", None)
    suite_args: dict[str, Any] = {"suite": suite, "expectations_folder": expectations_folder}
    plan = ValidatePlanOperator(
        task_id=f"{task_id}_plan", input=input, **suite_args, **context, **base
    )
    partitions = ValidatePartitionOperator.partial(
        task_id=f"{task_id}_partition", **suite_args, **context, **base
    ).expand(partition=plan.output)
    combine = ValidateCombineOperator(
        task_id=task_id,
        input=input,
        partials=partitions.output,
        **suite_args,
        **context,
        **base,
    )
    plan >> partitions >> combine
    return plan, combine
