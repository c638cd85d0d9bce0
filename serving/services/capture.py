"""Prediction capture: a sample of scored requests, written to Parquet in the background.

What a request pays is one random draw and, when sampled, one append to an in-memory buffer
of the bytes it already holds: the request body as received, the response body as sent, its
ids and times. Nothing is parsed, serialised or copied per record on the request path. A
background task writes the buffer as Parquet parts of
``mlwp.monitoring.capture.request_schema()`` (format 2: one row per request, the bodies as
binary columns) under ``<storage root>/monitoring/capture/model=<model>/date=<day>/`` in a
worker thread, when ``capture_batch_rows`` rows are waiting, every ``capture_flush_seconds``,
and at shutdown. The per-record rows (one per input record, with its entity key, class
index, probability and outputs) are built when the captures are read
(``mlwp.monitoring.capture.read_capture``), so the monitor pays for them once per window
read, not serving once per request.

Why bytes and not the parsed records (measured, docs/monitoring.md "Cost"): a buffered
request lives for seconds. Holding its parsed records (a dict and its values per record)
kept thousands of Python objects per 100-row request alive until the flush, which then
freed them on the event loop's thread, cold, and kept them in the garbage collector's view;
the writer's per-record work (serialising every record again, the outputs per row) held the
interpreter lock the event loop needs. A buffered request is now one tuple of strings,
numbers and two bytes objects: nothing for the collector to walk, nothing per record to
free, and the writer only hands the bytes to Arrow.

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


# A buffered request: Captured's fields in this order, the classes as their JSON text. Only
# strings, numbers and bytes: the garbage collector stops tracking the tuple at its first
# collection. A tuple inside (the classes as a tuple, as before) kept it tracked until a
# second one, which for a buffered entry is a generation-1 collection: it walked every
# entry buffered since the last, cold (3-5 ms of CPU for ~3,300 one-row requests, a stall of
# the event loop every ~3,000 requests at 1 row and c=8: measured in process, 2026-11-30).
Pending = tuple[Any, ...]
_MODEL, _ROWS = 2, 7


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
        self._pending: list[Pending] = []
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
        self._pending.append(
            (
                captured.inference_id,
                captured.time_ms,
                captured.model,
                captured.version,
                captured.variant,
                captured.served,
                captured.routing_key,
                rows,
                captured.request,
                captured.response,
                None if classes is None else _classes_json(tuple(classes)),
                captured.latency_ms,
            )
        )
        self._rows += rows
        if self._wake is not None and self._rows >= self.batch_rows:
            self._wake.set()
        return True

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
            pending, self._pending = self._pending, []
            if not pending:
                return 0
            rows = _rows(pending)
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

    def _write(self, pending: list[Pending]) -> int:
        """Write ``pending`` (emptied here: its bodies are freed on this thread, not on the
        event loop's when ``flush`` returns)."""
        try:
            return self._write_parts(pending)
        finally:
            pending.clear()

    def _write_parts(self, pending: list[Pending]) -> int:
        from mlwp.monitoring.capture import CAPTURE, write_parts

        models = list(map(itemgetter(_MODEL), pending))
        by_model: dict[str, list[Pending]] = {models[0]: pending}
        if models.count(models[0]) != len(models):  # several models: one table each
            by_model = {}
            for item in pending:
                by_model.setdefault(item[_MODEL], []).append(item)
        written = 0
        for model, items in by_model.items():
            rows = _rows(items)
            try:
                table = self._table(items)
                write_parts(self.root, CAPTURE, model, table)
            except Exception as exc:  # storage down, a bad record: count, log, go on
                self.metrics.capture_dropped.labels(model, "write_failed").inc(rows)
                log.error("capture_write_failed", model=model, rows=rows, error=repr(exc))
                continue
            self.metrics.capture_written.labels(model).inc(rows)
            written += rows
        return written

    def _table(self, items: list[Pending]) -> Any:
        """The requests ``items`` (of one model) as one Arrow table of
        ``request_schema()``: the buffered values as they are."""
        import pyarrow as pa

        from mlwp.monitoring.capture import request_schema

        (
            ids,
            times,
            models,
            versions,
            variants,
            served,
            routing,
            rows,
            requests,
            responses,
            classes,
            latency,
        ) = map(list, zip(*items, strict=True))
        field = self.entity_fields.get(models[0], self.default_entity_field)
        columns = {
            "inference_id": ids,
            "time": times,
            "model": models,
            "version": versions,
            "variant": variants,
            "served": served,
            "routing_key": routing,
            "entity_field": [field] * len(items),
            "rows": rows,
            "request": _binary(requests),
            "response": _binary(responses),
            "classes": classes,
            "latency_ms": latency,
        }
        return pa.Table.from_pydict(columns, schema=request_schema())


def _rows(items: list[Pending]) -> int:
    """The rows (records) of buffered requests."""
    return sum(map(itemgetter(_ROWS), items))


def _binary(values: list[bytes]) -> Any:
    """``values`` as an Arrow binary array made of one join of them (the bodies are large:
    one copy, where Arrow's builder from a list is slower)."""
    import numpy as np
    import pyarrow as pa

    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, values), dtype=np.int64, count=len(values)), out=offsets[1:])
    if offsets[-1] >= 2**31:  # past 32-bit offsets: Arrow's builder splits it in chunks
        return pa.array(values, pa.binary())
    data = pa.py_buffer(b"".join(values))
    return pa.Array.from_buffers(
        pa.binary(), len(values), [None, pa.py_buffer(offsets.astype(np.int32)), data]
    )


@functools.lru_cache(maxsize=256)
def _classes_json(classes: tuple[Any, ...]) -> str:
    """A model's classes as the JSON stored beside its requests (few distinct values)."""
    return orjson.dumps(classes, option=_JSON).decode()
