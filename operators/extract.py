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
    ``s3://``) or ``query`` with ``conn_id`` (an Airflow Postgres connection) is given.
    With ``rows_per_partition`` or ``partition_by`` the source is streamed (Arrow record
    batches, a server-side cursor for a query) into a partitioned dataset (docs/scale.md). The
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
        rows_per_partition: int | None = None,
        partition_by: list[str] | None = None,
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
        if rows_per_partition is not None and rows_per_partition < 1:
            raise ValueError(
                f"task {self.task_id!r}: rows_per_partition must be >= 1, got {rows_per_partition}"
            )
        self.rows_per_partition = rows_per_partition
        self.partition_by = list(partition_by or [])

    @property
    def streams(self) -> bool:
        """Whether the extract streams into a partitioned dataset (docs/scale.md)."""
        return self.rows_per_partition is not None or bool(self.partition_by)

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp.data import extract
        from operators.links import dataset_url

        started = time.monotonic()
        storage = self.storage()
        if self.query is not None and self.streams:
            ref = self._query_partitioned(storage)
        elif self.query is not None:
            frame = self._query_frame()
            ref = extract.store_extract(
                frame,
                storage=storage,
                project=self.project,
                name=self.dataset,
                source=self._query_source(),
            )
        elif self.streams:
            ref = extract.extract_partitioned(
                str(self.source),
                storage=storage,
                project=self.project,
                name=self.dataset,
                project_dir=self.project_dir,
                fmt=self.format,
                read_options=self.read_options,
                rows_per_partition=self.rows_per_partition,
                partition_by=self.partition_by,
                source_storage_options=self._source_storage_options(),
            )
        else:
            ref = extract.extract(
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

    def _query_source(self) -> str:
        return f"postgres://{self.conn_id} {self.query}"

    def _source_storage_options(self) -> dict[str, Any]:
        """Credentials for an ``s3://`` source: those of the task's AWS connection."""
        from operators._common import s3_storage_options

        if str(self.source).startswith("s3://"):
            return s3_storage_options(self.aws_conn_id)
        return {}

    def _query_partitioned(self, storage: Any) -> Any:
        """Run the query with a server-side cursor and stream its rows into partitions."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from mlwp.data import extract

        hook = PostgresHook(postgres_conn_id=self.conn_id)
        connection = hook.get_conn()
        try:
            # A named cursor is a PostgreSQL server-side cursor: rows arrive as fetched.
            with connection.cursor(name=f"mlwp_{self.task_id}"[:63]) as cursor:
                cursor.itersize = etl_batch_rows()
                cursor.execute(str(self.query))
                # psycopg2 fills a named cursor's description only after a first fetch.
                first = cursor.fetchmany(etl_batch_rows())
                reader = extract.cursor_reader(
                    _Prefetched(cursor, first), batch_rows=etl_batch_rows()
                )
                return extract.write_reader(
                    reader,
                    storage=storage,
                    project=self.project,
                    name=self.dataset,
                    source=self._query_source(),
                    rows_per_partition=self.rows_per_partition,
                    partition_by=self.partition_by,
                )
        finally:
            connection.close()

    def _query_frame(self) -> Any:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        hook = PostgresHook(postgres_conn_id=self.conn_id)
        return hook.get_df(str(self.query), df_type="pandas")


def etl_batch_rows() -> int:
    """Rows fetched from the database per round trip (and per Arrow record batch)."""
    return 65_536


class _Prefetched:
    """A cursor whose first batch was already fetched (to learn the column types)."""

    def __init__(self, cursor: Any, first: list[Any]) -> None:
        self._cursor = cursor
        self._first: list[Any] | None = first
        self.description = cursor.description

    def fetchmany(self, size: int) -> list[Any]:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        rows: list[Any] = self._cursor.fetchmany(size)
        return rows
