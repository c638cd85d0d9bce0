"""Prediction capture: a sample of scored requests, spooled to storage in the background.

What a request pays is one random draw and, when sampled, one append to an in-memory buffer:
its ids and times as values of one flat list (``put``: the prediction route hands the fields over as
arguments, the model's classes as JSON made once per loaded version, so nothing else is
built per request), its response body as sent copied into the current chunk's response
area, and its request body as received copied into the chunk's request area, whatever its
size. Nothing is parsed, serialised or held per record: the bodies' bytes die with the
request, on the event loop's thread, and the next request's allocation reuses that warm
memory; written areas are reused by the next chunks, the last written first. A background
task hands full chunks to a worker thread, which writes each as spool parts (one per model
and day; ``mlwp.monitoring.capture.SpoolWriter``: the areas as they are, framed with the
requests' columns as one JSON dump; on a local filesystem uncompressed and written past the
page cache straight from the areas, on an object store each LZ4-compressed by Arrow without
the interpreter lock) under
``<storage root>/monitoring/capture/model=<model>/date=<day>/``, when
``capture_batch_rows`` rows or :data:`BATCH_CHUNKS` full chunks are waiting, every
``capture_flush_seconds``, and at shutdown.
Encoding into Parquet happens out of this process, in the monitor task
(``mlwp.monitoring.capture.compact_capture``), and the per-record rows (one per input
record, with its entity key, class index, probability and outputs) when the captures are
read (``mlwp.monitoring.capture.read_capture``).

Why (measured, docs/monitoring.md "Cost"): the writer thread's Parquet and LZ4 work beside
the event loop slowed every step of the loop (caches, memory bandwidth), and cost the writer
~200 us per 100-row request; every body held until a flush cost the loop as well (session
9, by CPU time; session 13 held the large ones again, as by instructions their copy cost
more, and session 14 measured that by CPU time the loop paid ~15 us more system time per
100-row request for it, and the writer ~20 us more for compressing a hundred blocks a part,
each taking the interpreter lock back, instead of two). Building an Arrow table of the
chunk (session 10's spool) held the interpreter lock long enough for the loop to wait for
it 0.3 times per 100-row request; the framed part leaves the writer a few milliseconds of
Python per part (0.02-0.10 waits per request; perf: 4 % of the writer's samples Python, 90 %
zstd). On a local filesystem parts are written with ``O_DIRECT``: the page cache's copy of
every byte cost the writer more than LZ4 on this project's virtual machines (the
``_DirectWriter`` of ``mlwp.monitoring.capture`` says why). zstd cost ~270k instructions per 100-row
request of the benchmark's bodies (~450k on unique ones), LZ4 blocks ~180k: the spool codec
is lz4_raw since session 13; the monitor's compaction stores zstd Parquet as before. A
writer process fed through shared memory was weighed and not built: it could only move the
writer's Python (the compression costs the same in a process, whose CPU counts as well), and
would add a process to start, watch and restart. A buffered request holds only strings,
numbers and bytes: nothing for the garbage collector to walk, nothing per record to free.

Never blocking a request is the guarantee, completeness is not: the buffer holds at most
``capture_buffer_rows`` rows (records; those being written included), and a request that
would overflow it is not captured; its rows are counted in
``mlwp_serving_capture_dropped_total{model, reason="buffer_full"}``. A write that fails
(storage down) drops its batch the same way (``reason="write_failed"``) and is logged;
``mlwp_serving_capture_written_total{model}`` counts rows stored. Each serving replica
writes its own parts (random names), so replicas never coordinate.

The shadow variant's results are captured beside the served ones, with the same inference
id and request body, its own answer (predictions and probabilities), ``variant="shadow"``
and ``served=false``, when the shadow finished scoring.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import mmap
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from serving.core.config import ServingSettings
from serving.core.metrics import Metrics

log = structlog.get_logger("mlwp.serving.capture")

_JSON = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


@dataclass(slots=True)
class Captured:
    """One scored request (or its shadow's scoring), as the route had it at hand."""

    inference_id: str
    time_ms: int
    model: str
    version: str
    variant: str
    served: bool
    routing_key: str | None
    rows: int  # the records in the request
    request: bytes  # the body as received
    response: bytes  # the body as sent (a shadow: its predictions and probabilities)
    classes: Sequence[Any] | None  # the model's classes, None for a regression
    latency_ms: float


# A buffered request: Captured's fields in this order, the bodies as their lengths (the bytes
# are in the chunk's areas), the classes as their JSON text, appended to the chunk's one flat
# list of values (FIELDS per request; request i's field k is items[i * FIELDS + k]). Only
# strings and numbers, and no object per request: a tuple per request, as before session 14,
# outlived its request, so the capturing loop's allocations outran its frees by one per
# request and the collector ran a young-generation pass every ~440 requests (~0.45 ms each,
# session 12) where the uncapturing server ran almost none; before that a tuple inside the
# tuple kept it tracked until a generation-1 pass (3-5 ms of CPU per ~3,300 one-row
# requests). The flat list is one object, whatever it holds.
FIELDS = 12
_TIME = 1
_MODEL = 2
_ROWS = 7
_REQUEST_SIZE = 8  # then the response's
_DAY_MS = 86_400_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class CaptureBuffer:
    """The bounded buffer of captured requests and the task that writes it out."""

    def __init__(self, settings: ServingSettings, metrics: Metrics) -> None:
        self.root = settings.capture_root
        self.default_percent = settings.capture_percent
        self.model_percent = dict(settings.capture_model_percent)
        self.default_entity_field = settings.entity_field
        self.entity_fields = dict(settings.entity_fields)
        self.capacity = settings.capture_buffer_rows
        self.batch_rows = settings.capture_batch_rows
        # put's one compare: past it the buffer may be full or a batch wait to be written
        self._check_at = min(self.capacity + 1, self.batch_rows)
        self.flush_seconds = settings.capture_flush_seconds
        self.area_idle_seconds = AREA_IDLE_SECONDS  # free areas unused longer are unmapped
        codec = settings.capture_spool_codec
        # "auto": the SpoolWriter's choice by the root (none local, lz4_raw on object stores)
        self.codec = None if codec == "none" else codec
        self._spool: Any = None  # the SpoolWriter, made by the writer's thread
        self.metrics = metrics
        self._chunk: Chunk | None = None  # where requests are buffered now
        self._pending: list[Chunk] = []  # full chunks, waiting for the writer
        self._free: deque[Area] = deque()  # areas the writer is done with, for reuse
        self._rows = 0  # pending rows plus rows being written
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._flushing: asyncio.Lock | None = None
        # read at scrape time: the request path pays nothing for it
        metrics.capture_buffered.set_function(lambda: self._rows)

    # ------------------------------------------------------------------ request side

    def percent(self, model: str) -> float:
        """The share of ``model``'s requests captured, in percent."""
        return self.model_percent.get(model, self.default_percent)

    def sampled(self, model: str) -> bool:
        """Whether to capture this request of ``model`` (decided once per request)."""
        percent = self.model_percent.get(model, self.default_percent)
        if percent >= 100:
            return True
        return percent > 0 and random.random() * 100 < percent

    def add(self, captured: Captured) -> bool:
        """Buffer ``captured``, or drop and count it when the buffer is full; never waits."""
        classes = captured.classes
        return self.put(
            captured.inference_id,
            captured.time_ms,
            captured.model,
            captured.version,
            captured.variant,
            captured.served,
            captured.routing_key,
            captured.rows,
            captured.request,
            captured.response,
            None if classes is None else _classes_json(tuple(classes)),
            captured.latency_ms,
        )

    def put(  # noqa: PLR0917 - the request path's fields, positionally: no object built
        self,
        inference_id: str,
        time_ms: int,
        model: str,
        version: str,
        variant: str,
        served: bool,
        routing_key: str | None,
        rows: int,
        request: bytes,
        response: bytes,
        classes_json: str | None,
        latency_ms: float,
    ) -> bool:
        """:meth:`add` with :class:`Captured`'s fields as arguments and the classes as their
        JSON (``Variant.classes_json``): the prediction route's path, which builds nothing
        per request but the buffered tuple."""
        total = self._rows + rows
        if total >= self._check_at:  # rarely: full, or a batch waits (one compare, not two)
            if total > self.capacity:
                self.metrics.capture_dropped.labels(model, "buffer_full").inc(rows)
                return False
            if total >= self.batch_rows and self._wake is not None:
                self._wake.set()
        chunk: Chunk = self._chunk  # type: ignore[assignment]  # None: AttributeError below
        # each body copied in by one call (the map's write, no Python step of ours); a body
        # the chunk's area has no room for raises (ValueError: no tell() or len() per
        # request to ask first), and the chunk is replaced
        try:
            chunk.requests.write(request)
            try:
                chunk.responses.write(response)
            except ValueError:  # the request went in: out again, into the next chunk
                chunk.requests.seek(-len(request), 1)
                raise
        except (AttributeError, ValueError):  # no chunk yet, or this one full
            chunk = self._new_chunk(len(request), len(response))
            chunk.requests.write(request)
            chunk.responses.write(response)
        # flat: FIELDS values per request, no object of its own that outlives the request
        # (the tuple this makes dies here): nothing for the garbage collector to count
        chunk.items += (
            inference_id,
            time_ms,
            model,
            version,
            variant,
            served,
            routing_key,
            rows,
            len(request),
            len(response),
            classes_json,
            latency_ms,
        )
        self._rows = total
        return True

    def _new_chunk(self, request: int, response: int) -> Chunk:
        """Start a chunk (the current one is full): reused areas when they are large
        enough, new ones when not. :data:`BATCH_CHUNKS` full chunks waiting are a batch
        whatever their rows (the bodies' bytes bound a batch as well as its rows)."""
        if self._chunk is not None and self._chunk.items:
            self._pending.append(self._chunk)
            if len(self._pending) >= BATCH_CHUNKS and self._wake is not None:
                self._wake.set()
        self._chunk = Chunk(self._area(request), self._area(response))
        return self._chunk

    def _area(self, needed: int) -> Area:
        if needed <= AREA_BYTES:
            # the one written last (LIFO): its lines the likeliest still in a cache; the
            # writer's thread may have let the pool's last go meanwhile (_trim)
            try:
                return self._free.pop()
            except IndexError:
                pass
        return Area(max(AREA_BYTES, needed))

    # ------------------------------------------------------------------ writer side

    def start(self) -> None:
        """Start the writer task on the running loop (the application's lifespan)."""
        if self._task is None:
            self._wake = asyncio.Event()
            self._flushing = asyncio.Lock()
            self._task = asyncio.create_task(self._run(self._wake), name="mlwp-capture-writer")

    async def _run(self, wake: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=self.flush_seconds)
            wake.clear()
            try:
                await self.flush()
            except Exception as exc:  # the writer must outlive any one failure
                log.error("capture_flush_failed", error=repr(exc))

    async def flush(self) -> int:
        """Write what is buffered now; return the rows written."""
        if self._flushing is None:
            self._flushing = asyncio.Lock()
        async with self._flushing:
            if self._chunk is not None and self._chunk.items:
                self._pending.append(self._chunk)
                self._chunk = None
            pending, self._pending = self._pending, []
            if not pending:  # idle: areas a burst left are let go here (the writer, else)
                self._trim()
                return 0
            rows = sum(_rows(chunk.items) for chunk in pending)
            try:
                return await asyncio.to_thread(self._write, pending)
            finally:
                self._rows -= rows

    async def close(self) -> None:
        """Stop the writer and write what is left (the application's shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except Exception as exc:
            log.error("capture_flush_failed", error=repr(exc), at="shutdown")

    def _write(self, pending: list[Chunk]) -> int:
        """Write the chunks ``pending``, then give their areas back for reuse (emptied
        here, on this thread)."""
        try:
            return self._write_parts(pending)
        finally:
            now = time.monotonic()
            for chunk in pending:
                chunk.items.clear()
                for area in (chunk.requests, chunk.responses):
                    if len(area) == AREA_BYTES:  # a larger one was for one large body
                        area.seek(0)
                        area.freed_at = now
                        self._free.append(area)
            pending.clear()
            self._trim()

    def _trim(self) -> None:
        """Unmap the free areas no chunk took for :data:`AREA_IDLE_SECONDS`, but
        :data:`KEEP_FREE`: a burst while storage was slow left up to a full buffer's worth
        (50-100 MB at 100,000 rows), which the pool would otherwise keep for the process's
        life. The
        loop takes areas from the pool's right end (the last written) and the writer adds
        them there, so the pool is ordered by when each was given back, and the one at its
        left end has been idle the longest. Called by the writer after each write and by
        an idle flush: nothing on the request path."""
        free = self._free
        idle = time.monotonic() - self.area_idle_seconds
        while len(free) > KEEP_FREE:
            try:
                area = free.popleft()
            except IndexError:  # the loop took the rest meanwhile
                return
            if area.freed_at > idle:  # taken within the interval: still needed
                free.appendleft(area)
                return
            with contextlib.suppress(BufferError):  # a view still open: unmapped with it
                area.close()

    def _write_parts(self, pending: list[Chunk]) -> int:
        """Write ``pending`` as spool parts; return the rows written. Every row ends counted
        written or dropped: a part that fails is dropped on its own, and a failure outside
        one (an import, a chunk that cannot be taken apart: a bug) drops every row not yet
        counted, so written plus dropped is always the rows captured."""
        counted: dict[str, int] = {}  # rows written or dropped so far, by model
        written = 0
        try:
            from mlwp.monitoring.capture import SpoolWriter

            for chunk in pending:
                for model, items, requests, responses in _parts(chunk):
                    columns: dict[str, Sequence[Any]] = dict(
                        zip(_COLUMNS, _columns(items), strict=True)
                    )
                    field = self.entity_fields.get(model, self.default_entity_field)
                    columns["entity_field"] = (field,) * (len(items) // FIELDS)
                    count = sum(columns["rows"])
                    try:
                        if self._spool is None:  # on the writer's thread, at its first part
                            self._spool = SpoolWriter(self.root, codec=self.codec)
                        self._spool.write(model, columns, requests, responses)
                    except Exception as exc:  # storage down, a bad record: count, log, go on
                        self.metrics.capture_dropped.labels(model, "write_failed").inc(count)
                        counted[model] = counted.get(model, 0) + count
                        log.error("capture_write_failed", model=model, rows=count, error=repr(exc))
                        continue
                    self.metrics.capture_written.labels(model).inc(count)
                    counted[model] = counted.get(model, 0) + count
                    written += count
        except Exception as exc:  # outside one part: the rows not counted yet are dropped
            self._drop_uncounted(pending, counted, exc)
        return written

    def _drop_uncounted(
        self, pending: list[Chunk], counted: dict[str, int], exc: Exception
    ) -> None:
        left: dict[str, int] = {}
        for chunk in pending:
            items = chunk.items
            for model, rows in zip(items[_MODEL::FIELDS], items[_ROWS::FIELDS], strict=True):
                left[model] = left.get(model, 0) + rows
        for model, rows in left.items():
            dropped = rows - counted.get(model, 0)
            if dropped > 0:
                self.metrics.capture_dropped.labels(model, "write_failed").inc(dropped)
                log.error("capture_write_failed", model=model, rows=dropped, error=repr(exc))


def _columns(items: list[Any]) -> list[list[Any]]:
    """Buffered requests' values (flat, :data:`FIELDS` per request) as their columns."""
    return [items[field::FIELDS] for field in range(FIELDS)]


# the spool columns of the buffered fields, in their order
_COLUMNS = (
    "inference_id",
    "time",
    "model",
    "version",
    "variant",
    "served",
    "routing_key",
    "rows",
    "request_size",
    "response_size",
    "classes",
    "latency_ms",
)


def _parts(chunk: Chunk) -> list[tuple[str, list[Any], Any, Any]]:
    """A chunk's requests by model and day (one spool part each), with their bodies: the
    areas as they are when the chunk holds one model's requests of one day (nearly always),
    else each part's bodies joined."""
    items = chunk.items
    requests = memoryview(chunk.requests)[: chunk.requests.tell()]
    responses = memoryview(chunk.responses)[: chunk.responses.tell()]
    # one model, one day (nearly always): checked without a Python step per request
    times = items[_TIME::FIELDS]
    if len(set(items[_MODEL::FIELDS])) == 1 and min(times) // _DAY_MS == max(times) // _DAY_MS:
        return [(items[_MODEL], items, requests, responses)]
    grouped: dict[tuple[str, int], tuple[list[Any], list[Any], list[Any]]] = {}
    request_at = response_at = 0
    for at in range(0, len(items), FIELDS):
        item = items[at : at + FIELDS]
        group = grouped.setdefault((item[_MODEL], item[_TIME] // _DAY_MS), ([], [], []))
        group[0].extend(item)
        size = item[_REQUEST_SIZE]
        group[1].append(requests[request_at : request_at + size])
        request_at += size
        group[2].append(responses[response_at : response_at + item[_REQUEST_SIZE + 1]])
        response_at += item[_REQUEST_SIZE + 1]
    return [
        (model, grouped_items, b"".join(bodies), b"".join(answers))
        for (model, _), (grouped_items, bodies, answers) in grouped.items()
    ]


def _rows(items: list[Any]) -> int:
    """The rows (records) of buffered requests."""
    return sum(items[_ROWS::FIELDS])


# An area's size: a chunk's bodies are copied into two of them (requests, responses); at
# 100 churn records per request (~52 kB of JSON) one holds ~320 requests, at one record
# ~27,000. Larger areas are made for a body that would not fit, and used for it alone. A
# chunk is a spool part, and a part costs the writer its files' syscalls (the interpreter
# lock handed back after each) however small: 16 MiB, not 4 (session 16), so that a batch
# (BATCH_CHUNKS, or the batch's rows) is one part, not four; the pages a chunk never reaches
# (most of a response area) are never made, and the pool keeps two areas idle (32 MiB of
# address space, the pages touched resident).
AREA_BYTES = 16 << 20
# free areas kept however long idle: one chunk's pair, so the first requests after a quiet
# spell write into pages already made
KEEP_FREE = 2
# Free areas no chunk took for this long are unmapped (but KEEP_FREE). Not the flush
# interval, as before session 16: a lull longer than a flush let the pool go, and the next
# burst wrote into new pages, each costing the loop a fault and the kernel's zeroing (~7 us
# a page on this project's virtual machines: ~3 faults, +18 us of system time per 100-row
# request in 2-second bursts, docs/history/capture.md "Session 16"). A minute, as
# allocators decay unused memory over seconds to minutes (jemalloc: 10 s).
AREA_IDLE_SECONDS = 60.0
# Full chunks waiting that make a batch whatever their rows: one (16 MiB of request
# bodies). The rows alone (10,000 before session 16) made a batch of a hundred 100-row
# requests (5 MB), and a batch costs the writer ~1-2 ms of CPU however small (its parts'
# files and syscalls, the interpreter lock handed back and forth): with the pool kept, 100
# rows x1.125 -> x1.071 (docs/history/capture.md "Session 16"). Not larger: 50,000-row
# batches (a 100,000-row buffer of two) dropped 1.5 % of a run's rows while the pool was
# still growing; 25,000 none, for the same writer's CPU.
BATCH_CHUNKS = 1


class Area(mmap.mmap):
    """Bodies copied back to back into one preallocated buffer, reused once written: its
    position (``tell()``) is the bytes used, ``len()`` its size, and a body goes in by one
    ``write`` (a C call: no slice, no view, no Python arithmetic per body; ~3k instructions
    a request less than slicing a memoryview in a method of ours, session 14).

    The buffer is an anonymous memory map, not a ``bytearray``: a ``bytearray(n)`` is
    memset to zeros by the interpreter over pages the kernel has just handed out zeroed,
    ~34k instructions per 100-row request on the loop while the area pool grows
    (docs/history/capture.md, "Session 13"); a map's pages are zeroed once, by the kernel, when
    first written, and the pages a chunk never reaches (most of a response area) are never
    made at all.

    Private, in transparent huge pages where the kernel offers them (session 20). Python's
    anonymous maps are shared by default, which Linux backs with shmem pages that never
    become huge: the writer's direct write of a part then pins and queues 4 KiB pages one
    by one. A private map advised ``MADV_HUGEPAGE`` is 2 MiB pages (Linux's THP setting
    ``madvise``, the default of most distributions, or ``always``): the direct write of 16
    MiB costs its thread ~0.2 ms of CPU against ~1.2 (shared) and ~0.8 (private, small
    pages), and the writer's CPU per 100-row request halves (~10 -> ~5 us, in one process,
    docs/history/capture.md "Session 20"). The price is paid while the pool grows (start-up,
    a burst after a lull of over a minute; areas are reused after): a region's first write
    faults its 2 MiB in at once, 0.2-0.4 ms in memory the kernel had freed, 5-7 ms on this
    project's virtual machines in memory the guest never touched (the host backs it then),
    one such pause per 2 MiB where small pages spread ~40 % of that work over the requests.
    Elsewhere (no THP, macOS) the advice is ignored or not given."""

    freed_at = 0.0  # when the writer gave it back to the pool (time.monotonic())

    def __new__(cls, size: int) -> Area:
        area = super().__new__(cls, -1, size, flags=mmap.MAP_PRIVATE)
        if _HUGE_PAGES is not None:
            with contextlib.suppress(OSError):  # a kernel without THP refuses the advice
                area.madvise(_HUGE_PAGES)
        return area


_HUGE_PAGES: int | None = getattr(mmap, "MADV_HUGEPAGE", None)


class Chunk:
    """Buffered requests whose bodies lie in one pair of areas."""

    __slots__ = ("items", "requests", "responses")

    def __init__(self, requests: Area, responses: Area) -> None:
        self.items: list[Any] = []  # FIELDS values per request
        self.requests = requests
        self.responses = responses


@functools.lru_cache(maxsize=256)
def _classes_json(classes: tuple[Any, ...]) -> str:
    """A model's classes as the JSON stored beside its requests (few distinct values)."""
    return classes_json(classes)


def classes_json(classes: Sequence[Any]) -> str:
    """Classes as the JSON stored beside a model's requests."""
    return orjson.dumps(tuple(classes), option=_JSON).decode()
