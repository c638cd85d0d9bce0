"""ValidateOperator: check a stored dataset against a Great Expectations suite."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from operators._common import MlwpOperator
from operators.links import DataDocsLink, DatasetLink

if TYPE_CHECKING:
    from airflow.sdk import Context


class ValidateOperator(MlwpOperator):
    """Run ``expectations/<suite>.json`` against the upstream dataset with GX Core.

    The result JSON and the GX data docs are stored beside the dataset and recorded in its
    sidecar. Statistics go to XCom, the task log and statsd. When an expectation fails the
    task fails without retrying (the data will not change on a retry), with one line per
    failed expectation, so nothing downstream runs and the project's notifiers fire.

    On success the task returns the upstream dataset document with ``validation`` added, so
    later tasks may read the dataset from this task as well.
    """

    template_fields: Sequence[str] = ("suite", "input")
    ui_color = "#fdebd0"
    operator_extra_links = (DataDocsLink(), DatasetLink())

    def __init__(
        self,
        *,
        suite: str,
        input: str | None = None,
        expectations_folder: str | None = None,
        data_docs: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not suite:
            raise ValueError(f"task {self.task_id!r}: 'suite' is required")
        self.suite = suite
        self.input = input
        self.expectations_folder = expectations_folder
        self.data_docs = data_docs

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp.validation import SuiteError, validate_dataset
        from operators.links import dataset_url, storage_file_url

        started = time.monotonic()
        dataset = self.upstream_document(context, "sha256", self.input)
        DatasetLink.persist(context, dataset_url(dataset["uri"]))
        try:
            report = validate_dataset(
                self.storage(),
                dataset["uri"],
                self.suite,
                expectations_folder=self.expectations_folder,
                data_docs=self.data_docs,
            )
        except SuiteError as exc:
            raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc
        # Before a failure is raised: a failed suite is when the data docs matter most.
        DataDocsLink.persist(context, storage_file_url(report.docs_uri))
        stats = report.statistics
        self.log.info(
            "Suite %s on %s: %s/%s expectations successful (%.1f%%); result %s; data docs %s",
            self.suite,
            dataset["uri"],
            stats["successful"],
            stats["evaluated"],
            stats["success_percent"],
            report.result_uri,
            report.docs_uri,
        )
        for name, value in stats.items():
            self.stat("gauge", f"validate.{name}", value)
        self.stat("timing", "validate.seconds", (time.monotonic() - started) * 1000)
        summary = report.to_dict()
        context["ti"].xcom_push(key="validation", value=summary)
        if not report.success:
            self.stat("incr", "validate.failed")
            raise AirflowFailException(report.failure_message())
        return {**dataset, "validation": summary}
