"""Prediction capture: a sample of scored requests, spooled to storage in the background.

What a request pays is one random draw and, when sampled, one append to an in-memory buffer:
its ids and times as one tuple, and its request body as received and response body as sent
copied into the current chunk's two preallocated areas (one memcpy each). Nothing is parsed,
serialised or held per record, and the buffer keeps no body object: the request's bytes die
with the request, on the event loop's thread, and the next request's allocation reuses that
warm memory, where a body held for seconds was cold by then; written areas are reused by the
next chunks. A background task hands full chunks to a worker thread, which writes them as
spool parts (``mlwp.monitoring.capture.write_spool``: Arrow IPC, compressed by Arrow from
the areas as they are, without the interpreter lock) of
``mlwp.monitoring.capture.request_schema()`` (format 2: one row per request, the bodies as
binary columns) under ``<storage root>/monitoring/capture/model=<model>/date=<day>/``, when
``capture_batch_rows`` rows are waiting, every ``capture_flush_seconds``, and at shutdown.
Encoding into Parquet happens out of this process, in the monitor task
(``mlwp.monitoring.capture.compact_capture``), and the per-record rows (one per input
record, with its entity key, class index, probability and outputs) when the captures are
read (``mlwp.monitoring.capture.read_capture``).

Why (measured, docs/monitoring.md "Cost"): the writer thread's Parquet and LZ4 work beside
the event loop slowed every step of the loop (caches, memory bandwidth), and cost the writer
~200 us per 100-row request; the bodies held until a flush cost the loop as well. A buffered
request holds only strings and numbers: nothing for the garbage collector to walk, nothing
per record to free.

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
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
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
# are in the chunk's areas), the classes as their JSON text. Only strings and numbers: the
# garbage collector stops tracking the tuple at its first
# collection. A tuple inside (the classes as a tuple, as before) kept it tracked until a
# second one, which for a buffered entry is a generation-1 collection: it walked every
# entry buffered since the last, cold (3-5 ms of CPU for ~3,300 one-row requests, a stall of
# the event loop every ~3,000 requests at 1 row and c=8: measured in process, 2026-11-30).
Pending = tuple[Any, ...]
_ROWS = 7


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
        self.flush_seconds = settings.capture_flush_seconds
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
        rows = captured.rows
        if self._rows + rows > self.capacity:
            self.metrics.capture_dropped.labels(captured.model, "buffer_full").inc(rows)
            return False
        classes = captured.classes
        request, response = captured.request, captured.response
        chunk = self._chunk
        if chunk is None or not chunk.fits(len(request), len(response)):
            chunk = self._new_chunk(len(request), len(response))
        chunk.items.append(
            (
                captured.inference_id,
                captured.time_ms,
                captured.model,
                captured.version,
                captured.variant,
                captured.served,
                captured.routing_key,
                rows,
                chunk.requests.put(request),
                chunk.responses.put(response),
                None if classes is None else _classes_json(tuple(classes)),
                captured.latency_ms,
            )
        )
        self._rows += rows
        if self._wake is not None and self._rows >= self.batch_rows:
            self._wake.set()
        return True

    def _new_chunk(self, request: int, response: int) -> Chunk:
        """Start a chunk (the current one is full): reused areas when they are large
        enough, new ones when not."""
        if self._chunk is not None and self._chunk.items:
            self._pending.append(self._chunk)
        self._chunk = Chunk(self._area(request), self._area(response))
        return self._chunk

    def _area(self, needed: int) -> Area:
        if needed <= AREA_BYTES and self._free:
            return self._free.popleft()  # written already: warm memory, no page to map
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
            if not pending:
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
            for chunk in pending:
                chunk.items.clear()
                for area in (chunk.requests, chunk.responses):
                    if area.size == AREA_BYTES:  # a larger one was for one large body
                        area.used = 0
                        self._free.append(area)
            pending.clear()

    def _write_parts(self, pending: list[Chunk]) -> int:
        import pyarrow as pa
        import pyarrow.compute as pc

        from mlwp.monitoring.capture import write_spool

        table = pa.concat_tables([self._table(chunk) for chunk in pending])
        models = table.column("model").unique().to_pylist()
        written = 0
        for model in models:
            part = table if len(models) == 1 else table.filter(pc.equal(table["model"], model))
            rows = pc.sum(part["rows"]).as_py()
            try:
                write_spool(self.root, model, part)
            except Exception as exc:  # storage down, a bad record: count, log, go on
                self.metrics.capture_dropped.labels(model, "write_failed").inc(rows)
                log.error("capture_write_failed", model=model, rows=rows, error=repr(exc))
                continue
            self.metrics.capture_written.labels(model).inc(rows)
            written += rows
        return written

    def _table(self, chunk: Chunk) -> Any:
        """A chunk's requests as one Arrow table of ``request_schema()``: the bodies are
        the chunk's areas as they are (no copy)."""
        import pyarrow as pa

        from mlwp.monitoring.capture import request_schema

        items = chunk.items
        (
            ids,
            times,
            models,
            versions,
            variants,
            served,
            routing,
            rows,
            request_sizes,
            response_sizes,
            classes,
            latency,
        ) = map(list, zip(*items, strict=True))
        fields = [self.entity_fields.get(model, self.default_entity_field) for model in models]
        columns = {
            "inference_id": ids,
            "time": times,
            "model": models,
            "version": versions,
            "variant": variants,
            "served": served,
            "routing_key": routing,
            "entity_field": fields,
            "rows": rows,
            "request": chunk.requests.array(request_sizes),
            "response": chunk.responses.array(response_sizes),
            "classes": classes,
            "latency_ms": latency,
        }
        return pa.Table.from_pydict(columns, schema=request_schema())


def _rows(items: list[Pending]) -> int:
    """The rows (records) of buffered requests."""
    return sum(map(itemgetter(_ROWS), items))


# An area's size: a chunk's bodies are copied into two of them (requests, responses); at
# 100 churn records per request (~47 kB of JSON) one holds ~90 requests. Larger areas are
# made for a body that would not fit, and used for it alone.
AREA_BYTES = 4 << 20


class Area:
    """Bodies copied back to back into one preallocated buffer, reused once written."""

    __slots__ = ("buffer", "size", "used", "view")

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
        self.view = memoryview(self.buffer)
        self.size = size
        self.used = 0

    def put(self, body: bytes) -> int:
        """Copy ``body`` in (the caller checked it fits); return its length."""
        end = self.used + len(body)
        self.view[self.used : end] = body
        self.used = end
        return len(body)

    def array(self, sizes: list[int]) -> Any:
        """The bodies of ``sizes`` as an Arrow binary array over this area (no copy)."""
        import numpy as np
        import pyarrow as pa

        offsets = np.zeros(len(sizes) + 1, dtype=np.int32)
        np.cumsum(np.asarray(sizes, dtype=np.int64), out=offsets[1:], dtype=np.int32)
        data = pa.py_buffer(self.view[: self.used])
        return pa.Array.from_buffers(pa.binary(), len(sizes), [None, pa.py_buffer(offsets), data])


class Chunk:
    """Buffered requests whose bodies lie in one pair of areas."""

    __slots__ = ("items", "requests", "responses")

    def __init__(self, requests: Area, responses: Area) -> None:
        self.items: list[Pending] = []
        self.requests = requests
        self.responses = responses

    def fits(self, request: int, response: int) -> bool:
        return (
            self.requests.used + request <= self.requests.size
            and self.responses.used + response <= self.responses.size
        )


@functools.lru_cache(maxsize=256)
def _classes_json(classes: tuple[Any, ...]) -> str:
    """A model's classes as the JSON stored beside its requests (few distinct values)."""
    return orjson.dumps(classes, option=_JSON).decode()
