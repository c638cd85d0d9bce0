"""ExtractOperator: read a CSV/Parquet source or a Postgres query into a stored dataset."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from operators._common import MlwpOperator, check_choice
from operators.links import DatasetLink

if TYPE_CHECKING:
    from airflow.sdk import Context

FORMATS = ("csv", "parquet")


class ExtractOperator(MlwpOperator):
    """Extract a source into a content-addressed Parquet dataset and emit it as an asset event.

    Exactly one of ``source`` (a path relative to the project folder, ``file://`` or
    ``s3://``) or ``query`` with ``conn_id`` (an Airflow Postgres connection) is given. The
    dataset is named after the task; its document (URI, sha256, rows, columns) is returned
    to XCom and attached to the asset events of the task's outlets.
    """

    template_fields: Sequence[str] = ("source", "query", "read_options")
    template_fields_renderers = {"query": "sql", "read_options": "json"}
    ui_color = "#d6eaf8"
    operator_extra_links = (DatasetLink(),)

    def __init__(
        self,
        *,
        source: str | None = None,
        query: str | None = None,
        conn_id: str | None = None,
        format: str | None = None,
        read_options: dict[str, Any] | None = None,
        dataset: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (source is None) == (query is None):
            raise ValueError(f"task {self.task_id!r}: give exactly one of 'source' or 'query'")
        if query is not None and not conn_id:
            raise ValueError(f"task {self.task_id!r}: a 'query' needs 'conn_id'")
        if format is not None:
            check_choice(self.task_id, "format", format, FORMATS)
        self.source = source
        self.query = query
        self.conn_id = conn_id
        self.format = format
        self.read_options = read_options or {}
        self.dataset = dataset or self.task_id

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp import etl
        from operators.links import dataset_url

        started = time.monotonic()
        storage = self.storage()
        if self.query is not None:
            frame = self._query_frame()
            ref = etl.store_extract(
                frame,
                storage=storage,
                project=self.project,
                name=self.dataset,
                source=f"postgres://{self.conn_id} {self.query}",
            )
        else:
            ref = etl.extract(
                str(self.source),
                storage=storage,
                project=self.project,
                name=self.dataset,
                project_dir=self.project_dir,
                fmt=self.format,
                read_options=self.read_options,
            )
        lineage = self.lineage(context)
        storage.update_sidecar(ref.uri, produced_by=lineage)
        document = {**ref.to_dict(), "task_id": self.task_id}
        DatasetLink.persist(context, dataset_url(ref.uri))
        self.log.info("Extracted %s rows x %s columns into %s", ref.rows, len(ref.columns), ref.uri)
        self.emit_dataset_event(
            context,
            {
                "uri": ref.uri,
                "sha256": ref.sha256,
                "rows": ref.rows,
                "columns": ref.columns,
                "source": storage.read_sidecar(ref.uri).get("source"),
                "run_id": lineage["run_id"],
            },
        )
        self.stat("gauge", "extract.rows", ref.rows)
        self.stat("timing", "extract.seconds", (time.monotonic() - started) * 1000)
        return document

    def _query_frame(self) -> Any:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        hook = PostgresHook(postgres_conn_id=self.conn_id)
        return hook.get_df(str(self.query), df_type="pandas")
