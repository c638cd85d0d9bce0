"""Bulk label ingestion: a table of outcomes (a file, an S3 object, a SQL query's rows) into
the labels store of ``mlwp.monitoring.capture``.

What a ``labels`` task of a definition runs (``operators/labels.py`` reads the source). The
source's columns are mapped onto the label fields (``inference_id``, ``row``, ``entity_key``,
``label``, ``label_time``) by name, identity by default; each row must name an inference id
or an entity key. Labels given as class values (``Yes``) become class indices through
``classes`` (the values in class-index order, as the training's ordinal step lists them).

Re-running an ingestion is a no-op: a row whose key already holds the same label (with the
same ``label_time``, when the row gives one) in the store, as its latest label or as the
latest this source stored, is not written again, so a daily ingestion of a growing outcomes
file writes only what is new or changed, and leaves a correction received since from
elsewhere in place. A changed label is written and, being received last, replaces the
stored one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mlwp.monitoring.capture import (
    LABELS,
    MonitoringError,
    labels_table,
    latest_labels,
    read_labels,
    write_parts,
)

if TYPE_CHECKING:
    import pandas as pd

FIELDS = ("inference_id", "row", "entity_key", "label", "label_time")


def mapped_records(
    frame: pd.DataFrame, columns: Mapping[str, str] | None, where: str
) -> list[dict[str, Any]]:
    """The rows of ``frame`` as label records, with ``columns`` (label field -> source
    column) applied; an unknown field or a missing column is named with ``where``."""
    mapping = {field: field for field in FIELDS if field in frame.columns}
    for field, column in (columns or {}).items():
        if field not in FIELDS:
            raise MonitoringError(
                f"{where}: columns: unknown label field {field!r}; fields are {', '.join(FIELDS)}",
                code="bad_columns",
            )
        if column not in frame.columns:
            raise MonitoringError(
                f"{where}: columns.{field}: the source has no column {column!r}; it has "
                f"{', '.join(map(str, frame.columns))}",
                code="bad_columns",
            )
        mapping[field] = column
    if "label" not in mapping:
        raise MonitoringError(
            f"{where}: the source has no 'label' column; map one with columns: {{label: ...}}",
            code="bad_columns",
        )
    if "inference_id" not in mapping and "entity_key" not in mapping:
        raise MonitoringError(
            f"{where}: the source needs an 'inference_id' or 'entity_key' column (or map one "
            "with columns:)",
            code="bad_columns",
        )
    chosen = frame[list(mapping.values())].copy()
    chosen.columns = list(mapping)
    chosen = chosen.astype(object).where(chosen.notna(), None)
    records: list[dict[str, Any]] = chosen.to_dict(orient="records")
    return records


def csv_read_options(
    read_options: Mapping[str, Any] | None, columns: Mapping[str, str] | None
) -> dict[str, Any]:
    """``read_options`` for a CSV of labels, with its key columns (the inference id's and the
    entity key's, as ``columns`` maps them) read as text unless the options type them.

    A key is an identifier, not a number: read by pandas' inference, ``0012`` became 12 and
    joined no prediction captured as ``"0012"``, and a 19-digit account number beside an
    empty cell became a float that lost its last digits. A ``dtype`` for every column (not
    a mapping) is left as given."""
    options = dict(read_options or {})
    dtype = options.get("dtype")
    if dtype is not None and not isinstance(dtype, Mapping):
        return options
    keys = {(columns or {}).get(field, field): str for field in ("inference_id", "entity_key")}
    options["dtype"] = {**keys, **(dtype or {})}
    return options


def _key(inference_id: Any, row: Any, entity_key: Any) -> tuple[Any, ...]:
    if inference_id is not None:
        return ("id", inference_id, 0 if row is None else int(row))
    return ("entity", entity_key)


def ingest_labels(
    frame: pd.DataFrame,
    *,
    root: str,
    model: str,
    source: str,
    columns: Mapping[str, str] | None = None,
    classes: Sequence[Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    where: str = "labels",
) -> dict[str, Any]:
    """Check ``frame``'s labels and store those not already stored; return a summary:
    rows read, written, unchanged, and the part URIs written."""
    import pyarrow as pa

    records = mapped_records(frame, columns, where)
    table = labels_table(records, source=source, classes=classes, where=where)
    unchanged = 0
    if table.num_rows:
        every = read_labels(root, model, storage_options=storage_options, latest=False)
        # A row is unchanged when the store's latest label of its key is the same, or when
        # this source's own latest is: else re-running an ingestion over an unchanged file
        # wrote its rows again over labels received since from elsewhere (a correction sent
        # to the feedback endpoint), which the re-run undid.
        known = _known(latest_labels(every))
        own = _known(latest_labels(every[every["source"] == source])) if len(every) else {}
        # a row without its own label_time is stamped now: compare its label only
        timed = [record.get("label_time") not in (None, "") for record in records]
        keep = []
        for i, r, e, label, time, has_time in zip(
            table.column("inference_id").to_pylist(),
            table.column("row").to_pylist(),
            table.column("entity_key").to_pylist(),
            table.column("label").to_pylist(),
            table.column("label_time").to_pylist(),
            timed,
            strict=True,
        ):
            key = _key(i, r, e)
            same = any(
                _same(before, label, time, has_time) for before in (known.get(key), own.get(key))
            )
            keep.append(not same)
        unchanged = keep.count(False)
        table = table.filter(pa.array(keep, type=pa.bool_()))
    uris = write_parts(root, LABELS, model, table, storage_options)
    return {
        "model": model,
        "source": source,
        "rows": len(records),
        "written": table.num_rows,
        "unchanged": unchanged,
        "parts": uris,
    }


def _known(stored: pd.DataFrame) -> dict[tuple[Any, ...], tuple[Any, Any]]:
    """Key -> (label, label_time) of stored labels (one per key: a ``latest_labels`` frame)."""
    if stored.empty:
        return {}
    return {
        _key(i, r, e): (label, time)
        for i, r, e, label, time in zip(
            stored["inference_id"].astype(object).where(stored["inference_id"].notna(), None),
            stored["row"].astype(object).where(stored["row"].notna(), None),
            stored["entity_key"].astype(object).where(stored["entity_key"].notna(), None),
            stored["label"],
            stored["label_time"],
            strict=True,
        )
    }


def _same(before: tuple[Any, Any] | None, label: Any, time: Any, has_time: bool) -> bool:
    """Whether a row's label (and its ``label_time``, when it gives one) is ``before``'s."""
    if before is None or before[0] != label:
        return False
    return not has_time or before[1] == _as_timestamp(time)


def _as_timestamp(value: Any) -> Any:
    import pandas as pd

    return pd.Timestamp(value)
