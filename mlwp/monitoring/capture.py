"""Captured predictions and their labels: schemas, storage layout, reading and joining.

Serving writes a sample of what it scored (one row per request: the body as received and the
answer as sent, shadow results beside served ones, :func:`request_schema`) and
``POST /v1/models/{model}/feedback`` or a ``labels`` source write the outcomes; both land
under the platform storage root (``file://`` or ``s3://``), partitioned by model and day,
Hive style::

    <root>/monitoring/capture/model=<model>/date=YYYY-MM-DD/<part-uuid>.spool
    <root>/monitoring/capture/model=<model>/date=YYYY-MM-DD/compacted-<hash>.parquet
    <root>/monitoring/labels/model=<model>/date=YYYY-MM-DD/<part-uuid>.parquet

Serving spools its captures as framed parts (:class:`SpoolWriter`: its buffer's bodies as
they lie in memory, compressed block by block, with the requests' columns as JSON; no Arrow
table and no Parquet encoding in the serving process); the monitor task folds them into zstd Parquet
(:func:`compact_capture`), idempotently; readers read both, and the Arrow IPC spool parts
(``.arrow``) serving wrote before.

A capture part's day is its rows' ``time`` (when serving answered); a label part's day is its
rows' ``received_at`` (when mlwp stored them), so a late label lands in the day it arrived and
a reader of "labels received since" lists few folders.

:func:`read_capture` returns one row per predicted input record (:func:`capture_schema`),
whichever of the two capture layouts a part holds: format 2, one row per request, which
serving writes (the records are taken apart at read time, :mod:`mlwp.monitoring.capture_rows`),
or format 1, one row per record, which serving wrote before and :func:`write_parts` still
accepts.

Serving and the labels writers only ever add parts, never rewrite one: appending is what
object stores do well and what several serving replicas can do at once without
coordination (compaction replaces spool parts by a Parquet part listing them, so readers
never count a request twice). Idempotency is the readers'
job: :func:`read_labels` keeps the latest label per ``(inference_id, row)`` and per
``entity_key``, so re-sending a label changes nothing and sending a corrected one replaces it.

:func:`join_labels` attaches labels to captured rows: by inference id and row first, else by
entity key, where an entity's label applies to its predictions made at or before the label's
``label_time`` (an outcome says nothing about predictions made after it). The contract shared
with the monitor and rollout code is ``/work/notes/monitoring-contract.md``'s, and
docs/monitoring.md ("Capture", "Labels") is its user-facing page.
"""

from __future__ import annotations

import contextlib
import errno
import math
import mmap
import os
import struct
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from mlwp.data.storage import filesystem, normalise_root
from mlwp.errors import MlwpError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

CAPTURE = "capture"
LABELS = "labels"
KINDS = (CAPTURE, LABELS)
# the column that decides a row's day partition, per kind
DAY_COLUMN = {CAPTURE: "time", LABELS: "received_at"}

CAPTURE_COLUMNS = (
    "inference_id",
    "row",
    "time",
    "model",
    "version",
    "variant",
    "served",
    "routing_key",
    "entity_key",
    "inputs",
    "prediction",
    "probability",
    "outputs",
    "latency_ms",
)
# what serving stores per captured request (format 2, :func:`request_schema`)
REQUEST_COLUMNS = (
    "inference_id",
    "time",
    "model",
    "version",
    "variant",
    "served",
    "routing_key",
    "entity_field",
    "rows",
    "request",
    "response",
    "classes",
    "latency_ms",
)
# the Parquet schema metadata key holding a capture part's layout: "2" for request parts
FORMAT_KEY = b"mlwp.capture.format"
# serving's spool parts: framed files (:class:`SpoolWriter`): a header, the requests'
# columns as JSON, then the request bodies and the response bodies back to back as serving's
# buffer holds them, and an end mark (docs/monitoring.md, "Where" and "Cost")
SPOOL_SUFFIX = ".spool"
# serving's spool parts before (session 10): Arrow IPC files of request_schema(), zstd
# buffers; still read and compacted
ARROW_SPOOL_SUFFIX = ".arrow"
SPOOL_SUFFIXES = (SPOOL_SUFFIX, ARROW_SPOOL_SUFFIX)
# format 1: the sections back to back (parts on object stores)
SPOOL_MAGIC = b"MLWPSPL1"
# format 2: each section starts at a multiple of the header's alignment, zeros between
# (local parts: the bodies' runs are written past the page cache straight from serving's
# areas, which needs them at block boundaries in the file; session 15)
SPOOL_MAGIC_ALIGNED = b"MLWPSPL2"
SPOOL_END = b"MLWPEND1"
# magic, then the lengths of the columns' JSON, of the request bodies and of the response
# bodies as stored (compressed when the JSON's "codec" says so), little-endian
_SPOOL_HEADER = struct.Struct("<8sQQQ")
# format 2: magic, the alignment, then the three lengths as in format 1
_SPOOL_HEADER_ALIGNED = struct.Struct("<8sQQQQ")
# the codecs a framed spool part's bodies may be compressed with (Arrow's, which compress
# without the interpreter lock; LZ4 blocks, lz4_raw, the cheapest per byte,
# docs/history/capture.md, "Session 13"); None: stored as they are
SPOOL_CODECS = (None, "zstd", "lz4", "lz4_raw")
# the spool codec by where the root is (docs/monitoring.md "Capture", "Cost"): none on a
# local filesystem (a direct write's CPU does not grow with the bytes as LZ4's does, and
# the monitor's compaction stores zstd Parquet anyway), lz4_raw on an object store (every
# byte is encrypted and sent)
AUTO_CODEC = "auto"
# the per-request columns of a framed spool part's JSON: request_schema()'s, the bodies
# given by their lengths
SPOOL_COLUMNS = tuple(
    {"request": "request_size", "response": "response_size"}.get(name, name)
    for name in REQUEST_COLUMNS
)
_DAY_MS = 86_400_000
SOURCES_KEY = b"mlwp.capture.sources"
LABEL_COLUMNS = (
    "inference_id",
    "row",
    "entity_key",
    "label",
    "label_time",
    "received_at",
    "source",
)


class MonitoringError(MlwpError):
    """Captured predictions or labels cannot be written, read or understood."""

    code = "monitoring_error"


def capture_schema() -> pa.Schema:
    """The Parquet schema of captured predictions (one row per predicted input row)."""
    import pyarrow as pa

    timestamp = pa.timestamp("ms", tz="UTC")
    return pa.schema(
        [
            pa.field("inference_id", pa.string(), nullable=False),
            pa.field("row", pa.int32(), nullable=False),
            pa.field("time", timestamp, nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("version", pa.string(), nullable=False),
            pa.field("variant", pa.string(), nullable=False),
            pa.field("served", pa.bool_(), nullable=False),
            pa.field("routing_key", pa.string()),
            pa.field("entity_key", pa.string()),
            pa.field("inputs", pa.string(), nullable=False),
            pa.field("prediction", pa.float64()),
            pa.field("probability", pa.float64()),
            pa.field("outputs", pa.string(), nullable=False),
            pa.field("latency_ms", pa.float64(), nullable=False),
        ]
    )


def request_schema() -> pa.Schema:
    """The Parquet schema serving stores captured requests in (format 2): one row per
    request, its body as received (``request``: ``{"data": [records...], ...}``) and its
    answer as sent (``response``: ``{"predictions": [...], "probabilities": [...], ...}``;
    for a shadow, its own predictions and probabilities), the record field read as the
    entity key (``entity_field``), the records' count and the model's classes as JSON (null
    for a regression). :func:`read_capture` turns it into :func:`capture_schema` rows."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("inference_id", pa.string(), nullable=False),
            pa.field("time", pa.timestamp("ms", tz="UTC"), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("version", pa.string(), nullable=False),
            pa.field("variant", pa.string(), nullable=False),
            pa.field("served", pa.bool_(), nullable=False),
            pa.field("routing_key", pa.string()),
            pa.field("entity_field", pa.string()),
            pa.field("rows", pa.int32(), nullable=False),
            pa.field("request", pa.binary(), nullable=False),
            pa.field("response", pa.binary(), nullable=False),
            pa.field("classes", pa.string()),
            pa.field("latency_ms", pa.float64(), nullable=False),
        ],
        metadata={FORMAT_KEY: b"2"},
    )


def label_schema() -> pa.Schema:
    """The Parquet schema of labels (outcomes by inference id and row, or by entity key)."""
    import pyarrow as pa

    timestamp = pa.timestamp("ms", tz="UTC")
    return pa.schema(
        [
            pa.field("inference_id", pa.string()),
            pa.field("row", pa.int32()),
            pa.field("entity_key", pa.string()),
            pa.field("label", pa.float64(), nullable=False),
            pa.field("label_time", timestamp, nullable=False),
            pa.field("received_at", timestamp, nullable=False),
            pa.field("source", pa.string(), nullable=False),
        ]
    )


def __getattr__(name: str) -> Any:
    # CAPTURE_SCHEMA and LABEL_SCHEMA without importing pyarrow with the module (the DAG
    # processor imports operators that import this module)
    if name == "CAPTURE_SCHEMA":
        return capture_schema()
    if name == "LABEL_SCHEMA":
        return label_schema()
    raise AttributeError(name)


# ---------------------------------------------------------------------- locations


def model_partition(model: str) -> str:
    """The ``model=<name>`` folder name; unusual characters are %-escaped as Hive does."""
    if not model or not model.strip():
        raise MonitoringError("the model name is empty", code="bad_model_name")
    return "model=" + quote(model, safe="-_.")


def kind_uri(root: str, kind: str, model: str) -> str:
    """``<root>/monitoring/<kind>/model=<model>``: every part of one model."""
    if kind not in KINDS:
        raise MonitoringError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    return f"{normalise_root(root)}/monitoring/{kind}/{model_partition(model)}"


def part_uri(root: str, kind: str, model: str, day: date) -> str:
    """A new part's URI in ``day``'s folder (a random name: writers never collide)."""
    return f"{kind_uri(root, kind, model)}/date={day.isoformat()}/{uuid.uuid4().hex}.parquet"


# ---------------------------------------------------------------------- writing


def write_parts(
    root: str,
    kind: str,
    model: str,
    table: pa.Table,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write ``table`` as new Parquet parts, one per day it spans; return their URIs. Rows
    keep their order inside a part. Labels are of :func:`label_schema`; captures of
    :func:`request_schema` (a table with a ``request`` column) or of :func:`capture_schema`
    (one row per record). Serving spools its captures instead (:class:`SpoolWriter`)."""
    import pyarrow.parquet as pq

    layout = _layout(kind, table.column_names)
    table = _conform(table, _SCHEMAS[layout](), kind)
    written = []
    for day, part in _by_day(table, kind):
        uri = part_uri(root, kind, model, day)
        fs, path = filesystem(uri, **dict(storage_options or {}))
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as handle:
            pq.write_table(part, handle, **_WRITE_OPTIONS[layout])
        written.append(uri)
    return written


def write_spool(
    root: str,
    model: str,
    table: pa.Table,
    storage_options: Mapping[str, Any] | None = None,
    *,
    codec: str | None = None,
) -> list[str]:
    """Write captured requests (a table of :func:`request_schema`) as spool parts, one per
    day they span, the way serving spools its buffer (:class:`SpoolWriter`); return
    their URIs. For tests and imports: serving hands its buffer over without a table."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = _conform(table, request_schema(), CAPTURE)
    writer = SpoolWriter(root, storage_options, codec=codec)
    written = []
    for _, part in _by_day(table, CAPTURE):
        columns: dict[str, list[Any]] = {
            name: part[name].to_pylist()
            for name in SPOOL_COLUMNS
            if name not in ("time", "request_size", "response_size")
        }
        columns["time"] = part["time"].cast(pa.int64()).to_pylist()
        columns["request_size"] = pc.binary_length(part["request"]).to_pylist()
        columns["response_size"] = pc.binary_length(part["response"]).to_pylist()
        requests = b"".join(part["request"].to_pylist())
        responses = b"".join(part["response"].to_pylist())
        written.append(writer.write(model, columns, requests, responses))
    return written


class SpoolWriter:
    """Writes spool parts under one storage root, as serving's capture writer does: the
    filesystem is resolved once, and each day's folder made once (a part costs its files'
    calls, not fsspec's parsing: ~0.2 ms less per part)."""

    def __init__(
        self,
        root: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        codec: str | None = None,
    ) -> None:
        if codec not in (*SPOOL_CODECS, AUTO_CODEC):
            raise MonitoringError(
                f"spool codec {codec!r} is not one of "
                f"{', '.join(map(str, (*SPOOL_CODECS, AUTO_CODEC)))}",
                code="bad_codec",
            )
        self._uri = f"{normalise_root(root)}/monitoring/{CAPTURE}"
        self._fs, self._base = filesystem(self._uri, **dict(storage_options or {}))
        self._local = _local(self._fs)
        if codec == AUTO_CODEC:
            codec = None if self._local else "lz4_raw"
        self.codec = codec
        self._folders: set[str] = set()  # made already
        # local parts are written past the page cache (O_DIRECT) from this staging area,
        # where the system has it and while the filesystem takes it (_DirectWriter says why)
        self._direct: _DirectWriter | None = _DirectWriter() if self._local and _O_DIRECT else None

    def write(
        self,
        model: str,
        columns: Mapping[str, Sequence[Any]],
        requests: Any | list[Any],
        responses: Any | list[Any],
    ) -> str:
        """Write one spool part: requests of ``model`` answered on one UTC day, as serving's
        buffer holds them: ``columns`` (each of :data:`SPOOL_COLUMNS`, a value per request;
        ``time`` in milliseconds since 1970, UTC; ``request_size`` and ``response_size`` the
        bodies' lengths) and the request and response bodies back to back, each run as one
        bytes-like buffer or a list of them (blocks: serving's area of small bodies, a large
        body it held as it came; written as they are: no copy, no table). The codec
        (``lz4_raw``, ``zstd``, ``lz4``) compresses each block on its own (Arrow's codecs,
        without the interpreter lock); None stores them as they are. Return the part's URI
        (``<uuid>.spool`` in the day's folder).

        Framed: ``SPOOL_MAGIC``, the lengths of the columns' JSON and of the two bodies'
        runs as stored (``<QQQ``), the columns' JSON (with the codec, the runs' lengths
        uncompressed and, for a run of several blocks, each block's stored and uncompressed
        length), the two runs, ``SPOOL_END``. A part appears whole or not at all: a local
        file is written under a dot-name, then renamed; an object is one upload.
        :func:`compact_capture` folds spool parts into Parquet; :func:`read_capture` reads
        them as they are."""
        import orjson

        times = columns["time"]
        if not times:
            raise MonitoringError("a spool part needs at least one request", code="bad_capture")
        first, last = min(times) // _DAY_MS, max(times) // _DAY_MS
        if first != last:
            raise MonitoringError(
                f"a spool part holds one day's requests; these span {last - first + 1} days",
                code="bad_capture",
            )
        described: dict[str, Any] = {"codec": self.codec}
        stored: list[list[memoryview]] = []
        for name, run in (("request", requests), ("response", responses)):
            blocks = [memoryview(block).cast("B") for block in _blocks(run)]
            described[f"{name}_bytes"] = sum(block.nbytes for block in blocks)
            if self.codec is not None:
                import pyarrow as pa

                compressor = pa.Codec(self.codec)
                packed = [
                    memoryview(compressor.compress(block, asbytes=False)).cast("B")
                    for block in blocks
                ]
                if len(blocks) > 1:  # each block is decompressed on its own
                    described[f"{name}_blocks"] = [
                        [one.nbytes, block.nbytes]
                        for one, block in zip(packed, blocks, strict=True)
                    ]
                blocks = packed
            stored.append(blocks)
        described["columns"] = {name: columns[name] for name in SPOOL_COLUMNS}
        meta = orjson.dumps(described)
        # local parts in format 2 (their runs at block boundaries: _DirectWriter), objects
        # in format 1 (no padding to send)
        pieces = _framing(meta, stored, _DIRECT_ALIGN if self._local else 1)
        day = date(1970, 1, 1) + timedelta(days=first)
        folder = f"{model_partition(model)}/date={day.isoformat()}"
        name = f"{uuid.uuid4().hex}{SPOOL_SUFFIX}"
        path = f"{self._base}/{folder}/{name}"
        if folder not in self._folders:
            self._fs.makedirs(f"{self._base}/{folder}", exist_ok=True)
            if len(self._folders) > 1000:  # a long-running writer: days and models pass
                self._folders.clear()
            self._folders.add(folder)
        if self._local:
            try:
                self._write_local(path, pieces)
            except FileNotFoundError:  # its folder was removed meanwhile
                self._fs.makedirs(f"{self._base}/{folder}", exist_ok=True)
                self._write_local(path, pieces)
        else:  # one upload: the object appears whole or not at all
            self._fs.pipe_file(path, b"".join(pieces))
        return f"{self._uri}/{folder}/{name}"

    def _write_local(self, path: str, pieces: Sequence[memoryview]) -> None:
        if self._direct is not None:
            try:
                self._direct.write(path, pieces)
                return
            except _NoDirect:  # this filesystem does not take it: the page cache, from now
                self._direct = None
        _write_file(path, pieces)


def _framing(meta: bytes, runs: Sequence[Sequence[memoryview]], align: int) -> list[memoryview]:
    """A framed part's pieces: the header and the columns' JSON, then the two runs of
    bodies (each a list of blocks), then the end mark. ``align`` 1: format 1, back to back;
    else format 2, each section starting at a multiple of ``align`` (zeros before it)."""
    sizes = [sum(block.nbytes for block in blocks) for blocks in runs]
    if align == 1:
        header = _SPOOL_HEADER.pack(SPOOL_MAGIC, len(meta), *sizes)
        return [memoryview(header), memoryview(meta), *runs[0], *runs[1], memoryview(SPOOL_END)]
    header = _SPOOL_HEADER_ALIGNED.pack(SPOOL_MAGIC_ALIGNED, align, len(meta), *sizes)
    pieces = [memoryview(header), memoryview(meta)]
    at = len(header) + len(meta)
    for blocks, size in zip(runs, sizes, strict=True):
        if at % align:
            pieces.append(memoryview(bytes(align - at % align)))
            at += align - at % align
        pieces.extend(blocks)
        at += size
    pieces.append(memoryview(SPOOL_END))
    return pieces


class _NoDirect(Exception):
    """The filesystem refused a direct write."""


class _DirectWriter:
    """Writes a part past the page cache (``O_DIRECT``) in whole blocks, the file then cut
    to its length. Why: a buffered write copies each byte into a page-cache page, and on a
    virtual machine a page the guest had not touched since boot costs its first write ~2 ns
    per byte (the host maps and zeroes it) against ~0.15 for a page used before (measured,
    2026-12-01); a spool part is written once and read once, by the monitor, so caching it
    buys nothing.

    A piece that starts at a block boundary of the file and of memory (serving's areas are
    memory maps, and format 2 puts each run at a block boundary) is written straight from
    where it lies, its whole blocks; the rest (the header and the columns' JSON, a run's
    last partial block and the zeros after it, compressed blocks) is copied into one
    reusable staging area (an anonymous map, so page-aligned) and written from there
    (session 14 copied every byte: ~8 us of the writer's ~18 per 100-row request,
    uncompressed). The area keeps its size (:data:`_DIRECT_AREA_BYTES`): more than it holds
    goes through it in turns (one grown to a part of hundreds of MB stayed resident for the
    writer's life). One part at a time goes through it (a lock: serving's shutdown can
    flush from a second thread while a cancelled flush's thread still writes; two parts
    staged at once got each other's bytes). A write refused once some of the part is in
    the file (a short write that ended off a block boundary: EINVAL) finishes the part
    buffered."""

    def __init__(self) -> None:
        self._area: mmap.mmap | None = None
        self._lock = threading.Lock()

    def write(self, path: str, pieces: Sequence[memoryview]) -> None:
        views = [piece.cast("B") if piece.format != "B" else piece for piece in pieces]
        length = sum(view.nbytes for view in views)
        with self._lock:
            if self._area is None:
                # private: a shared anonymous map is shmem, whose pages a direct write pins
                # at more cost (serving's areas, `serving.services.capture.Area`, say more)
                self._area = mmap.mmap(-1, _DIRECT_AREA_BYTES, flags=mmap.MAP_PRIVATE)
            area = memoryview(self._area)
            try:
                with _part_file(path, _O_DIRECT) as descriptor:
                    size, staged, stored = len(area), 0, 0  # the area's bytes used, the file's
                    for view in views:
                        at = 0  # the piece's bytes written or staged
                        whole = view.nbytes - view.nbytes % _DIRECT_ALIGN
                        if whole and not (stored + staged) % _DIRECT_ALIGN and _aligned(view):
                            if staged:  # a whole number of blocks: the file stays aligned
                                stored = _write_all(descriptor, area[:staged], stored)
                                staged = 0
                            stored = _write_all(descriptor, view[:whole], stored)
                            at = whole
                        while at < view.nbytes:
                            take = min(view.nbytes - at, size - staged)
                            area[staged : staged + take] = view[at : at + take]
                            staged, at = staged + take, at + take
                            if staged == size:
                                stored = _write_all(descriptor, area, stored)
                                staged = 0
                    if staged:  # the last turn padded to a block, cut off below
                        end = -(-staged // _DIRECT_ALIGN) * _DIRECT_ALIGN
                        _write_all(descriptor, area[:end], stored)
                    os.ftruncate(descriptor, length)
            finally:
                area.release()


def _aligned(view: memoryview) -> bool:
    """Whether ``view``'s memory starts at a block boundary (a read-only buffer's address
    is not to be had without a copy: not aligned)."""
    if view.readonly:
        return False
    import ctypes

    return not ctypes.addressof(ctypes.c_char.from_buffer(view)) % _DIRECT_ALIGN


def _write_all(descriptor: int, data: memoryview, stored: int) -> int:
    """Write ``data`` to a file opened with O_DIRECT that holds ``stored`` bytes; return
    the bytes it holds then. Refused at its first byte (EINVAL): :class:`_NoDirect`; refused
    later (an offset a short write left off a block boundary): the rest buffered."""
    done = 0
    while done < data.nbytes:
        try:
            done += os.write(descriptor, data[done:])
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            if stored + done == 0:
                raise _NoDirect from exc
            import fcntl

            flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
            if not flags & _O_DIRECT:
                raise
            fcntl.fcntl(descriptor, fcntl.F_SETFL, flags & ~_O_DIRECT)
    return stored + done


# O_DIRECT where the system has it (Linux, the BSDs; not macOS: 0, buffered writes)
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
# direct writes in whole blocks of this size (a page: any device's logical block divides it)
_DIRECT_ALIGN = 4096
# the staging area's size: a part larger goes through it in turns
_DIRECT_AREA_BYTES = 8 << 20


def _blocks(run: Any) -> list[Any]:
    """A run of bodies as its blocks: a list as it is, one buffer as a block."""
    return run if isinstance(run, list) else [run]


@contextlib.contextmanager
def _part_file(path: str, flags: int = 0) -> Iterator[int]:
    """A descriptor on a dot-name beside ``path`` that becomes ``path`` when the block ends,
    its bytes synced first, so a part appears whole or not at all; on any error it is
    closed and removed. A filesystem refusing ``O_DIRECT`` at the open: :class:`_NoDirect`."""
    folder, name = path.rsplit("/", 1)
    temporary = f"{folder}/.{name}.tmp"
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o666)
    except OSError as exc:
        if flags & _O_DIRECT and exc.errno == errno.EINVAL:
            raise _NoDirect from exc
        raise
    try:
        yield descriptor
        _sync(descriptor)
    except BaseException:
        os.close(descriptor)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    os.close(descriptor)
    os.rename(temporary, path)


def _write_file(path: str, pieces: Iterable[bytes | memoryview]) -> None:
    """Write ``pieces`` as the part ``path`` (:func:`_part_file`): straight from the
    buffers, gathered (``writev``: one call for a part of many blocks), the interpreter
    lock released for each write."""
    views = [view for view in (memoryview(piece).cast("B") for piece in pieces) if view.nbytes]
    with _part_file(path) as descriptor:
        first = 0  # views before it are written
        while first < len(views):
            written = os.writev(descriptor, views[first : first + _IOV_MAX])
            while written and written >= views[first].nbytes:
                written -= views[first].nbytes
                first += 1
            if written:  # a short write ended inside this view
                views[first] = views[first][written:]


def _sync(descriptor: int) -> None:
    """Make a part's bytes and length durable before its rename: after a power loss a part
    is then whole or absent, never cut short under its name (readers and compaction refuse
    such a part, but its rows are lost all the same). ~2-3 ms of waiting per part of the
    benchmark's size (680 kB, ~10,000 rows) on the writer's thread, ~0.06 ms of CPU
    (measured 2026-12-01, docs/monitoring.md "Capture"); the folder is not synced: a
    name lost with the power is a part lost, as the rows still buffered are."""
    (getattr(os, "fdatasync", None) or os.fsync)(descriptor)


# the most buffers one writev takes (POSIX guarantees 16; Linux takes 1024)
_IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))


def _by_day(table: pa.Table, kind: str) -> Iterator[tuple[date, pa.Table]]:
    """``table``'s rows by the UTC day of their ``DAY_COLUMN`` (rows keep their order)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return
    # the UTC day of each row, as whole days since 1970 (integer division: strftime with a
    # time zone costs microseconds per row)
    millis = table[DAY_COLUMN[kind]].cast(pa.int64())
    days = pc.floor(pc.divide(pc.cast(millis, pa.float64()), 86_400_000.0))
    unique = sorted(pc.unique(days).to_pylist())
    for day in unique:
        part = table if len(unique) == 1 else table.filter(pc.equal(days, pa.scalar(day)))
        yield date(1970, 1, 1) + timedelta(days=int(day)), part


def _local(fs: Any) -> bool:
    protocol = fs.protocol
    return "file" in (protocol if isinstance(protocol, tuple | list) else (protocol,))


# zstd: captured JSON comes out at about a third of snappy's size for the same CPU (measured
# on 10,000 unique churn rows: 434 against 1,175 kB, 1.1 us per row either way). Dictionaries
# and min/max statistics only for columns whose values repeat or that readers filter on: the
# inputs and outputs JSON and the entity key are (nearly) unique per row, and building a
# dictionary or statistics for them is wasted work (about 8 % of the write).
# Request parts (format 2) hold the bodies as bytes: no dictionary or statistics for them
# either. zstd for them too: they are written by compact_capture in the monitor task, not by
# serving (which spools framed parts), so the smaller size wins (on unique churn
# requests of 100 records, 469 bytes of JSON each: zstd level 1 30 bytes per record, LZ4 54).
REQUESTS = "requests"  # the layout of capture parts in format 2
_WRITE_OPTIONS: dict[str, dict[str, Any]] = {
    CAPTURE: {
        "compression": "zstd",
        "use_dictionary": ["inference_id", "model", "version", "variant", "routing_key"],
        "write_statistics": [
            name for name in CAPTURE_COLUMNS if name not in ("inputs", "outputs", "entity_key")
        ],
    },
    REQUESTS: {
        "compression": "zstd",
        "use_dictionary": ["model", "version", "variant", "routing_key", "entity_field", "classes"],
        "write_statistics": [
            name for name in REQUEST_COLUMNS if name not in ("request", "response", "inference_id")
        ],
    },
    LABELS: {"compression": "zstd"},
}
_SCHEMAS = {CAPTURE: capture_schema, REQUESTS: request_schema, LABELS: label_schema}


def _layout(kind: str, columns: Sequence[str]) -> str:
    """How a part of ``kind`` with ``columns`` is stored: labels, or a capture's rows by
    record (``capture``) or by request (``requests``)."""
    if kind == CAPTURE and "request" in columns:
        return REQUESTS
    return kind


def _conform(table: pa.Table, schema: pa.Schema, kind: str) -> pa.Table:
    if table.schema.equals(schema, check_metadata=True):
        return table  # serving's batches: nothing to select or cast
    present = set(table.column_names)
    missing = [name for name in schema.names if name not in present]
    if missing:
        raise MonitoringError(
            f"{kind} rows lack column(s) {', '.join(missing)}; expected {list(schema.names)}",
            code="bad_columns",
        )
    try:
        return table.select(schema.names).cast(schema)
    except (ValueError, TypeError) as exc:
        raise MonitoringError(f"{kind} rows do not fit the {kind} schema: {exc}") from exc


# ---------------------------------------------------------------------- reading


def read_capture(
    root: str,
    model: str,
    start: datetime | date | str | None = None,
    end: datetime | date | str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Captured rows of ``model`` answered in ``[start, end)`` (UTC; open ends when None),
    ordered by time, with the columns of :func:`capture_schema`: one row per record, from
    parts of either layout (request parts are taken apart here, after the time window cut
    them, :func:`mlwp.monitoring.capture_rows.record_rows`)."""
    return _read(root, CAPTURE, model, start, end, storage_options)


def read_labels(
    root: str,
    model: str,
    start: datetime | date | str | None = None,
    end: datetime | date | str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    *,
    latest: bool = True,
) -> pd.DataFrame:
    """Labels of ``model`` received in ``[start, end)`` (UTC; open ends when None).

    With ``latest`` (the default) only the last label received per ``(inference_id, row)``,
    and per ``entity_key`` for labels given by entity alone, is kept: sending a label again
    is a no-op and a correction replaces the earlier one.
    """
    frame = _read(root, LABELS, model, start, end, storage_options, order="received_at")
    return latest_labels(frame) if latest else frame


def latest_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """The last-received label per ``(inference_id, row)`` and per entity-only key."""
    if frame.empty:
        return frame
    ordered = frame.sort_values("received_at", kind="stable")
    by_id = ordered[ordered["inference_id"].notna()]
    by_entity = ordered[ordered["inference_id"].isna()]
    by_id = by_id.drop_duplicates(["inference_id", "row"], keep="last")
    by_entity = by_entity.drop_duplicates(["entity_key"], keep="last")
    import pandas as pd

    return (
        pd.concat([by_id, by_entity])
        .sort_values("received_at", kind="stable")
        .reset_index(drop=True)
    )


def _bound(value: datetime | date | str | None, name: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise MonitoringError(
                f"{name} {value!r} is not an ISO date or time", code="bad_time"
            ) from exc
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _day_folders(fs: Any, base: str, start: datetime | None, end: datetime | None) -> Iterable[str]:
    if not fs.exists(base):
        return []
    folders = []
    for entry in fs.ls(base, detail=False):
        name = str(entry).rstrip("/").rsplit("/", 1)[-1]
        if not name.startswith("date="):
            continue
        try:
            day = date.fromisoformat(name.removeprefix("date="))
        except ValueError:
            continue
        if start is not None and day < start.date():
            continue
        if end is not None and datetime(day.year, day.month, day.day, tzinfo=UTC) >= end:
            continue
        folders.append(str(entry).rstrip("/"))
    return sorted(folders)


def _read(  # noqa: PLR0917 - private, called from two places with the same order
    root: str,
    kind: str,
    model: str,
    start: datetime | date | str | None,
    end: datetime | date | str | None,
    storage_options: Mapping[str, Any] | None,
    order: str | None = None,
) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = capture_schema() if kind == CAPTURE else label_schema()
    low, high = _bound(start, "start"), _bound(end, "end")
    fs, base = filesystem(kind_uri(root, kind, model), **dict(storage_options or {}))
    tables = []
    for folder in _day_folders(fs, base, low, high):
        parquet, spooled = _parts(fs, folder)
        covered: set[str] = set()
        for path in parquet:
            with fs.open(path, "rb") as handle:
                table = pq.read_table(handle)
            covered.update(_sources(table.schema))
            tables.append(_taken_apart(table, kind, schema, low, high, path))
        for path in spooled:
            if _name(path) in covered:
                continue  # compacted already; a compaction that stopped left it behind
            try:
                table = _read_spool(fs, path)
            except MonitoringError as exc:  # cut short or corrupt: one part, not the read
                if exc.code != "bad_capture":
                    raise
                _log().warning("capture spool part skipped, unreadable: %s", exc.message)
                continue
            tables.append(_taken_apart(table, kind, schema, low, high, path))
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    frame = table.to_pandas(types_mapper=_types)
    column = DAY_COLUMN[kind]
    if low is not None:
        frame = frame[frame[column] >= low]
    if high is not None:
        frame = frame[frame[column] < high]
    return frame.sort_values(order or column, kind="stable").reset_index(drop=True)


def _parts(fs: Any, folder: str) -> tuple[list[str], list[str]]:
    """A day folder's Parquet parts and spool parts, by name; anything else (a writer's
    temporary file, a stranger's) is left out."""
    paths = sorted(str(path) for path in fs.ls(folder, detail=False))
    parquet = [path for path in paths if path.endswith(".parquet")]
    spooled = [path for path in paths if path.endswith(SPOOL_SUFFIXES)]
    return parquet, spooled


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _sources(schema: pa.Schema) -> list[str]:
    """The spool parts a compacted part holds (none for any other part)."""
    import json

    text = (schema.metadata or {}).get(SOURCES_KEY)
    return list(json.loads(text)) if text else []


def read_spool(uri: str, storage_options: Mapping[str, Any] | None = None) -> pa.Table:
    """One spool part's requests, as stored (a table of :func:`request_schema`)."""
    fs, path = filesystem(uri, **dict(storage_options or {}))
    return _read_spool(fs, path)


def _read_spool(fs: Any, path: str) -> pa.Table:
    """A spool part (framed, or Arrow IPC as serving wrote before) as a table of
    :func:`request_schema`."""
    import pyarrow as pa

    try:
        if _local(fs):
            with pa.memory_map(path) as source:
                data = source.read_buffer()
        else:
            with fs.open(path, "rb") as handle:
                data = pa.py_buffer(handle.read())
        if path.endswith(SPOOL_SUFFIX):
            return _framed(data, path)
        return pa.ipc.open_file(data).read_all()
    except pa.ArrowInvalid as exc:
        raise MonitoringError(
            f"{path}: not a capture spool part: {exc}", code="bad_capture"
        ) from None


def _decompressed(codec: pa.Codec, run: pa.Buffer, meta: Mapping[str, Any], name: str) -> Any:
    """A framed part's run of ``name`` bodies, decompressed: one block, or the blocks
    listed as ``<name>_blocks`` (stored and uncompressed lengths) each on its own."""
    import pyarrow as pa

    blocks = meta.get(f"{name}_blocks")
    if blocks is None:
        return codec.decompress(run, meta[f"{name}_bytes"], asbytes=False)
    pieces = []
    at = 0
    for stored, size in blocks:
        pieces.append(codec.decompress(run.slice(at, stored), size, asbytes=False))
        at += stored
    if at != run.size:
        raise pa.ArrowInvalid(f"its {name} blocks' lengths do not add up to their run")
    return pa.py_buffer(b"".join(pieces))


def _framed(data: pa.Buffer, path: str) -> pa.Table:
    """A framed spool part's requests (:meth:`SpoolWriter.write`); the bodies' arrays lie
    over the part's buffers (decompressed when compressed)."""
    import numpy as np
    import orjson
    import pyarrow as pa

    def bad(why: str) -> MonitoringError:
        return MonitoringError(f"{path}: not a capture spool part: {why}", code="bad_capture")

    magic = data.slice(0, min(data.size, len(SPOOL_MAGIC))).to_pybytes()
    header = {SPOOL_MAGIC: _SPOOL_HEADER, SPOOL_MAGIC_ALIGNED: _SPOOL_HEADER_ALIGNED}.get(magic)
    if header is None:
        raise bad("no spool mark at its start")
    size = header.size
    if data.size < size + len(SPOOL_END):
        raise bad("too short")
    fields = header.unpack(data.slice(0, size).to_pybytes())
    align = 1 if magic == SPOOL_MAGIC else fields[1]
    meta_size, requests_size, responses_size = fields[-3:]
    if not 1 <= align <= 1 << 20 or align & (align - 1):
        raise bad(f"an alignment of {align}")

    def aligned(at: int) -> int:
        return -(-at // align) * align

    requests_at = aligned(size + meta_size)
    responses_at = aligned(requests_at + requests_size)
    end = responses_at + responses_size
    if data.size != end + len(SPOOL_END) or data.slice(end).to_pybytes() != SPOOL_END:
        raise bad("cut short or not a whole part")
    try:
        meta = orjson.loads(data.slice(size, meta_size).to_pybytes())
        columns = meta["columns"]
        codec = meta["codec"]
        requests = data.slice(requests_at, requests_size)
        responses = data.slice(responses_at, responses_size)
        if codec is not None:
            requests = _decompressed(pa.Codec(codec), requests, meta, "request")
            responses = _decompressed(pa.Codec(codec), responses, meta, "response")
        schema = request_schema()
        count = len(columns["inference_id"])
        arrays = []
        for field in schema:
            if field.name in ("request", "response"):
                sizes = np.asarray(columns[f"{field.name}_size"], dtype=np.int64)
                bodies = requests if field.name == "request" else responses
                # a negative length could still add up, and would give rows each other's bytes
                if (sizes < 0).any() or int(sizes.sum()) != bodies.size:
                    raise bad(f"its {field.name} bodies do not add up to their lengths")
                offsets = np.zeros(count + 1, dtype=np.int32)
                np.cumsum(sizes, out=offsets[1:], dtype=np.int32)
                arrays.append(
                    pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets), bodies])
                )
            elif field.name == "time":
                arrays.append(pa.array(columns["time"], pa.int64()).cast(field.type))
            else:
                arrays.append(pa.array(columns[field.name], field.type))
        return pa.Table.from_arrays(arrays, schema=schema)
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError, pa.ArrowException) as exc:
        raise bad(f"its columns: {exc!r}") from None


def _taken_apart(  # noqa: PLR0917 - private, one caller per kind of part
    table: pa.Table,
    kind: str,
    schema: pa.Schema,
    low: datetime | None,
    high: datetime | None,
    path: str,
) -> pa.Table:
    if _layout(kind, table.column_names) == REQUESTS:
        table = _records(_conform(table, request_schema(), kind), low, high, path)
    return _conform(table, schema, kind)


def compact_capture(
    root: str, model: str, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Fold ``model``'s spool parts (what serving writes, :class:`SpoolWriter`) into Parquet:
    per day folder, one zstd part of :func:`request_schema` holding every spool part found
    there, then the spool parts are deleted; return the counts (``spooled`` parts folded,
    ``requests`` in them, ``parts`` written, ``removed`` spool parts) and ``parts_refused``:
    the spool parts that could not be read (``{"part", "reason", "moved_to"}``).

    Nothing is lost or counted twice if it stops at any point: the new part is written whole
    or not at all, under a name made of the spool parts it holds, whose names it lists in its
    metadata (``mlwp.capture.sources``); readers skip a spool part a Parquet part lists, and
    the next run deletes such leftovers before folding the rest. Spool parts written while
    it runs wait for the next run. One compaction of a model at a time (the model's monitor
    task): two at once may fold overlapping sets, which readers would count twice.

    A spool part that is not a whole part (cut short by a power loss, corrupt) is refused,
    not fatal: logged with its reason, renamed to ``<name>.corrupt`` (which readers and
    later runs skip; kept for whoever wants to look), and the day's other parts are folded
    without it. A storage error (OSError) is raised as before: it is the storage, not the
    part, and every part after it would fail alike."""
    import hashlib

    fs, base = filesystem(kind_uri(root, CAPTURE, model), **dict(storage_options or {}))
    counts: dict[str, Any] = {"spooled": 0, "requests": 0, "parts": 0, "removed": 0}
    refused: list[dict[str, str | None]] = []
    for folder in _day_folders(fs, base, None, None):
        parquet, spooled = _parts(fs, folder)
        if not spooled:
            continue
        covered: set[str] = set()
        for path in parquet:
            covered.update(_sources(_parquet_schema(fs, path)))
        done = [path for path in spooled if _name(path) in covered]
        fresh = [path for path in spooled if _name(path) not in covered]
        while fresh:
            names = [_name(path) for path in fresh]
            digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:32]
            path = f"{folder}/compacted-{digest}.parquet"
            try:
                counts["requests"] += _write_compacted(fs, path, fresh)
            except _Refused as exc:  # fold the rest without it (rare: written again)
                fresh.remove(exc.path)
                refused.append(_refuse(fs, exc))
                continue
            counts["spooled"] += len(fresh)
            counts["parts"] += 1
            break
        for path in done + fresh:
            fs.rm(path)
            counts["removed"] += 1
    counts["parts_refused"] = refused
    return counts


# a refused spool part's new name: its name with this added (no reader takes it)
CORRUPT_SUFFIX = ".corrupt"


class _Refused(Exception):
    """A spool part compaction cannot read: not a whole part (cut short, corrupt)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = path, reason


def _refuse(fs: Any, refused: _Refused) -> dict[str, str | None]:
    """Log a refused part and rename it aside."""
    moved: str | None = None
    try:
        fs.mv(refused.path, refused.path + CORRUPT_SUFFIX)
        moved = refused.path + CORRUPT_SUFFIX
    except OSError as exc:  # left in place: refused again by the next run
        _log().warning("capture spool part not moved aside: %s: %r", refused.path, exc)
    _log().warning(
        "capture spool part refused by compaction (%s): %s",
        f"moved to {_name(moved)}" if moved else "left in place",
        refused.reason,
    )
    return {"part": refused.path, "reason": refused.reason, "moved_to": moved}


def _log() -> Any:
    import logging

    return logging.getLogger("mlwp.monitoring.capture")


def _parquet_schema(fs: Any, path: str) -> pa.Schema:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as handle:
        return pq.read_schema(handle)


def _write_compacted(fs: Any, path: str, sources: list[str]) -> int:
    """The spool parts ``sources`` as one zstd Parquet part at ``path`` that lists them, one
    spool part in memory at a time; return the requests written. Written under a temporary
    name that readers skip, then renamed (on an object store, a server-side copy): the part
    appears whole or not at all, where a failed upload through ``fs.open`` would still be
    committed, cut short, under its name."""
    import json

    import pyarrow.parquet as pq

    names = json.dumps([_name(source) for source in sources]).encode()
    schema = request_schema()
    schema = schema.with_metadata({**(schema.metadata or {}), SOURCES_KEY: names})
    folder, name = path.rsplit("/", 1)
    temporary = f"{folder}/.{name}.tmp"
    requests = 0
    try:
        with (
            fs.open(temporary, "wb") as handle,
            pq.ParquetWriter(handle, schema, **_WRITE_OPTIONS[REQUESTS]) as writer,
        ):
            for source in sources:
                try:
                    table = _conform(_read_spool(fs, source), request_schema(), CAPTURE)
                except MonitoringError as exc:  # not a whole part: cut short, corrupt
                    reason = exc.message if source in exc.message else f"{source}: {exc.message}"
                    raise _Refused(source, reason) from None
                writer.write_table(table.replace_schema_metadata(schema.metadata))
                requests += table.num_rows
    except BaseException:
        with contextlib.suppress(OSError):
            fs.rm(temporary)
        raise
    fs.mv(temporary, path)
    return requests


def _records(
    requests: pa.Table, low: datetime | None, high: datetime | None, path: str
) -> pa.Table:
    """The record rows of a request part's requests answered in ``[low, high)``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = requests.schema.field("time").type
    if low is not None:
        requests = requests.filter(pc.greater_equal(requests["time"], pa.scalar(low, kind)))
    if high is not None:
        requests = requests.filter(pc.less(requests["time"], pa.scalar(high, kind)))
    try:
        return record_rows(requests)
    except MonitoringError as exc:
        raise MonitoringError(f"{path}: {exc.message}", code=exc.code) from None


def record_rows(requests: pa.Table) -> pa.Table:
    """The record rows (:func:`capture_schema`) of captured requests as serving stores them
    (:func:`request_schema`), in the requests' order; a request whose stored body or answer
    is not what serving writes raises naming its inference id."""
    import pyarrow as pa

    from mlwp.monitoring.capture_rows import BadCapturedRequest, record_columns

    if requests.num_rows == 0:
        return capture_schema().empty_table()
    try:
        columns = record_columns(requests)
    except BadCapturedRequest as exc:
        raise MonitoringError(str(exc), code="bad_capture") from None
    return pa.Table.from_pydict(columns, schema=capture_schema())


def _types(arrow_type: pa.DataType) -> Any:
    # strings as pandas' string dtype and nullable integers/bools, whatever pandas' default
    import pandas as pd
    import pyarrow as pa

    if pa.types.is_string(arrow_type):
        return pd.StringDtype()
    if pa.types.is_int32(arrow_type):
        return pd.Int32Dtype()
    if pa.types.is_boolean(arrow_type):
        return pd.BooleanDtype()
    return None


# ---------------------------------------------------------------------- joining


def join_labels(capture: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """``capture`` with the columns ``label``, ``label_time``, ``label_source`` and
    ``label_delay_s`` (seconds from the prediction to the label's arrival); NaN/NaT where a
    row has no label yet.

    A row takes the label of its ``(inference_id, row)``; failing that, its entity's latest
    label when the prediction was made at or before that label's ``label_time``. Shadow rows
    share the served row's inference id and row, so they get the same label. ``labels`` may
    hold several labels per key; the last received wins (see :func:`latest_labels`).
    """
    import pandas as pd

    result = capture.reset_index(drop=True).copy()
    empty = pd.Series([float("nan")] * len(result), index=result.index, dtype="float64")
    no_time = pd.Series(pd.NaT, index=result.index, dtype="datetime64[ms, UTC]")
    result["label"] = empty
    result["label_time"] = no_time
    result["label_source"] = pd.Series([None] * len(result), index=result.index, dtype="string")
    received = no_time.copy()
    if len(result) and len(labels):
        chosen = latest_labels(labels)
        keep = ["label", "label_time", "received_at", "source"]
        by_id = chosen[chosen["inference_id"].notna()]
        if len(by_id):
            left = result[["inference_id", "row"]].astype({"inference_id": "string"})
            left["row"] = left["row"].astype("int64")
            right = by_id[["inference_id", "row", *keep]].astype({"inference_id": "string"})
            right["row"] = right["row"].fillna(0).astype("int64")
            matched = left.merge(right, on=["inference_id", "row"], how="left")
            matched.index = result.index
            _fill(result, received, matched, result["label"].isna())
        by_entity = chosen[chosen["inference_id"].isna() & chosen["entity_key"].notna()]
        if len(by_entity) and "entity_key" in result:
            left = result[["entity_key"]].astype("string")
            right = by_entity[["entity_key", *keep]].astype({"entity_key": "string"})
            matched = left.merge(right, on="entity_key", how="left")
            matched.index = result.index
            applies = result["label"].isna() & (result["time"] <= matched["label_time"])
            _fill(result, received, matched, applies.fillna(False).astype(bool))
    delay = (received - result["time"]).dt.total_seconds()
    result["label_delay_s"] = delay.astype("float64")
    return result


def _fill(result: pd.DataFrame, received: pd.Series, matched: pd.DataFrame, where: Any) -> None:
    where = where & matched["label"].notna()
    result.loc[where, "label"] = matched.loc[where, "label"].astype("float64")
    result.loc[where, "label_time"] = matched.loc[where, "label_time"]
    result.loc[where, "label_source"] = matched.loc[where, "source"]
    received.loc[where] = matched.loc[where, "received_at"]


def label_report(joined: pd.DataFrame, *, by: str = "variant") -> dict[str, dict[str, Any]]:
    """Label coverage and delay per ``by`` value of a :func:`join_labels` result: rows,
    labelled rows, coverage (0..1) and the delay's median, 90th percentile and maximum in
    seconds (None without labels)."""
    report: dict[str, dict[str, Any]] = {}
    if joined.empty:
        return report
    for value, group in joined.groupby(by, sort=True, dropna=False):
        labelled = group["label"].notna()
        delays = group.loc[labelled, "label_delay_s"].dropna()
        report[str(value)] = {
            "rows": len(group),
            "labelled": int(labelled.sum()),
            "coverage": float(labelled.mean()) if len(group) else 0.0,
            "delay_s_p50": float(delays.quantile(0.5)) if len(delays) else None,
            "delay_s_p90": float(delays.quantile(0.9)) if len(delays) else None,
            "delay_s_max": float(delays.max()) if len(delays) else None,
        }
    return report


# ---------------------------------------------------------------------- labels in


def is_class(value: Any, known: Any) -> bool:
    """Whether a label ``value`` names the class ``known`` (``"1"`` names the class 1)."""
    return bool(value == known or (isinstance(value, str) and value == str(known)))


def repeated_class(classes: Sequence[Any]) -> str | None:
    """Why ``classes`` cannot be a model's class list (one class listed twice), or None: a
    label naming it takes the first index, so the second is never reached."""
    for index, known in enumerate(classes):
        for earlier, other in enumerate(classes[:index]):
            if is_class(known, other) or is_class(other, known):
                return (
                    f"class {known!r} is listed twice (at {earlier} and {index}); a label "
                    f"naming it always takes index {earlier}, so index {index} is never reached"
                )
    return None


def label_value(value: Any, classes: Sequence[Any] | None, where: str) -> float:
    """A label as the number stored: a class's index when ``classes`` (the model's, in
    order) holds it, else the value itself as a number (regression, or a class index)."""
    if classes:
        for index, known in enumerate(classes):
            if is_class(value, known):
                return float(index)
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        number = float(value)
        if math.isnan(number):  # NaN is not an outcome
            raise MonitoringError(f"{where}: label is NaN", code="bad_label")
        if math.isinf(number):
            # "inf", "-Infinity" (a string, or JSON's non-standard literal) is no outcome
            # either: one stored infinity makes every loss and interval of its variant inf
            raise MonitoringError(f"{where}: label {value!r} is not finite", code="bad_label")
        if classes and not (number.is_integer() and 0 <= number < len(classes)):
            raise MonitoringError(
                f"{where}: label {value!r} is neither a class of the model "
                f"({list(classes)!r}) nor a class index",
                code="bad_label",
            )
        return number
    if isinstance(value, str):
        parsed: float | None
        try:
            parsed = float(value)
        except ValueError:  # not a number: refused below, naming the classes
            parsed = None
        if parsed is not None:
            return label_value(parsed, classes, where)
    known = f" (the model's classes are {list(classes)!r})" if classes else ""
    raise MonitoringError(
        f"{where}: label {value!r} is not a number or a class of the model{known}",
        code="bad_label",
    )


# How far ahead of the receiving clock a label_time may be: the clocks of the systems that
# send outcomes (and of the workers that ingest them) drift from the server's by seconds,
# rarely minutes, so a few minutes ahead is skew and is kept. Beyond that the time is wrong
# (a local time sent without its zone, read as UTC hours ahead; a mistyped date), and stored
# it would do harm: an entity's label joins the predictions made up to its label_time, so a
# future one would claim predictions made after the outcome. Five minutes is Kerberos'
# customary allowance for clock skew.
LABEL_TIME_SKEW = timedelta(minutes=5)


def _time(value: Any, where: str, default: datetime) -> datetime:
    """``value`` as a label's time (UTC), ``default`` (the time it was received) when
    unset; a time later than ``default`` plus :data:`LABEL_TIME_SKEW` is refused."""
    if value is None or value == "":
        return default
    parsed: datetime | None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            parsed = datetime.fromtimestamp(float(value), tz=UTC)  # seconds since the epoch
        else:
            parsed = _bound(value, "label_time")
    except MonitoringError as exc:
        raise MonitoringError(f"{where}: {exc.message}", code="bad_time") from None
    except (OverflowError, OSError, ValueError, TypeError):
        # a time that exists nowhere in UTC (year 9999 west of Greenwich, 1e300 seconds)
        raise MonitoringError(
            f"{where}: {value!r} is not a time mlwp can store", code="bad_time"
        ) from None
    if parsed is None:
        return default
    if parsed > default + LABEL_TIME_SKEW:
        minutes = int(LABEL_TIME_SKEW.total_seconds() // 60)
        raise MonitoringError(
            f"{where}: {parsed.isoformat()} is in the future: the label was received at "
            f"{default.isoformat()}, and a label_time may be at most {minutes} minutes later "
            "(clock skew); send when the outcome happened, with its time zone",
            code="bad_time",
        )
    return parsed


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    return text or None


def labels_table(
    records: Iterable[Mapping[str, Any]],
    *,
    source: str,
    classes: Sequence[Any] | None = None,
    received_at: datetime | None = None,
    where: str = "labels",
) -> pa.Table:
    """Label records (``inference_id`` [+ ``row``] or ``entity_key``, ``label``, optional
    ``label_time``) as a table of :func:`label_schema`, checked; each problem names the
    record (``<where>[i]``) and the field. ``row`` defaults to 0 with an inference id."""
    import pyarrow as pa

    now = (received_at or datetime.now(UTC)).astimezone(UTC)
    now = now - timedelta(microseconds=now.microsecond % 1000)
    columns: dict[str, list[Any]] = {name: [] for name in LABEL_COLUMNS}
    for index, record in enumerate(records):
        at = f"{where}[{index}]"
        if not isinstance(record, Mapping):
            raise MonitoringError(f"{at}: a label must be an object", code="bad_label")
        inference_id = _text(record.get("inference_id"))
        entity_key = _text(record.get("entity_key"))
        if inference_id is None and entity_key is None:
            raise MonitoringError(
                f"{at}: give inference_id (the request id a prediction returned) or entity_key",
                code="missing_key",
            )
        row = record.get("row")
        if row is None or (isinstance(row, float) and math.isnan(row)):
            row = 0 if inference_id is not None else None
        elif isinstance(row, bool) or not isinstance(row, int | float) or int(row) != row:
            raise MonitoringError(f"{at}.row: {row!r} is not a row index", code="bad_row")
        elif not 0 <= int(row) < 2**31:
            raise MonitoringError(f"{at}.row: {row!r} is out of range", code="bad_row")
        if "label" not in record or record["label"] is None:
            raise MonitoringError(f"{at}: missing label", code="missing_label")
        columns["inference_id"].append(inference_id)
        columns["row"].append(None if row is None else int(row))
        columns["entity_key"].append(entity_key)
        columns["label"].append(label_value(record["label"], classes, f"{at}.label"))
        columns["label_time"].append(_time(record.get("label_time"), f"{at}.label_time", now))
        columns["received_at"].append(now)
        columns["source"].append(source)
    return pa.Table.from_pydict(columns, schema=label_schema())


def write_labels(
    root: str,
    model: str,
    records: Iterable[Mapping[str, Any]],
    *,
    source: str,
    classes: Sequence[Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    received_at: datetime | None = None,
    where: str = "labels",
) -> tuple[int, list[str]]:
    """Check and store label records for ``model``; return (rows, part URIs)."""
    table = labels_table(
        records, source=source, classes=classes, received_at=received_at, where=where
    )
    return table.num_rows, write_parts(root, LABELS, model, table, storage_options)
