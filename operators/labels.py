"""LabelsOperator: ingest outcomes of served predictions in bulk (issue #14).

The ``labels`` task type reads a CSV/Parquet source (a path in the project folder,
``file://`` or ``s3://``) or a Postgres query (an Airflow connection), maps its columns onto
the label fields and stores the labels not stored yet
(:func:`mlwp.monitoring.labels.ingest_labels`), beside those ``POST
/v1/models/{model}/feedback`` receives. Put it before a ``monitor`` task (``after:``), so each
look sees the outcomes known by then. Re-running it writes nothing new.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from operators._common import MlwpOperator, check_choice

if TYPE_CHECKING:
    from airflow.sdk import Context

FORMATS = ("csv", "parquet")
FIELDS = ("inference_id", "row", "entity_key", "label", "label_time")


class LabelsOperator(MlwpOperator):
    """Store the labels of ``model`` found in ``source`` or ``query``; return a summary
    (rows read, written, unchanged, parts)."""

    template_fields: Sequence[str] = ("source", "query", "read_options")
    template_fields_renderers = {"query": "sql", "read_options": "json"}
    ui_color = "#fdebd0"

    def __init__(
        self,
        *,
        model: str,
        source: str | None = None,
        query: str | None = None,
        conn_id: str | None = None,
        format: str | None = None,
        read_options: dict[str, Any] | None = None,
        columns: dict[str, str] | None = None,
        classes: list[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not model:
            raise ValueError(f"task {self.task_id!r}: 'model' is required")
        if (source is None) == (query is None):
            raise ValueError(f"task {self.task_id!r}: give exactly one of 'source' or 'query'")
        if query is not None and not conn_id:
            raise ValueError(f"task {self.task_id!r}: a 'query' needs 'conn_id'")
        if format is not None:
            check_choice(self.task_id, "format", format, FORMATS)
        for field in columns or {}:
            check_choice(self.task_id, "columns", field, FIELDS)
        if classes is not None and not classes:
            raise ValueError(
                f"task {self.task_id!r}: 'classes' is empty; list the label values in "
                "class-index order, or leave it out to take numbers as they are"
            )
        if classes:
            from mlwp.monitoring.capture import repeated_class

            if problem := repeated_class(classes):
                raise ValueError(f"task {self.task_id!r}: 'classes': {problem}")
        self.model = model
        self.source = source
        self.query = query
        self.conn_id = conn_id
        self.format = format
        self.read_options = read_options or {}
        self.columns = dict(columns or {})
        self.classes = list(classes) if classes is not None else None

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp.monitoring.labels import ingest_labels

        frame, described = self._read()
        storage = self.storage()
        summary = ingest_labels(
            frame,
            root=storage.root,
            model=self.model,
            source=f"{self.project}.{self.workflow}.{self.task_id}",
            columns=self.columns,
            classes=self.classes,
            storage_options=storage.storage_options,
            where=f"task {self.task_id!r} ({described})",
        )
        self.log.info(
            "Labels of %s from %s: %s rows, %s written, %s already stored",
            self.model,
            described,
            summary["rows"],
            summary["written"],
            summary["unchanged"],
        )
        self.stat("gauge", "labels.written", summary["written"])
        return {**summary, "task_id": self.task_id, "from": described}

    def _read(self) -> tuple[Any, str]:
        if self.query is not None:
            from airflow.providers.postgres.hooks.postgres import PostgresHook

            hook = PostgresHook(postgres_conn_id=self.conn_id)
            return hook.get_df(str(self.query), df_type="pandas"), f"postgres://{self.conn_id}"
        from mlwp.data import extract
        from operators._common import s3_storage_options

        uri = extract.resolve_source(str(self.source), self.project_dir)
        options = s3_storage_options(self.aws_conn_id) if uri.startswith("s3://") else {}
        fmt = extract.infer_format(uri, self.format)
        read_options = self.read_options
        if fmt == "csv":  # the keys as text: "0012" is an id, not 12
            from mlwp.monitoring.labels import csv_read_options

            read_options = csv_read_options(read_options, self.columns)
        return extract.read_frame(uri, fmt, read_options, options), uri
