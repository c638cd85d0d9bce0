"""Partitioned datasets: data larger than a worker's memory, written and read in bounded pieces.

A partitioned dataset is the same content-addressed dataset as a single-file one
(:mod:`mlwp.data.storage`), except that its ``.parquet`` is a folder of Parquet files, the layout
Spark, pyarrow and pandas all read as one table::

    <root>/<project>/datasets/<name>/<sha256>.parquet/part-0.parquet
                                                     /part-1.parquet ...
                                                     (or <column>=<value>/part-0.parquet ...)
    <root>/<project>/datasets/<name>/<sha256>.json   the sidecar, as today, plus ``partitions``

The dataset's sha256 is the sha256 of its manifest: the ordered list of its files with each
file's own sha256 and row count (a Merkle root). Reading a partition verifies that file's
bytes against the manifest, so a modified partition is refused as a modified file is today.

Writing streams: Arrow record batches go through pyarrow's dataset writer
(``max_rows_per_file`` is ``rows_per_partition``; ``partition_by`` gives Hive-style folders)
into a staging folder; each file is hashed in 1 MiB reads; then the folder is moved to its
content address. Peak memory is a few record batches and row groups, whatever the number of
rows. Identical content lands at the same address, so a retried task writes nothing twice.

pyarrow is imported inside the functions (the DAG processor imports operators, not this).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import threading
import uuid
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from mlwp.data.storage import DatasetIntegrityError, DatasetRef, Storage, StorageError

if TYPE_CHECKING:
    import fsspec
    import pandas as pd
    import pyarrow as pa

LAYOUT = "partitioned"
DEFAULT_BATCH_ROWS = 65_536
# Row groups of at most this many rows: what a reader holds at once when it scans a file.
MAX_ROWS_PER_GROUP = 65_536
HASH_BLOCK = 1 << 20
# A partition file up to this size is read into memory whole when it is read (verified and
# decoded from the same bytes, see PartitionedReader.batches): what a reader holds beside its
# batches. Larger files are streamed.
IN_MEMORY_BYTES = 64 << 20


@dataclass(frozen=True)
class Partition:
    """One file of a partitioned dataset: its path inside the dataset folder, rows, sha256."""

    path: str
    rows: int
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> Partition:
        return cls(
            path=str(document["path"]),
            rows=int(document["rows"]),
            sha256=str(document["sha256"]),
            bytes=int(document.get("bytes", 0)),
        )


def manifest_sha256(partitions: Iterable[Partition]) -> str:
    """The sha256 naming a partitioned dataset: that of its ordered list of files."""
    manifest = [[p.path, p.sha256, p.rows] for p in partitions]
    return hashlib.sha256(orjson.dumps(manifest)).hexdigest()


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> Any:
    """The pyarrow filesystem over an fsspec one (local, or s3fs with its credentials)."""
    from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return LocalFileSystem()
    return PyFileSystem(FSSpecHandler(fs))


def sha256_of_file(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, int]:
    """sha256 and size of a file, read in 1 MiB blocks (never the whole file at once)."""
    digest = hashlib.sha256()
    size = 0
    with fs.open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def pandas_schema(schema: pa.Schema) -> dict[str, str]:
    """Column -> pandas dtype name, as single-file sidecars record it."""
    frame = schema.empty_table().to_pandas()
    return {str(column): str(dtype) for column, dtype in frame.dtypes.items()}


def is_partitioned(sidecar: dict[str, Any]) -> bool:
    return sidecar.get("layout") == LAYOUT


def partitions_of(storage: Storage, dataset_uri: str) -> list[Partition]:
    """The files of a dataset: its manifest, or the one file of a single-file dataset."""
    sidecar = storage.read_sidecar(dataset_uri)
    if not is_partitioned(sidecar):
        return [
            Partition(
                path="",
                rows=int(sidecar.get("rows", 0)),
                sha256=str(sidecar["sha256"]),
                bytes=int(sidecar.get("bytes", 0)),
            )
        ]
    return [Partition.from_dict(item) for item in sidecar["partitions"]]


def partition_uri(dataset_uri: str, partition: Partition) -> str:
    """The URI of one file of a dataset (the dataset itself for a single-file one)."""
    return f"{dataset_uri}/{partition.path}" if partition.path else dataset_uri


def record_dataset(
    storage: Storage,
    partitions: list[Partition],
    *,
    schema: pa.Schema,
    project: str,
    name: str,
    source: str,
    metadata: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> DatasetRef:
    """Write the sidecar of a partitioned dataset already at its address (kept if present)."""
    sha256 = manifest_sha256(partitions)
    uri = storage.dataset_uri(project, name, sha256)
    sidecar_uri = storage.sidecar_uri_of(uri)
    rows = sum(p.rows for p in partitions)
    columns = list(schema.names)
    if not storage.exists(sidecar_uri):
        sidecar: dict[str, Any] = {
            "uri": uri,
            "sha256": sha256,
            "project": project,
            "name": name,
            "rows": rows,
            "columns": columns,
            "schema": pandas_schema(schema),
            "bytes": sum(p.bytes for p in partitions),
            "source": source,
            "created": datetime.now(UTC).isoformat(),
            "layout": LAYOUT,
            "partitions": [p.to_dict() for p in partitions],
            **(options or {}),
        }
        if metadata:
            sidecar["metadata"] = metadata
        storage.write_json(sidecar_uri, sidecar)
    return DatasetRef(
        uri=uri,
        sha256=sha256,
        rows=rows,
        columns=columns,
        name=name,
        project=project,
        sidecar_uri=sidecar_uri,
        extra={"layout": LAYOUT, "partitions": len(partitions)},
    )


class _Staging:
    """A staging folder beside the dataset versions; moved to its content address at the end."""

    def __init__(self, storage: Storage, project: str, name: str) -> None:
        self.storage = storage
        self.directory = storage.dataset_dir(project, name)
        self.uri = f"{self.directory}/.staging-{uuid.uuid4().hex}"
        self.fs, self.path = storage._fs(self.uri)

    def commit(
        self,
        partitions: list[Partition],
        *,
        schema: pa.Schema,
        project: str,
        name: str,
        source: str,
        metadata: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
    ) -> DatasetRef:
        sha256 = manifest_sha256(partitions)
        uri = self.storage.dataset_uri(project, name, sha256)
        _, final_path = self.storage._fs(uri)
        if not self.fs.exists(final_path):
            # File by file: s3fs's recursive mv also copies the folder's own (non-existent)
            # key and fails after the files, leaving the staging folder behind.
            for partition in partitions:
                target = f"{final_path}/{partition.path}"
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                self.fs.mv(f"{self.path}/{partition.path}", target)
        self.discard()
        return record_dataset(
            self.storage,
            partitions,
            schema=schema,
            project=project,
            name=name,
            source=source,
            metadata=metadata,
            options=options,
        )

    def discard(self) -> None:
        if self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)


def write_partitioned(
    storage: Storage,
    reader: pa.RecordBatchReader,
    *,
    project: str,
    name: str,
    source: str,
    rows_per_partition: int | None = None,
    partition_by: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> DatasetRef:
    """Stream ``reader``'s record batches into a partitioned, content-addressed dataset.

    Without ``partition_by``, one Parquet writer at a time takes the batches in order and a
    new file starts every ``rows_per_partition`` rows (the least memory: a row group). With it,
    pyarrow's dataset writer routes rows into the Hive folders.
    """
    import pyarrow.dataset as ds

    options = {
        "rows_per_partition": rows_per_partition,
        "partition_by": list(partition_by or []),
        # the Hive folder names hold these columns' values; their types come back
        "partition_types": {
            column: str(reader.schema.field(column).type) for column in partition_by or []
        },
    }
    if not partition_by:
        return write_parts(
            storage,
            _split_rows(reader, rows_per_partition),
            project=project,
            name=name,
            source=source,
            metadata=metadata,
            options=options,
        )
    staging = _Staging(storage, project, name)
    written: list[str] = []
    group = min(MAX_ROWS_PER_GROUP, rows_per_partition or MAX_ROWS_PER_GROUP)
    try:
        ds.write_dataset(
            reader,
            staging.path,
            format="parquet",
            filesystem=arrow_filesystem(staging.fs),
            basename_template="part-{i}.parquet",
            partitioning=list(partition_by) if partition_by else None,
            partitioning_flavor="hive" if partition_by else None,
            max_rows_per_file=rows_per_partition or 0,
            max_rows_per_group=group,
            min_rows_per_group=group,
            # one writer thread, in order: the same rows give the same files (and sha256)
            use_threads=False,
            preserve_order=True,
            file_visitor=lambda written_file: written.append(written_file.path),
        )
        partitions = _hash_partitions(staging, written)
        return staging.commit(
            partitions,
            schema=reader.schema,
            project=project,
            name=name,
            source=source,
            metadata=metadata,
            options=options,
        )
    except BaseException:
        staging.discard()
        raise


def _hash_partitions(staging: _Staging, written: list[str]) -> list[Partition]:
    import pyarrow.parquet as pq

    prefix = staging.path.rstrip("/") + "/"
    partitions = []
    for path in sorted(written, key=_natural):
        relative = path[len(prefix) :] if path.startswith(prefix) else path.rsplit("/", 1)[-1]
        sha256, size = sha256_of_file(staging.fs, path)
        with staging.fs.open(path, "rb") as handle:
            rows = pq.ParquetFile(handle).metadata.num_rows
        partitions.append(Partition(path=relative, rows=rows, sha256=sha256, bytes=size))
    if not partitions:
        raise StorageError("the source produced no rows to store", code="empty_dataset")
    return partitions


def _natural(path: str) -> tuple[Any, ...]:
    """Sort part-2 before part-10 (within each Hive folder)."""
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path))


def _split_rows(
    reader: pa.RecordBatchReader, limit: int | None
) -> Iterator[tuple[pa.Schema, Iterator[pa.RecordBatch]]]:
    """Cut a batch stream into consecutive parts of ``limit`` rows (each part consumed in turn)."""
    stream = iter(reader)
    pending: list[pa.RecordBatch] = []

    def part(first: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        rows = 0
        batch: pa.RecordBatch | None = first
        while batch is not None:
            if limit and rows + batch.num_rows > limit:
                keep = limit - rows
                yield batch.slice(0, keep)
                pending.append(batch.slice(keep))
                return
            yield batch
            rows += batch.num_rows
            if limit and rows == limit:
                return
            batch = next(stream, None)

    while True:
        first = pending.pop() if pending else next(stream, None)
        if first is None:
            return
        if first.num_rows == 0:
            continue
        yield reader.schema, part(first)


def parquet_writer(
    handle: Any,
    schema: pa.Schema,
    unique: Collection[str] = (),
    split_floats: bool = False,
    *,
    no_statistics: Collection[str] = (),
    sample: pa.Table | None = None,
) -> Any:
    """A Parquet writer of a dataset's files: snappy; dictionary pages for text and integer
    columns only (they repeat; fractional numbers rarely do, and trying costs about a third
    of a scored chunk's write), and not for the ``unique`` ones: columns that identify rows
    (a scoring's keys or ``row``), whose dictionary would hold every value. Measured on a
    scored chunk (int64 key, label, two probabilities): 0.11 s per 1M rows instead of 0.25,
    and a tenth fewer bytes.

    ``sample``: the file's first row group, from which the columns' layout is told instead
    (:func:`column_layout`: dictionaries for the columns that repeat there, fractional
    numbers included; none for those that (nearly) never do, integers of those then
    DELTA_BINARY_PACKED).

    ``split_floats``: number columns in encodings that suit a scoring's output (lossless):
    floating-point ones in BYTE_STREAM_SPLIT (each value's bytes in separate streams: a
    model's probabilities are float32 values widened to float64, whose low bytes are zeros,
    and split, snappy compresses them in long runs, in a third less time for as many bytes:
    a scored chunk in 0.06 s per 1M rows instead of 0.09), the ``unique`` integer ones
    (``row``, integer keys) in DELTA_BINARY_PACKED (a third fewer bytes for sequential ids, a
    tenth less time). Read by pyarrow, pandas, DuckDB, Spark 3.2+.

    ``no_statistics``: columns written without min/max statistics, for columns no reader
    prunes row groups by: a scoring's predictions, in the input's order, span every class
    and most of the probabilities' range in each row group, and the min and max of a text
    label cost a comparison of every string (a fifth of a scored chunk's write)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    encoding: dict[str, str] = {}
    if sample is not None and sample.num_rows:
        repeating, encoding = column_layout(sample)
        repeating = [name for name in repeating if name not in unique]
    else:
        repeating = [
            f.name
            for f in schema
            if f.name not in unique
            and (
                pa.types.is_string(f.type)
                or pa.types.is_large_string(f.type)
                or pa.types.is_integer(f.type)
                or pa.types.is_dictionary(f.type)
            )
        ]
    for f in schema if split_floats else ():
        if pa.types.is_floating(f.type):
            encoding[f.name] = "BYTE_STREAM_SPLIT"
        elif f.name in unique and pa.types.is_integer(f.type):
            encoding[f.name] = "DELTA_BINARY_PACKED"
    statistics: bool | list[str] = [f.name for f in schema if f.name not in no_statistics]
    return pq.ParquetWriter(
        handle,
        schema,
        compression="snappy",
        use_dictionary=repeating,
        column_encoding=encoding or None,
        write_statistics=statistics if no_statistics else True,
    )


# In a file's first row group: a column with at most this share of distinct values repeats
# (a dictionary page pays: fewer bytes, and readers decode each distinct value once) ...
REPEATING_SHARE = 0.25
# ... and one with more than this share is (nearly) unique: a dictionary would hold every
# value and cost more to write and to read than the values themselves.
UNIQUE_SHARE = 0.5


def column_layout(sample: pa.Table) -> tuple[list[str], dict[str, str]]:
    """The columns to write with dictionary pages, and the encodings of others, told from a
    file's first row group (``sample``) by each column's share of distinct values.

    Text and integers: a dictionary unless (nearly) unique (more than ``UNIQUE_SHARE``),
    integers of those then DELTA_BINARY_PACKED (ids, counters, timestamps: sequential
    values in a few bits each). Fractional numbers: a dictionary when they repeat (at most
    ``REPEATING_SHARE``: prices, rates, indicator columns), else plain. Dictionary columns
    keep their dictionary. Measured on the benchmark's churn extract (1M rows, an int64 id,
    money columns): files 9.8 MB instead of 17.9, a scoring's read 0.048 s per 1M rows
    instead of 0.087 (the id: 0.003 instead of 0.028), the write a tenth faster. The
    sample decides for the whole file: the same rows give the same file.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = sample.num_rows
    dictionary: list[str] = []
    encoding: dict[str, str] = {}
    for field, column in zip(sample.schema, sample.columns, strict=True):
        kind = field.type
        if pa.types.is_dictionary(kind):
            dictionary.append(field.name)
            continue
        text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        floating = pa.types.is_floating(kind)
        if not (text or floating or pa.types.is_integer(kind)):
            continue  # booleans are bit-packed; dates, times and the rest as pyarrow writes them
        share = pc.count_distinct(column).as_py() / max(rows, 1)
        if share <= (REPEATING_SHARE if floating else UNIQUE_SHARE):
            dictionary.append(field.name)
        elif pa.types.is_integer(kind):
            encoding[field.name] = "DELTA_BINARY_PACKED"
    return dictionary, encoding


class _BackgroundHash:
    """The sha256 of a buffer, computed in a thread of its own (hashlib lets the GIL go)."""

    def __init__(self, data: bytes) -> None:
        self._digest = ""
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(data,), name="partition-sha256", daemon=True
        )
        self._thread.start()

    def _run(self, data: bytes) -> None:
        try:
            self._digest = hashlib.sha256(data).hexdigest()
        except BaseException as exc:  # pragma: no cover - hashlib does not fail on bytes
            self._error = exc

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._digest


class HashingWriter(io.RawIOBase):
    """A binary file being written, and the sha256 and size of what went into it: a file
    hashed as it is written, not read back."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.raw.write(data)
        self.digest.update(data)  # hashlib lets the GIL go for large blocks
        size = memoryview(data).nbytes
        self.size += size
        return size

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()


def write_in_background(writer: Any, parts: Iterable[pa.RecordBatch | pa.Table]) -> int:
    """Write each batch or table as row groups of at most MAX_ROWS_PER_GROUP rows, in a
    second thread: the producer (a scoring, a CSV parse) makes the next while Parquet
    encodes this one (pyarrow releases the GIL). One part waits at most, so memory is two
    parts. Returns the rows written."""
    from concurrent.futures import Future, ThreadPoolExecutor

    import pyarrow as pa

    rows = 0
    with ThreadPoolExecutor(1, thread_name_prefix="parquet-writer") as pool:
        pending: Future[None] | None = None
        for part in parts:
            table = pa.Table.from_batches([part]) if isinstance(part, pa.RecordBatch) else part
            if pending is not None:
                pending.result()
            pending = pool.submit(writer.write_table, table, MAX_ROWS_PER_GROUP)
            rows += table.num_rows
        if pending is not None:
            pending.result()
    return rows


def row_groups(
    schema: pa.Schema, batches: Iterable[pa.RecordBatch], rows: int = MAX_ROWS_PER_GROUP
) -> Iterator[pa.Table]:
    """The batches regrouped into tables of ``rows`` rows (the last one shorter): a writer
    makes at least one row group per call, so batches of any size give the same file."""
    import pyarrow as pa

    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        if held >= rows:
            table = pa.Table.from_batches(pending, schema)
            full = held - held % rows
            yield table.slice(0, full)
            pending, held = table.slice(full).to_batches(), held - full
    if held:
        yield pa.Table.from_batches(pending, schema)


def write_parts(
    storage: Storage,
    parts: Iterable[tuple[pa.Schema, Iterator[pa.RecordBatch]]],
    *,
    project: str,
    name: str,
    source: str,
    metadata: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> DatasetRef:
    """Write each (schema, batches) as one file ``part-<n>.parquet``, in order, then commit."""

    staging = _Staging(storage, project, name)
    partitions: list[Partition] = []
    schema = None
    try:
        for index, (part_schema, batches) in enumerate(parts):
            schema = schema or part_schema
            path = f"{staging.path}/part-{index}.parquet"
            staging.fs.makedirs(staging.path, exist_ok=True)
            groups = row_groups(part_schema, batches)
            first = next(groups, None)
            with (
                staging.fs.open(path, "wb") as handle,
                parquet_writer(handle, part_schema, sample=first) as out,
            ):
                write_in_background(out, itertools.chain([] if first is None else [first], groups))
            partitions.extend(_hash_partitions(staging, [path]))
        if schema is None or not partitions:
            raise StorageError("the source produced no rows to store", code="empty_dataset")
        return staging.commit(
            partitions,
            schema=schema,
            project=project,
            name=name,
            source=source,
            metadata=metadata,
            options=options,
        )
    except BaseException:
        staging.discard()
        raise


def commit_staged(
    storage: Storage,
    staged: list[dict[str, Any]],
    *,
    project: str,
    name: str,
    source: str,
    metadata: dict[str, Any] | None = None,
) -> DatasetRef:
    """Gather files that mapped tasks wrote (:func:`stage_part`) into one partitioned dataset.

    ``staged`` holds each file's document (``uri``, ``rows``, ``sha256``, ``bytes``, ``index``);
    they are ordered by ``index`` and moved under the dataset's content address.
    """
    import pyarrow.parquet as pq

    if not staged:
        raise StorageError(f"dataset {name!r}: no partition was produced", code="empty_dataset")
    ordered = sorted(staged, key=lambda item: int(item["index"]))
    partitions = [
        Partition(f"part-{item['index']}.parquet", int(item["rows"]), item["sha256"], item["bytes"])
        for item in ordered
    ]
    sha256 = manifest_sha256(partitions)
    uri = storage.dataset_uri(project, name, sha256)
    fs, final_path = storage._fs(uri)
    if not fs.exists(final_path):
        fs.makedirs(final_path, exist_ok=True)
        for item, partition in zip(ordered, partitions, strict=True):
            _, staged_path = storage._fs(item["uri"])
            fs.mv(staged_path, f"{final_path}/{partition.path}")
    with fs.open(f"{final_path}/{partitions[0].path}", "rb") as handle:
        schema = pq.ParquetFile(handle).schema_arrow
    # Staged files that were not moved (the dataset already existed) are dropped, and so is
    # the run's staging folder once the last of them is.
    folders = set()
    for item in ordered:
        _, staged_path = storage._fs(item["uri"])
        folders.add(staged_path.rsplit("/", 1)[0])
        if fs.exists(staged_path):
            fs.rm(staged_path)
    for folder in folders:
        if fs.exists(folder) and not fs.ls(folder):
            fs.rm(folder, recursive=True)
    return record_dataset(
        storage,
        partitions,
        schema=schema,
        project=project,
        name=name,
        source=source,
        metadata=metadata,
    )


def stage_part(
    storage: Storage,
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    *,
    project: str,
    name: str,
    key: str,
    index: int,
    unique: Collection[str] = (),
    split_floats: bool = False,
    no_statistics: Collection[str] = (),
) -> dict[str, Any]:
    """Write one partition that a mapped task produced, to be gathered by :func:`commit_staged`.

    The staged file's name holds ``key`` (the run) and ``index`` (the map index), so a retried
    task overwrites its own file and never another's. ``unique``, ``split_floats``,
    ``no_statistics``: see :func:`parquet_writer`. The file is hashed as it is written.
    """

    directory = f"{storage.dataset_dir(project, name)}/.staging-{key}"
    uri = f"{directory}/part-{index}.parquet"
    fs, path = storage._fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as handle:
        hashing = HashingWriter(handle)
        with parquet_writer(
            hashing, schema, unique, split_floats, no_statistics=no_statistics
        ) as writer:
            rows = write_in_background(writer, batches)
    sha256, size = hashing.digest.hexdigest(), hashing.size
    return {"uri": uri, "rows": rows, "sha256": sha256, "bytes": size, "index": index}


def stage_file(
    storage: Storage,
    source_uri: str,
    *,
    project: str,
    name: str,
    key: str,
    index: int,
    first_row: int | None = None,
) -> dict[str, Any]:
    """Stage a Parquet file written elsewhere (a SageMaker job's output) as partition ``index``.

    Copied, not moved (a server-side copy on S3): the source may be in a bucket the worker
    only reads. With ``first_row`` (a nonzero one), its ``row`` column counts from its first
    row in the file and is shifted to count from ``first_row``: the file is rewritten, one
    row group at a time. The document is :func:`stage_part`'s, for :func:`commit_staged`.
    """
    import pyarrow.parquet as pq

    uri = f"{storage.dataset_dir(project, name)}/.staging-{key}/part-{index}.parquet"
    source_fs, source_path = storage._fs(source_uri)
    fs, path = storage._fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if first_row:
        _shift_rows(source_fs, source_path, fs, path, first_row)
    elif source_fs is fs:
        fs.copy(source_path, path)
    else:
        with source_fs.open(source_path, "rb") as source, fs.open(path, "wb") as target:
            while block := source.read(1 << 20):
                target.write(block)
    with fs.open(path, "rb") as handle:
        rows = pq.ParquetFile(handle).metadata.num_rows
    sha256, size = sha256_of_file(fs, path)
    return {"uri": uri, "rows": rows, "sha256": sha256, "bytes": size, "index": index}


def _shift_rows(
    source_fs: fsspec.AbstractFileSystem,
    source_path: str,
    fs: fsspec.AbstractFileSystem,
    path: str,
    first_row: int,
) -> None:
    """Copy a Parquet file, its ``row`` column plus ``first_row``, a row group at a time."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with source_fs.open(source_path, "rb") as source, fs.open(path, "wb") as target:
        file = pq.ParquetFile(source)
        schema = file.schema_arrow
        if "row" not in schema.names:
            raise StorageError(f"{source_path}: no 'row' column to number", code="no_row_column")
        position = schema.get_field_index("row")
        with parquet_writer(target, schema, ["row"]) as writer:
            for group in range(file.num_row_groups):
                table = file.read_row_group(group)
                rows = pc.add(table.column(position), first_row)
                writer.write_table(table.set_column(position, schema.field(position), rows))


class PartitionedReader:
    """Reads a stored dataset (partitioned or a single file) one record batch at a time."""

    def __init__(self, storage: Storage, dataset_uri: str) -> None:
        self.storage = storage
        self.uri = dataset_uri
        self.sidecar = storage.read_sidecar(dataset_uri)
        self.partitions = partitions_of(storage, dataset_uri)
        self.columns = [str(c) for c in self.sidecar.get("columns", [])]
        self.partition_types = dict(self.sidecar.get("partition_types") or {})

    def batches(
        self,
        partition: Partition,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        verify: bool = True,
        dictionary: Sequence[str] = (),
        columns: Sequence[str] | None = None,
        threads: bool = True,
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of one file, its bytes checked against the manifest before the
        first batch is given; the ``dictionary`` columns as Arrow dictionaries (text is stored
        so in Parquet: each distinct value is then decoded once, not once per row); only
        ``columns`` when given (the Hive folders' columns are always added). ``threads``:
        Arrow decodes the columns in its thread pool (False: in the calling thread, for a
        caller that already reads in a thread of its own beside other work).

        A file of at most :data:`IN_MEMORY_BYTES` (by the manifest) is read once: its bytes
        are hashed in a second thread while the first batch is decoded from the same bytes,
        so what is verified is exactly what is decoded (no second read, no moment where the
        file could change between the two). A larger one is hashed 1 MiB at a time, then read.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        uri = partition_uri(self.uri, partition)
        fs, path = self.storage._fs(uri)
        hive = _hive_values(partition.path)
        stored = [c for c in dictionary if c not in hive]  # the folders' are not stored
        read = None if columns is None else [c for c in columns if c not in hive]
        in_memory = 0 < partition.bytes <= IN_MEMORY_BYTES
        hashing: _BackgroundHash | None = None
        with contextlib.ExitStack() as stack:
            if in_memory:
                with fs.open(path, "rb") as handle:  # a byte more: a longer file is not it
                    data = handle.read(partition.bytes + 1 if verify else -1)
                if verify:
                    if len(data) != partition.bytes:  # not the manifest's file
                        raise _modified(uri, partition, sha256_of_file(fs, path)[0])
                    hashing = _BackgroundHash(data)
                source: Any = pa.BufferReader(data)
            else:
                if verify:
                    self._check(uri, partition, sha256_of_file(fs, path)[0])
                source = stack.enter_context(fs.open(path, "rb"))
            try:
                file = pq.ParquetFile(source, read_dictionary=stored or None)
                chunks = file.iter_batches(batch_size=batch_rows, columns=read, use_threads=threads)
                batch = next(chunks, None)
            except BaseException:
                if hashing is not None:  # bytes that are not the manifest's: say that first
                    self._check(uri, partition, hashing.result())
                raise
            if hashing is not None:
                self._check(uri, partition, hashing.result())
            while batch is not None:
                yield self._with_hive_columns(batch, hive) if hive else batch
                batch = next(chunks, None)

    @staticmethod
    def _check(uri: str, partition: Partition, actual: str) -> None:
        if actual != partition.sha256:
            raise _modified(uri, partition, actual)

    def schema(self, partition: Partition) -> pa.Schema:
        """The schema of a partition's batches: its file's, with its Hive folders' columns."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        fs, path = self.storage._fs(partition_uri(self.uri, partition))
        with fs.open(path, "rb") as handle:
            schema = pq.ParquetFile(handle).schema_arrow
        hive = _hive_values(partition.path)
        if not hive:
            return schema
        empty = pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)
        return self._with_hive_columns(empty, hive).schema

    def _with_hive_columns(self, batch: pa.RecordBatch, values: dict[str, str]) -> pa.RecordBatch:
        import pyarrow as pa

        present = dict(zip(batch.schema.names, batch.columns, strict=True))
        for key, value in values.items():
            kind = pa.type_for_alias(self.partition_types.get(key, "string"))
            text = None if value == "__HIVE_DEFAULT_PARTITION__" else value
            present[key] = pa.array([text] * batch.num_rows, type=pa.string()).cast(kind)
        order = [c for c in self.columns if c in present] or list(present)
        return pa.RecordBatch.from_arrays([present[c] for c in order], names=order)


def _modified(uri: str, partition: Partition, actual: str) -> DatasetIntegrityError:
    return DatasetIntegrityError(
        f"{uri} is corrupt or was modified: its sha256 is {actual}, "
        f"the dataset's manifest says {partition.sha256}"
    )


def _hive_values(path: str) -> dict[str, str]:
    from urllib.parse import unquote

    values = {}
    for segment in path.split("/")[:-1]:
        if "=" in segment:
            key, _, value = segment.partition("=")
            values[unquote(key)] = unquote(value)
    return values


def read_partitioned(storage: Storage, dataset_uri: str, *, verify: bool = True) -> pd.DataFrame:
    """The whole partitioned dataset as one DataFrame (for the tasks that still need one)."""
    import pyarrow as pa

    reader = PartitionedReader(storage, dataset_uri)
    tables = []
    for partition in reader.partitions:
        batches = list(reader.batches(partition, verify=verify))
        if batches:
            tables.append(pa.Table.from_batches(batches))
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.to_pandas()


def copy_dataset(storage: Storage, dataset_uri: str, target_uri: str) -> None:
    """Copy a partitioned dataset's files under the folder ``target_uri``, 1 MiB at a time."""
    for partition in partitions_of(storage, dataset_uri):
        source_fs, source_path = storage._fs(partition_uri(dataset_uri, partition))
        target = f"{target_uri.rstrip('/')}/{partition.path or 'part-0.parquet'}"
        target_fs, target_path = storage._fs(target)
        target_fs.makedirs(target_path.rsplit("/", 1)[0], exist_ok=True)
        with source_fs.open(source_path, "rb") as reader, target_fs.open(target_path, "wb") as out:
            while block := reader.read(HASH_BLOCK):
                out.write(block)
