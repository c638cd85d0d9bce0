"""Extract: read CSV or Parquet from the project folder, ``file://`` or ``s3://``, then store it.

SQL extraction is done by the Airflow operator through the Postgres provider's hook (which
returns a DataFrame) and then goes through :func:`store_extract`, the same write path.

With ``rows_per_partition`` or ``partition_by`` the extract streams instead
(:func:`extract_partitioned`, :func:`cursor_reader` for SQL): Arrow record batches in bounded
memory, written as a partitioned dataset (:mod:`mlwp.data.partitions`). docs/scale.md.
"""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from mlwp.data.storage import DatasetRef, Storage, filesystem
from mlwp.errors import MlwpError

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("csv", "parquet")

# Options of pandas.read_csv / read_parquet a definition may set; anything else is refused so
# that a typo does not silently do nothing.
CSV_OPTIONS = frozenset(
    {
        "sep",
        "delimiter",
        "header",
        "names",
        "usecols",
        "dtype",
        "na_values",
        "keep_default_na",
        "skiprows",
        "nrows",
        "encoding",
        "decimal",
        "thousands",
        "comment",
        "quotechar",
        "parse_dates",
        "true_values",
        "false_values",
    }
)
PARQUET_OPTIONS = frozenset({"columns", "filters"})


class ExtractError(MlwpError):
    """A source cannot be read: missing, unsupported or malformed."""

    code = "extract_error"


def infer_format(source: str, fmt: str | None = None) -> str:
    """Return the explicit format, else the one the source's suffix names, else csv."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ExtractError(
                f"format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}",
                code="bad_format",
            )
        return fmt
    suffixes = PurePosixPath(urlparse(source).path).suffixes
    if ".parquet" in suffixes or ".pq" in suffixes:
        return "parquet"
    return "csv"


def resolve_source(source: str, project_dir: str | Path | None) -> str:
    """Turn a definition's ``source`` into a URI: relative paths are under the project folder.

    A relative path may not climb out of the project folder (``../``).
    """
    text = source.strip()
    if not text:
        raise ExtractError("the extract source is empty", code="bad_source")
    scheme = urlparse(text).scheme
    if scheme in ("s3", "file"):
        return text
    if scheme and len(scheme) > 1:
        raise ExtractError(
            f"source {source!r} has scheme {scheme!r}; use a path relative to the project "
            "folder, file:// or s3://",
            code="bad_source",
        )
    path = Path(text).expanduser()
    if not path.is_absolute():
        if project_dir is None:
            raise ExtractError(
                f"source {source!r} is relative but no project folder is known",
                code="bad_source",
            )
        base = Path(project_dir).resolve()
        path = (base / path).resolve()
        if not path.is_relative_to(base):
            raise ExtractError(
                f"source {source!r} points outside the project folder {base}",
                code="bad_source",
            )
    return path.resolve().as_uri()


def read_frame(
    uri: str,
    fmt: str,
    read_options: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Read one CSV or Parquet object into a DataFrame, naming the source on any failure."""
    import pandas as pd

    options = dict(read_options or {})
    allowed = CSV_OPTIONS if fmt == "csv" else PARQUET_OPTIONS
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ExtractError(
            f"read_options {', '.join(unknown)} are not supported for {fmt}; "
            f"allowed: {', '.join(sorted(allowed))}",
            code="bad_read_options",
        )
    fs, path = filesystem(uri, **(storage_options or {}))
    try:
        with fs.open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError as exc:
        raise ExtractError(f"source {uri} does not exist", code="source_not_found") from exc
    try:
        if fmt == "csv":
            return pd.read_csv(io.BytesIO(data), **options)
        return pd.read_parquet(io.BytesIO(data), engine="pyarrow", **options)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ExtractError(f"cannot read {uri} as {fmt}: {exc}", code="bad_source_data") from exc


def extract_frame(
    source: str,
    *,
    project_dir: str | Path | None = None,
    fmt: str | None = None,
    read_options: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, str]:
    """Read ``source`` and return the frame and the resolved source URI."""
    uri = resolve_source(source, project_dir)
    frame = read_frame(uri, infer_format(source, fmt), read_options)
    if frame.columns.size == 0:
        raise ExtractError(f"source {uri} has no columns", code="empty_source")
    return frame, uri


def store_extract(
    frame: pd.DataFrame,
    *,
    storage: Storage,
    project: str,
    name: str,
    source: str,
) -> DatasetRef:
    """Write an extracted frame as a dataset (column names kept as strings)."""
    frame = frame.rename(columns=str)
    duplicated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if duplicated:
        raise ExtractError(
            f"source {source} has duplicated columns: {', '.join(duplicated)}",
            code="duplicated_columns",
        )
    return storage.write_dataset(frame, project=project, name=name, source=source)


def extract(
    source: str,
    *,
    storage: Storage,
    project: str,
    name: str,
    project_dir: str | Path | None = None,
    fmt: str | None = None,
    read_options: dict[str, Any] | None = None,
) -> DatasetRef:
    """Read ``source`` (CSV or Parquet) and store it as dataset ``name`` of ``project``."""
    frame, uri = extract_frame(source, project_dir=project_dir, fmt=fmt, read_options=read_options)
    return store_extract(frame, storage=storage, project=project, name=name, source=uri)


# --------------------------------------------------------------------------- streaming

# pandas.read_csv options a streaming (pyarrow) read understands, and how.
STREAMING_CSV_UNSUPPORTED = frozenset({"thousands", "comment"})
# Column types are inferred from this many bytes at the head of a CSV file, as pyarrow infers
# them from its first block: enough rows to see every column's type (``dtype`` settles others).
CSV_BLOCK_BYTES = 16 << 20
# How many bytes pyarrow's streaming CSV reader then reads and parses at a time. Its I/O thread
# reads up to 32 blocks ahead of the parser (Arrow's background generator, not configurable),
# so the block size bounds memory: 32 x 16 MiB held 512 MiB of raw CSV at 10M rows, while
# 32 x 1 MiB holds 32 MiB at any size (docs/scale.md).
CSV_STREAM_BLOCK_BYTES = 1 << 20
_ARROW_TYPES = {
    "float": "float64",
    "float64": "float64",
    "float32": "float32",
    "int": "int64",
    "int64": "int64",
    "int32": "int32",
    "Int64": "int64",
    "bool": "bool",
    "boolean": "bool",
    "str": "string",
    "string": "string",
    "object": "string",
    "category": "string",
}


def _csv_arrow_options(options: dict[str, Any], block_bytes: int) -> tuple[Any, Any, Any]:
    """pyarrow CSV read, parse and convert options meaning what the pandas options mean."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    unsupported = sorted(set(options) & STREAMING_CSV_UNSUPPORTED)
    if unsupported:
        raise ExtractError(
            f"read_options {', '.join(unsupported)} are not supported when the extract streams "
            "(rows_per_partition or partition_by is set); clean the file first or extract it "
            "whole",
            code="bad_read_options",
        )
    read = pacsv.ReadOptions(
        block_size=block_bytes, encoding=options.get("encoding", "utf8"), use_threads=False
    )
    header = options.get("header", 0 if "names" not in options else None)
    names = options.get("names")
    skip = options.get("skiprows", 0)
    if not isinstance(skip, int):
        raise ExtractError(
            "read_options skiprows must be a number of rows when the extract streams",
            code="bad_read_options",
        )
    if header is None:
        read.skip_rows = skip
        if names:
            read.column_names = [str(n) for n in names]
        else:
            read.autogenerate_column_names = True
    elif header == 0:
        read.skip_rows = skip
        if names:
            read.column_names = [str(n) for n in names]
            read.skip_rows_after_names = 1
    else:
        raise ExtractError(
            f"read_options header={header!r} is not supported when the extract streams "
            "(use 0 or null)",
            code="bad_read_options",
        )
    parse = pacsv.ParseOptions(
        delimiter=options.get("sep", options.get("delimiter", ",")),
        quote_char=options.get("quotechar", '"'),
    )
    null_values: list[str] = []
    if options.get("keep_default_na", True):
        null_values += [
            "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
            "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
        ]  # fmt: skip
    na_values = options.get("na_values")
    if isinstance(na_values, str):
        null_values.append(na_values)
    elif isinstance(na_values, list):
        null_values += [str(v) for v in na_values]
    column_types: dict[str, Any] = {}
    dtype = options.get("dtype")
    if isinstance(dtype, dict):
        for column, kind in dtype.items():
            try:
                column_types[str(column)] = pa.type_for_alias(_ARROW_TYPES.get(kind, kind))
            except (ValueError, KeyError) as exc:
                raise ExtractError(
                    f"read_options dtype {column}: {kind!r} is not a type a streaming extract "
                    f"knows; use one of {', '.join(sorted(_ARROW_TYPES))}",
                    code="bad_read_options",
                ) from exc
    elif dtype is not None:
        raise ExtractError(
            "read_options dtype must map columns to types when the extract streams",
            code="bad_read_options",
        )
    for column in options.get("parse_dates") or []:
        column_types[str(column)] = pa.timestamp("ns")
    usecols = options.get("usecols")
    convert = pacsv.ConvertOptions(
        column_types=column_types,
        null_values=null_values,
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
        include_columns=[str(c) for c in usecols] if usecols else None,
        decimal_point=options.get("decimal", "."),
        true_values=["True", "TRUE", "true", *(options.get("true_values") or [])],
        false_values=["False", "FALSE", "false", *(options.get("false_values") or [])],
    )
    return read, parse, convert


_TYPE_HINT = (
    "; the column types come from the first rows of the file, so give this column a type in "
    "read_options.dtype"
)


def _csv_head_schema(fs: Any, path: str, read: Any, parse: Any, convert: Any) -> Any:
    """The schema pyarrow's streaming reader infers from the file's first ``read.block_size``
    bytes: its complete rows, decoded, as UTF-8 (the read of the whole file reuses it)."""
    import codecs
    import copy

    import pyarrow as pa
    import pyarrow.csv as pacsv

    with fs.open(path, "rb") as handle:
        data = handle.read(read.block_size)
        complete = len(data) < read.block_size or not handle.read(1)
    try:
        utf8 = codecs.lookup(read.encoding).name == "utf-8"
    except LookupError as exc:
        raise ExtractError(
            f"read_options encoding {read.encoding!r} is not an encoding Python knows",
            code="bad_read_options",
        ) from exc
    if not utf8:
        try:  # to UTF-8: a character may straddle the block's end
            text = codecs.getincrementaldecoder(read.encoding)().decode(data, final=complete)
        except UnicodeDecodeError as exc:
            raise ExtractError(
                f"cannot read the first rows of {path} as {read.encoding}: {exc}",
                code="bad_source_data",
            ) from exc
        data = text.encode("utf8")
    # the rows wholly in the block, as pyarrow's (a view, not a copy)
    block = pa.py_buffer(data) if complete else pa.py_buffer(data)[: data.rfind(b"\n") + 1]
    head_read = copy.copy(read)
    head_read.encoding = "utf8"
    head_read.block_size = max(block.size, 1)
    with pacsv.open_csv(
        pa.BufferReader(block), read_options=head_read, parse_options=parse, convert_options=convert
    ) as reader:
        return reader.schema


def stream_source(
    uri: str,
    fmt: str,
    read_options: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    *,
    batch_rows: int = 65_536,
    csv_block_bytes: int | None = None,
) -> Any:
    """A ``pyarrow.RecordBatchReader`` over a CSV or Parquet source, read in bounded pieces.

    CSV is parsed by pyarrow's streaming reader (column types from the first block; a later
    value that does not fit is an error naming the column, fixed with ``dtype``); Parquet is
    scanned a row group at a time. ``nrows`` stops the stream early.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds

    from mlwp.data.partitions import arrow_filesystem

    options = dict(read_options or {})
    allowed = CSV_OPTIONS if fmt == "csv" else PARQUET_OPTIONS
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ExtractError(
            f"read_options {', '.join(unknown)} are not supported for {fmt}; "
            f"allowed: {', '.join(sorted(allowed))}",
            code="bad_read_options",
        )
    fs, path = filesystem(uri, **(storage_options or {}))
    if not fs.exists(path):
        raise ExtractError(f"source {uri} does not exist", code="source_not_found")
    try:
        if fmt == "csv":
            import pyarrow.csv as pacsv

            read, parse, convert = _csv_arrow_options(options, CSV_BLOCK_BYTES)
            # The types of the first CSV_BLOCK_BYTES, fixed for the small blocks that follow.
            convert.column_types = {
                field.name: field.type for field in _csv_head_schema(fs, path, read, parse, convert)
            }
            read.block_size = csv_block_bytes or CSV_STREAM_BLOCK_BYTES
            stream = arrow_filesystem(fs).open_input_stream(path)
            reader = pacsv.open_csv(
                stream, read_options=read, parse_options=parse, convert_options=convert
            )
            schema = reader.schema
            batches: Any = reader
        else:
            import pyarrow.parquet as pq

            filters = options.get("filters")
            dataset = ds.dataset(path, filesystem=arrow_filesystem(fs), format="parquet")
            scanner = dataset.scanner(
                columns=options.get("columns"),
                filter=pq.filters_to_expression(filters) if filters else None,
                batch_size=batch_rows,
                batch_readahead=1,
                fragment_readahead=1,
            )
            schema = scanner.projected_schema
            batches = scanner.to_batches()
    except (pa.ArrowInvalid, OSError) as exc:
        # a value of the first streamed block that does not fit the head's types
        hint = _TYPE_HINT if "conversion error" in str(exc) else ""
        raise ExtractError(
            f"cannot read {uri} as {fmt}: {exc}{hint}", code="bad_source_data"
        ) from exc
    names = [str(n) for n in schema.names]
    if not names:
        raise ExtractError(f"source {uri} has no columns", code="empty_source")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ExtractError(
            f"source {uri} has duplicated columns: {', '.join(duplicated)}",
            code="duplicated_columns",
        )
    limit = options.get("nrows")

    def limited() -> Any:
        seen = 0
        iterator = iter(batches)
        while limit is None or seen < limit:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                raise ExtractError(
                    f"cannot read {uri} as {fmt} after row {seen}: {exc}{_TYPE_HINT}",
                    code="bad_source_data",
                ) from exc
            if limit is not None and seen + batch.num_rows > limit:
                batch = batch.slice(0, limit - seen)
            seen += batch.num_rows
            yield batch

    return pa.RecordBatchReader.from_batches(schema, limited())


def extract_partitioned(
    source: str,
    *,
    storage: Storage,
    project: str,
    name: str,
    project_dir: str | Path | None = None,
    fmt: str | None = None,
    read_options: dict[str, Any] | None = None,
    rows_per_partition: int | None = None,
    partition_by: list[str] | None = None,
    source_storage_options: dict[str, Any] | None = None,
) -> DatasetRef:
    """Stream ``source`` into partitions (:mod:`mlwp.data.partitions`) in bounded memory."""
    from mlwp.data.partitions import write_partitioned

    uri = resolve_source(source, project_dir)
    reader = stream_source(uri, infer_format(source, fmt), read_options, source_storage_options)
    return write_reader(
        reader,
        storage=storage,
        project=project,
        name=name,
        source=uri,
        rows_per_partition=rows_per_partition,
        partition_by=partition_by,
        writer=write_partitioned,
    )


def write_reader(
    reader: Any,
    *,
    storage: Storage,
    project: str,
    name: str,
    source: str,
    rows_per_partition: int | None,
    partition_by: list[str] | None,
    writer: Any = None,
) -> DatasetRef:
    """Write a record-batch stream as a partitioned dataset, naming a bad ``partition_by``."""
    import pyarrow as pa

    from mlwp.data.partitions import write_partitioned

    missing = [c for c in partition_by or [] if c not in reader.schema.names]
    if missing:
        raise ExtractError(
            f"partition_by {', '.join(missing)}: no such column in {source} "
            f"(columns: {', '.join(reader.schema.names)})",
            code="bad_partition_by",
        )
    try:
        return (writer or write_partitioned)(
            storage,
            reader,
            project=project,
            name=name,
            source=source,
            rows_per_partition=rows_per_partition,
            partition_by=partition_by,
        )
    except pa.ArrowInvalid as exc:
        raise ExtractError(f"cannot store {source}: {exc}", code="bad_source_data") from exc


# PostgreSQL type oids -> Arrow types (anything else is read as text).
_PG_TYPES = {
    16: "bool",
    20: "int64",
    21: "int16",
    23: "int32",
    700: "float32",
    701: "float64",
    1700: "float64",  # numeric: as pandas would show it, a float
    25: "string",
    1042: "string",
    1043: "string",
    1082: "date32",
    1114: "timestamp[us]",
    1184: "timestamp[us, tz=UTC]",
}


def cursor_reader(cursor: Any, *, batch_rows: int = 65_536) -> Any:
    """A ``RecordBatchReader`` over an executed DB-API cursor, ``batch_rows`` rows at a time.

    With a server-side (named) cursor, PostgreSQL sends the rows as they are fetched, so only
    one batch is ever in this process. Column types come from the result's type oids.
    """
    import pyarrow as pa

    description = cursor.description or []
    fields = []
    for column in description:
        alias = _PG_TYPES.get(int(column[1]) if column[1] is not None else -1, "string")
        if alias.startswith("timestamp[us, tz"):
            kind = pa.timestamp("us", tz="UTC")
        elif alias.startswith("timestamp"):
            kind = pa.timestamp("us")
        else:
            kind = pa.type_for_alias(alias)
        fields.append(pa.field(str(column[0]), kind))
    schema = pa.schema(fields)

    def batches() -> Any:
        while rows := cursor.fetchmany(batch_rows):
            columns = list(zip(*rows, strict=True))
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(_plain(values, field.type), type=field.type, from_pandas=True)
                    for field, values in zip(schema, columns, strict=True)
                ],
                schema=schema,
            )

    return pa.RecordBatchReader.from_batches(schema, batches())


def _plain(values: Any, kind: Any) -> list[Any]:
    """Cursor values as Arrow takes them for ``kind`` (numeric Decimals as floats, text)."""
    import pyarrow as pa

    if pa.types.is_floating(kind):
        return [None if v is None else float(v) for v in values]
    if pa.types.is_string(kind):
        return [None if v is None else str(v) for v in values]
    return list(values)
