"""Score a dataset partition in bounded chunks with a loaded model (batch prediction at scale).

Each chunk (an Arrow record batch of ``chunk_rows`` rows) goes through the model's own fitted
:class:`~mlwp.model.preprocessing.Preprocessing` (its column path, the one serving takes for large
batches) and booster; the scores become labels and class probabilities by the rules of
:meth:`mlwp.model.Model.decide` (threshold for binary, argmax for multiclass), applied to whole
arrays (a test holds both to the same answers). Memory is one chunk and its feature matrix,
whatever the partition's size.

What the output holds (:class:`Output`, docs/scale.md "What the output holds"): by default the
rows' key columns (``keys``), or a ``row`` column (the row's position in the input dataset)
when there are none, then ``prediction`` and, for classifiers, ``probability_<class>``; with
``join_input`` every input column instead of the keys (SageMaker's ``JoinSource: Input``). The
lean default is what makes a scoring task about as fast as the booster: writing the input's
columns back out cost three times the trees.

Speed (docs/scale.md): no value goes through Python one at a time. Only the features and the
carried columns are read; text columns are dictionary-encoded by Arrow and handed to the steps
as :class:`~mlwp.model.features.Coded` arrays, so a one-hot or ordinal step looks up each
distinct value once; the labels are taken from the classes by Arrow; carried columns go to the
output as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from mlwp.errors import MlwpError

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor
    from pathlib import Path

    import pyarrow as pa

    from mlwp.data.partitions import Partition, PartitionedReader
    from mlwp.model import Model

DEFAULT_CHUNK_ROWS = 65_536
ROW_COLUMN = "row"


class OutputColumnsError(MlwpError):
    """The output asks for input columns the input does not have, or that clash with the
    predictions' names."""

    code = "output_columns_error"


@dataclass(frozen=True)
class Output:
    """Which input columns the scored rows carry beside ``prediction`` and the probabilities.

    ``keys``: the columns that identify a row (a customer id); ``join_input``: every input
    column. With neither, a ``row`` column: the row's position in the input dataset (its
    partition's ``first_row`` plus its position in the partition, partitions in manifest order).
    """

    keys: tuple[str, ...] = ()
    join_input: bool = False

    @classmethod
    def of(cls, keys: Iterable[str] | None = None, join_input: bool = False) -> Output:
        return cls(tuple(keys or ()), bool(join_input))

    @property
    def row_index(self) -> bool:
        """Whether the rows are identified by the ``row`` column."""
        return not self.join_input and not self.keys

    def carried(self, names: Sequence[str]) -> list[str]:
        """The input columns (of the input's ``names``) that go to the output, in order."""
        return list(names) if self.join_input else list(self.keys)

    def check(self, names: Sequence[str], where: str, predicted: Sequence[str] = ()) -> None:
        """Refuse keys the input (whose columns are ``names``) does not have, and carried
        columns named as a ``predicted`` column."""
        missing = [key for key in self.keys if key not in names]
        if missing:
            raise OutputColumnsError(
                f"{where}: key column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(repr, missing))} not in the input's columns {list(names)}"
            )
        clashes = [name for name in self.carried(names) if name in predicted]
        if clashes:
            raise OutputColumnsError(
                f"{where}: the input column{'s' if len(clashes) > 1 else ''} "
                f"{', '.join(map(repr, clashes))} would clash with the predictions' columns: "
                "rename it in the input, or leave it out of the carried columns"
            )

    def unique(self) -> list[str]:
        """The output columns that identify rows (``row``, or the keys): written without a
        dictionary, which would hold every value (:func:`mlwp.data.partitions.parquet_writer`)."""
        return [ROW_COLUMN] if self.row_index else list(self.keys)

    def to_dict(self) -> dict[str, Any]:
        return {"keys": list(self.keys), "join_input": self.join_input}


LEAN = Output()


def score_batch(
    model: Model,
    batch: pa.RecordBatch,
    schema: pa.Schema | None = None,
    *,
    output: Output = LEAN,
    first_row: int = 0,
    matrix: np.ndarray[Any, Any] | None = None,
) -> Any:
    """The batch's predictions (and class probabilities) after the columns ``output`` carries
    (``first_row``: the position of the batch's first row in the input, for the ``row``
    column), with ``schema`` (by default :func:`output_schema` of the batch's); ``matrix``:
    the batch's :func:`feature_matrix` when it is already made."""
    schema = schema or output_schema(model, batch.schema, output)
    if matrix is None:
        matrix = feature_matrix(model, batch)
    return assemble(
        model, batch, raw_scores(model, matrix), schema, output=output, first_row=first_row
    )


def raw_scores(model: Model, matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The booster's raw output of a feature matrix, as float64."""
    if matrix.shape[0] == 0:
        return np.zeros((0,), dtype=np.float64)
    return np.asarray(model.predictor.predict(matrix), dtype=np.float64)


def assemble(
    model: Model,
    batch: pa.RecordBatch,
    raw: np.ndarray[Any, Any],
    schema: pa.Schema,
    *,
    output: Output = LEAN,
    first_row: int = 0,
) -> Any:
    """The output batch of ``batch``'s rows from the booster's ``raw`` scores of them: the
    carried columns (or ``row``), the labels decided by the model's rules and the class
    probabilities, with ``schema``."""
    import pyarrow as pa

    if output.row_index:
        arrays = [pa.array(np.arange(first_row, first_row + batch.num_rows, dtype=np.int64))]
    else:  # the carried columns as they are, text read as dictionaries back to text
        arrays = []
        for name in output.carried(batch.schema.names):
            column, kind = batch.column(name), schema.field(name).type
            arrays.append(column if column.type == kind else column.cast(kind))
    label_type = schema.field("prediction").type
    if model.objective == "regression":
        arrays.append(pa.array(raw.reshape(-1), type=label_type))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)
    classes = list(model.classes or [])
    if model.objective == "binary":
        positive = raw.reshape(-1)
        columns = [1.0 - positive, positive]  # each contiguous: Arrow takes it without a copy
        chosen = (positive >= model.threshold).astype(np.int64)
    else:
        probabilities = raw.reshape(raw.shape[0], -1)
        columns = list(np.ascontiguousarray(probabilities.T))
        chosen = np.argmax(probabilities, axis=1)
    if classes:
        arrays.append(pa.array(classes, type=label_type).take(pa.array(chosen)))
    else:
        arrays.append(pa.array(chosen, type=label_type))
    arrays.extend(pa.array(columns[index]) for index in range(len(classes)))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def feature_matrix(model: Model, batch: pa.RecordBatch) -> np.ndarray[Any, Any]:
    """The model's feature matrix of a batch's raw rows.

    Arrow columns are read straight into the preprocessing's column arrays when their types
    are what the model expects (text as ``str``/None objects, numbers as float64 with NaN for
    missing): Arrow guarantees every value's type, which is what the per-value checks of the
    DataFrame path establish. Anything else (a missing column, another type, a value a step
    refuses) takes :meth:`~mlwp.model.preprocessing.Preprocessing.transform_frame`, which reads it
    or names the problem.
    """
    from mlwp.data.columnar_encoder import encoder_for
    from mlwp.model.features import _ValueProblem

    preprocessing = model.preprocessing
    encoder = encoder_for(preprocessing)
    if encoder is not None and (matrix := encoder.matrix(batch)) is not None:
        return matrix
    columns = _arrow_columns(preprocessing, batch)
    if columns is not None:
        try:
            out = preprocessing.transform_columns(columns)
            return out.matrix(out.names, np.float32)
        except _ValueProblem:
            pass  # a value the column path cannot read: the frame path names it, row and column
    return preprocessing.transform_frame(batch.to_pandas())


def _arrow_columns(preprocessing: Any, batch: pa.RecordBatch) -> Any:
    import pyarrow as pa

    from mlwp.model.features import Coded, Columns

    dtypes = {f.name: f.dtype for f in preprocessing.inputs}
    names = set(batch.schema.names)
    if any(f.required and f.name not in names for f in preprocessing.features):
        return None
    present = [f.name for f in preprocessing.features if f.name in names]
    data: dict[str, np.ndarray[Any, Any]] = {}
    for name in present:
        array = batch.column(name)
        kind = array.type
        if dtypes.get(name) == "str":
            text = kind.value_type if pa.types.is_dictionary(kind) else kind
            if not (pa.types.is_string(text) or pa.types.is_large_string(text)):
                return None
            if not pa.types.is_dictionary(kind):
                array = array.dictionary_encode()
            categories = array.dictionary.to_numpy(zero_copy_only=False)
            codes = array.indices.fill_null(-1).to_numpy()
            data[name] = Coded.of(categories, codes)
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            data[name] = array.cast(pa.float64()).to_numpy(zero_copy_only=False)
        else:
            return None
    return Columns(present, data, batch.num_rows)


def score_batches(
    model: Model, batches: Iterable[pa.RecordBatch], *, output: Output = LEAN
) -> Iterator[pa.RecordBatch]:
    """Score each batch in turn (a generator: one chunk in memory at a time); ``row`` counts
    from the first batch's first row."""
    first_row = 0
    for batch in batches:
        yield score_batch(model, batch, output=output, first_row=first_row)
        first_row += batch.num_rows


def output_schema(
    model: Model, schema: pa.Schema, output: Output = LEAN, where: str = "batch prediction"
) -> pa.Schema:
    """The schema of scored batches of ``schema``'s rows (for a writer opened up front)."""
    import pyarrow as pa

    predicted = predicted_fields(model)
    output.check(schema.names, where, [f.name for f in predicted])
    if output.row_index:
        carried = [pa.field(ROW_COLUMN, pa.int64())]
    else:
        carried = [schema.field(name) for name in output.carried(schema.names)]
    return pa.schema([*carried, *predicted])


def predicted_fields(model: Model) -> list[pa.Field]:
    """``prediction`` and, for classifiers, ``probability_<class>`` of each class."""
    import pyarrow as pa

    if model.objective == "regression":
        return [pa.field("prediction", pa.float64())]
    classes = list(model.classes or [])
    label_type = pa.array(classes).type if classes else pa.int64()
    return [
        pa.field("prediction", label_type),
        *(pa.field(f"probability_{label}", pa.float64()) for label in classes),
    ]


def read_columns(model: Model, names: Sequence[str], output: Output = LEAN) -> list[str] | None:
    """The input columns (of ``names``) a scoring reads: the model's features and the carried
    columns, in the input's order; None (all) with ``join_input``."""
    if output.join_input:
        return None
    wanted = {f.name for f in model.preprocessing.features} | set(output.keys)
    return [name for name in names if name in wanted]


# Batches each predictor scores per band of batch sizes before the faster keeps the band,
# when the trees are compiled to C (:func:`native_trees`): a chunk's piece of thousands of
# rows takes milliseconds, long enough for a few to time it (the median of three passes over
# a first, cold call); serving's 16 a side would be half the pieces of a 1M-row dataset.
NATIVE_TRIALS = 3


def native_trees(model: Model, cache: Path) -> str:
    """Score ``model``'s batches with its trees compiled to C as serving does
    (:mod:`mlwp.model.native_trees`: the same outputs, bit for bit, checked against XGBoost
    at each load), built into the folder ``cache`` or loaded from there when built before,
    wherever they prove faster than XGBoost's predictor on the batches themselves (per band
    of batch sizes, :data:`NATIVE_TRIALS` a side). Without a C compiler, or when the model is
    not one the C reproduces, XGBoost scores. Says which, and why not."""
    predictor = model.predictor
    if predictor.load_native(cache, trials=NATIVE_TRIALS):
        return "trees compiled to C (against XGBoost on the first chunks)"
    return f"XGBoost ({predictor.not_native})"


def score_partition(
    model: Model,
    reader: PartitionedReader,
    partition: Partition,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    output: Output = LEAN,
    first_row: int = 0,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The output schema and the scored chunks of one file of a stored dataset (``first_row``:
    the position of its first row in the dataset).

    Only the columns the model and ``output`` need are read; the model's text features as
    Arrow dictionaries (decoded once per distinct value, and what the steps look up), carried
    text written back as the text it is stored as. Stages in threads of their own, one chunk
    apart (pyarrow, numpy and XGBoost let the GIL go): a reader reads, decodes and encodes
    chunk n+1 into its feature matrix while two booster threads predict the halves of chunk
    n (:func:`predict_parts`, the process's :func:`booster_threads`), an assembler builds
    chunk n-1's output (labels, probabilities, carried columns) and a writer
    (:func:`~mlwp.data.partitions.stage_part`) writes chunk n-2; the caller's thread hands
    chunks on. The switch interval is shortened meanwhile (:func:`gil_switch_interval`).
    """
    import pyarrow as pa

    fixed_mmap_threshold()
    trim_heap()  # what an earlier partition of this process left freed but resident
    system_memory_pool()
    stored = reader.schema(partition)
    text = [
        f.name
        for f in model.preprocessing.features
        if f.dtype == "str"
        and f.name in stored.names
        and pa.types.is_string(stored.field(f.name).type)
    ]
    booster_threads()  # started while the reader reads the first chunk
    schema = output_schema(model, stored, output, f"partition {partition.path or reader.uri}")
    batches = reader.batches(
        partition,
        batch_rows=chunk_rows,
        dictionary=text,
        columns=read_columns(model, stored.names, output),
        threads=False,  # decoded in the reader thread: Arrow's pool would take a core too
    )

    def encoded(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, list[Future[Any]]]:
        # the chunk's matrix in pieces whose blocks stay below the mmap threshold (reused
        # from the heap, not mapped and faulted in anew), each handed to the boosters as
        # soon as it is encoded: the first piece's parts start while the rest is encoded
        parts: list[Future[Any]] = []
        spans = pieces(batch.num_rows, len(model.preprocessing.outputs))
        for start, rows in spans:
            matrix = feature_matrix(model, batch.slice(start, rows))
            if len(spans) > 1:  # each piece whole: the pieces queue for the boosters in turn
                parts.append(booster_threads().submit(raw_scores, model, matrix))
            else:  # split between the boosters (XGBoost's calls of fewer rows cost more)
                parts.extend(predict_parts(model, matrix))
            del matrix  # held by its parts' calls only
        return batch, parts

    def scored() -> Iterator[pa.RecordBatch]:
        from concurrent.futures import ThreadPoolExecutor

        row = first_row
        # the assembler waits for a chunk's parts: this thread hands the boosters the next
        # chunk meanwhile, so its parts queue behind this one's and no booster waits
        with (
            ThreadPoolExecutor(1, thread_name_prefix="assembler") as assembler,
            gil_switch_interval(SWITCH_SECONDS),
        ):
            pending: Future[pa.RecordBatch] | None = None
            for batch, parts in read_ahead(batches, encoded):
                following = assembler.submit(assemble_parts, batch, row, parts)
                row += batch.num_rows
                if pending is not None:
                    yield pending.result()
                pending = following
            if pending is not None:
                yield pending.result()

    def assemble_parts(
        batch: pa.RecordBatch, row: int, parts: list[Future[np.ndarray[Any, Any]]]
    ) -> pa.RecordBatch:
        raw = [part.result() for part in parts]
        scores = raw[0] if len(raw) == 1 else np.concatenate(raw)
        return assemble(model, batch, scores, schema, output=output, first_row=row)

    return schema, scored()


# glibc's M_MMAP_THRESHOLD (malloc.h); the size from which malloc maps blocks of their own
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def pieces(rows: int, width: int) -> list[tuple[int, int]]:
    """(first row, rows) of the pieces a chunk of ``rows`` rows is encoded and predicted in:
    as few as keep each piece's float32 matrix of ``width`` columns below
    :data:`MMAP_THRESHOLD_BYTES` (then malloc reuses its heap for the next piece instead of
    mapping fresh pages that fault in: a chunk of 65,536 rows of the benchmark's 13 columns
    was a 3.4 MB block, mapped anew for every chunk), split evenly, of at least
    ``BOOSTERS * MIN_PART_ROWS`` rows."""
    from itertools import pairwise

    fits = max(BOOSTERS * MIN_PART_ROWS, (MMAP_THRESHOLD_BYTES - 4096) // (4 * max(1, width)))
    count = max(1, -(-rows // fits))
    bounds = [rows * index // count for index in range(count + 1)]
    return [(start, end - start) for start, end in pairwise(bounds)]


def trim_heap() -> bool:
    """Give the C library's free heap pages back to the system (glibc's ``malloc_trim``):
    what a previous partition scored in this process left freed but resident in the
    threads' heaps (each thread's arena keeps what it freed below its top). A process that
    scores one partition (a mapped task) starts with little to give back; one that scores
    many in turn (a worker that runs one after another, the benchmark's one worker) started
    each from whatever the last one left, and its peak grew with the number of partitions:
    over 40 partitions of 250k rows, 87-98 MB against 74-78 over 4 (session 14). True when
    trimmed; False where the C library has no ``malloc_trim`` (not glibc)."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


@cache
def fixed_mmap_threshold() -> bool:
    """Hand blocks of 1 MiB and more (a chunk's feature matrix and output arrays) back to the
    system when freed, for the rest of this process: glibc otherwise raises its threshold to
    the largest block freed so far (up to 32 MiB), after which such blocks are carved from
    the threads' heaps and may stay there, freed but resident. Measured with ten times the
    rows (`python -m bench.scale --rows 10000000 --tasks extract,predict`, session 11): the
    task held 105-119 MB in eight runs of nine and 164 MB in one; with the threshold fixed
    88-106 MB in eight of eight. The price: a freed chunk's blocks are mapped again (page
    faults) for the next one; side by side at 1M rows, eight runs each, CPU 0.73 against
    0.69 s per 1M rows (medians; the runs spread 0.60-0.86 both ways) and 1.85M against
    1.95M rows/s, while memory went from 103-155 MB (one run in eight 1.4x the median) to
    92-105. A memory bound that holds in every run is kept over ~5 % of a rate that is not
    at its goal either way. Only where the process's C library is
    glibc, and not when the operator set ``MALLOC_MMAP_THRESHOLD_`` (theirs is kept);
    True when set."""
    import ctypes
    import os

    if "MALLOC_MMAP_THRESHOLD_" in os.environ or os.uname().sysname != "Linux":
        return False
    try:
        # the C library the process already runs on (dlopen(NULL)): ctypes.util.find_library
        # runs ldconfig in a subprocess, 14 ms before the first partition's first read
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def system_memory_pool() -> bool:
    """Allocate Arrow's buffers (the chunks read, decoded and written) with the C library's
    malloc for the rest of this process, instead of pyarrow's default mimalloc, unless the
    operator chose a pool (``ARROW_DEFAULT_MEMORY_POOL``): mimalloc keeps freed pages for
    reuse, and about one scoring in ten held 135-144 MB at 1M rows against 88-99 for the
    rest (session 12: once in CI, where 100k rows held 50). With malloc (large blocks handed
    back at once, :func:`fixed_mmap_threshold`) the task held 55-70 MB at 1M rows in 26
    interleaved runs and never more (mimalloc: 88-111, and 139-144 in 3 runs of 27). The
    price is speed: 3 % and 11 % fewer rows/s in two sets of interleaved runs (2.27M against
    2.35M, 1.88M against 2.10M, medians; docs/scale.md). A bound that holds in every run is
    kept over a rate. True when set."""
    import os

    import pyarrow as pa

    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return False
    pa.set_memory_pool(pa.system_memory_pool())
    return True


def scoring_threads() -> int:
    """XGBoost's threads while a partition is scored: the cores this process may use, less
    one for the threads that read, encode and write the chunks beside it (at least one);
    split between the :data:`BOOSTERS` threads that predict (:func:`booster_threads`)."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


# Threads that predict at once: each chunk is split in as many parts, and the next chunk's
# parts queue behind them, so a booster never waits for the reader.
BOOSTERS = 2
# A chunk of fewer rows is predicted whole: XGBoost's call costs about 20 us before any row.
MIN_PART_ROWS = 4096


def predict_parts(model: Model, matrix: np.ndarray[Any, Any]) -> list[Future[np.ndarray[Any, Any]]]:
    """The booster's raw scores of a chunk's feature matrix, in parts of consecutive rows
    predicted at once by the :func:`booster_threads` (their results concatenated in order
    are :func:`raw_scores` of the whole, bit for bit: XGBoost scores each row alone)."""
    from itertools import pairwise

    rows = matrix.shape[0]
    parts = max(1, min(BOOSTERS, rows // MIN_PART_ROWS))
    bounds = [rows * index // parts for index in range(parts + 1)]
    boosters = booster_threads()
    return [
        boosters.submit(raw_scores, model, matrix[start:end]) for start, end in pairwise(bounds)
    ]


_boosters: dict[int, ThreadPoolExecutor] = {}

# How long a thread running Python keeps the GIL from one that asks for it, while a partition
# is scored (CPython's default: 5 ms).
SWITCH_SECONDS = 0.0005


@contextmanager
def gil_switch_interval(seconds: float) -> Iterator[None]:
    """CPython's switch interval at most ``seconds`` inside the block, then as before.

    A chunk passes through five threads (reader, two boosters, assembler, writer) and each
    comes back from a call that let the GIL go (Parquet, XGBoost) to a few lines of Python:
    by default it then waits up to 5 ms for a thread running Python (the encoder, the
    assembler) to let the GIL go, while the chunks behind it wait. Measured on two cores at
    1M rows, interleaved rounds (session 12, docs/scale.md): two boosters gained 2-5 % at
    5 ms and 20-25 % at 0.5 ms (0.2 ms: the same as 0.5; 1 ms: less), for less CPU. The
    interval is the process's: this scoring's threads are all it runs meanwhile."""
    import sys

    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, seconds))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def booster_threads() -> ThreadPoolExecutor:
    """:data:`BOOSTERS` threads that predict, kept for the life of the process (one pool per
    process: a forked child makes its own), each with XGBoost on ``scoring_threads() /
    BOOSTERS`` threads (rounded up).

    The threads are kept, not made for each partition: XGBoost's per-thread state in a new
    thread each time landed in another malloc arena, and a task's peak over 40 partitions
    went from 95-97 MB to 116-131 MB (session 11). Their thread count is XGBoost's
    thread-local configuration (``xgboost.set_config``), not the booster's ``nthread``: the
    model is left as loaded, and no parameter change reconfigures it (whose configuration ran
    on every core, and left an OpenMP thread spinning, once per partition). Two threads on
    one thread each, not one on two: XGBoost's OpenMP threads spin while one of them waits
    for a core another thread holds (on two cores, scoring 1M rows cost 0.82-0.90 s of CPU
    with two OpenMP threads against 0.53-0.59 with one), where a Python thread waits
    asleep."""
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    process = os.getpid()
    pool = _boosters.get(process)
    if pool is None:
        threads = -(-scoring_threads() // BOOSTERS)

        def configure() -> None:
            import xgboost

            xgboost.set_config(nthread=threads)

        pool = ThreadPoolExecutor(BOOSTERS, "booster", initializer=configure)
        # every thread started (and XGBoost configured in it) now, while the first chunk is
        # read, not one by one as the first chunk's parts arrive (the second started 4 ms
        # after the first): each waits until all are up
        started = threading.Barrier(BOOSTERS)
        for _ in range(BOOSTERS):
            pool.submit(started.wait, BOOSTER_START_SECONDS)
        _boosters.clear()  # a parent's pool: its threads are not in this process
        _boosters[process] = pool
    return pool


# How long a booster thread waits for the others to start before going on without them.
BOOSTER_START_SECONDS = 5.0


def read_ahead(
    batches: Iterator[Any],
    prepare: Callable[[Any], Any] | None = None,
    name: str = "parquet-reader",
) -> Iterator[Any]:
    """The batches (``prepare(batch)`` of each, when given), each read and prepared in a
    second thread (named ``name``) while the previous one is used (Parquet decodes without
    the GIL). One batch ahead at most; stages chain (``read_ahead(read_ahead(...), ...)``),
    each in its own thread."""
    from concurrent.futures import ThreadPoolExecutor

    def following() -> Any:
        batch = next(batches, None)
        return batch if batch is None or prepare is None else prepare(batch)

    with ThreadPoolExecutor(1, thread_name_prefix=name) as pool:
        pending = pool.submit(following)
        try:
            while (item := pending.result()) is not None:
                pending = pool.submit(following)
                yield item
        finally:  # stopped early: let a read in flight end, then close the file
            if not pending.cancel():
                pending.exception()
            if isinstance(batches, Generator):
                batches.close()


def score_stream(
    model: Model, batches: Iterable[pa.RecordBatch], schema: pa.Schema, output: Output = LEAN
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The output schema and the scored batches of a partition whose rows have ``schema``
    (``row`` counts from its first row)."""
    out = output_schema(model, schema, output, "the request's Parquet body")

    def scored() -> Iterator[pa.RecordBatch]:
        row = 0
        for batch in batches:
            yield score_batch(model, batch, out, output=output, first_row=row)
            row += batch.num_rows

    return out, scored()
