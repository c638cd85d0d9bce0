"""Prediction capture: a sample of scored requests, written to Parquet in the background.

What a request pays is one random draw and, when sampled, one append of references it
already holds (records, outputs, ids) to an in-memory buffer; no copy, no serialisation,
no I/O. A background task turns the buffer into rows of
``mlwp.monitoring.capture.capture_schema()`` (inputs and outputs as JSON, the class index
and positive-class probability beside them) and writes them as Parquet parts under
``<storage root>/monitoring/capture/model=<model>/date=<day>/`` in a worker thread, when
``capture_batch_rows`` rows are waiting, every ``capture_flush_seconds``, and at shutdown.

Never blocking a request is the guarantee, completeness is not: the buffer holds at most
``capture_buffer_rows`` rows (those being written included), and a request that would
overflow it is not captured; its rows are counted in
``mlwp_serving_capture_dropped_total{model, reason="buffer_full"}``. A write that fails
(storage down) drops its batch the same way (``reason="write_failed"``) and is logged;
``mlwp_serving_capture_written_total{model}`` counts rows stored. Each serving replica
writes its own parts (random names), so replicas never coordinate.

The shadow variant's results are captured beside the served ones, with the same inference
id and rows, ``variant="shadow"`` and ``served=false``, when the shadow finished scoring.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from serving.core.config import ServingSettings
from serving.core.metrics import Metrics

log = structlog.get_logger("mlwp.serving.capture")


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
    records: Sequence[Any]
    predictions: Sequence[Any]
    probabilities: Sequence[Any] | None
    classes: Sequence[Any] | None
    latency_ms: float


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
        self._pending: list[Captured] = []
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
        rows = len(captured.records)
        if self._rows + rows > self.capacity:
            self.metrics.capture_dropped.labels(captured.model, "buffer_full").inc(rows)
            return False
        self._pending.append(captured)
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
            try:
                return await asyncio.to_thread(self._write, pending)
            finally:
                self._rows -= sum(len(c.records) for c in pending)

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

    def _write(self, pending: list[Captured]) -> int:
        from mlwp.monitoring.capture import CAPTURE, write_parts

        by_model: dict[str, list[Captured]] = {}
        for captured in pending:
            by_model.setdefault(captured.model, []).append(captured)
        written = 0
        for model, items in by_model.items():
            rows = sum(len(c.records) for c in items)
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

    def _table(self, items: list[Captured]) -> Any:
        """The rows of ``items`` as one Arrow table, built column-wise: per-request values
        are taken once and repeated by Arrow, records and outputs are serialised in one
        orjson call per batch (:func:`json_rows`); Python touches each row only to find its
        class index and entity key."""
        import numpy as np
        import pyarrow as pa

        from mlwp.monitoring.capture import capture_schema

        counts = np.fromiter((len(c.records) for c in items), dtype=np.int64, count=len(items))
        total = int(counts.sum())
        request = pa.array(np.repeat(np.arange(len(items)), counts))
        starts = np.cumsum(counts) - counts
        # one model per table (``_write`` groups by model); variants may differ in classes
        field = self.entity_fields.get(items[0].model, self.default_entity_field)
        records = [r for c in items for r in c.records]
        predictions = [p for c in items for p in c.predictions]
        # records are objects: the model refused the request otherwise
        entities = [r.get(field) for r in records]
        classes = items[0].classes
        if all(c.classes == classes for c in items):
            numbers = _numbers(predictions, classes)
        else:
            numbers = [x for c in items for x in _numbers(c.predictions, c.classes)]
        probabilities: list[Any]
        if all(c.probabilities is not None for c in items):
            probabilities = [q for c in items for q in c.probabilities]  # type: ignore[union-attr]
        else:
            probabilities = [
                q
                for c in items
                for q in (
                    c.probabilities if c.probabilities is not None else [None] * len(c.records)
                )
            ]
        if all(c.classes is not None and len(c.classes) == 2 for c in items):
            positive = [q[1] if q is not None else None for q in probabilities]
        else:
            positive = [
                q[1] if q is not None and c.classes is not None and len(c.classes) == 2 else None
                for c in items
                for q in (
                    c.probabilities if c.probabilities is not None else [None] * len(c.records)
                )
            ]
        outputs = [
            {"prediction": p, "probabilities": q}
            for p, q in zip(predictions, probabilities, strict=True)
        ]

        def per_request(values: list[Any], kind: Any) -> Any:
            return pa.array(values, type=kind).take(request)

        columns = {
            "inference_id": per_request([c.inference_id for c in items], pa.string()),
            "row": pa.array(np.arange(total) - np.repeat(starts, counts), type=pa.int32()),
            "time": per_request([c.time_ms for c in items], pa.timestamp("ms", tz="UTC")),
            "model": per_request([c.model for c in items], pa.string()),
            "version": per_request([c.version for c in items], pa.string()),
            "variant": per_request([c.variant for c in items], pa.string()),
            "served": per_request([c.served for c in items], pa.bool_()),
            "routing_key": per_request([c.routing_key for c in items], pa.string()),
            "entity_key": _entity_keys(entities),
            "inputs": json_rows(records),
            "prediction": pa.array(numbers, type=pa.float64()),
            "probability": pa.array(positive, type=pa.float64()),
            "outputs": json_rows(outputs),
            "latency_ms": per_request([c.latency_ms for c in items], pa.float64()),
        }
        return pa.Table.from_pydict(columns, schema=capture_schema())


_JSON = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def json_rows(values: list[Any]) -> Any:
    """Each value (a JSON object) as its JSON text, in one Arrow string array.

    One ``orjson.dumps`` of the whole list, then the objects are cut apart where ``},{``
    separates them (numpy finds the places), and Arrow strips the separating commas; no
    Python runs per row. When ``},{`` also occurs inside a value (a string holding it, a list
    of objects), the count of cuts is wrong and each value is serialised on its own instead.
    """
    import numpy as np
    import pyarrow as pa

    n = len(values)
    if n == 0:
        return pa.array([], type=pa.string())
    blob = orjson.dumps(values, option=_JSON)
    data = np.frombuffer(blob, dtype=np.uint8)
    cuts = np.flatnonzero((data[:-2] == 0x7D) & (data[1:-1] == 0x2C) & (data[2:] == 0x7B))
    if len(cuts) != n - 1 or len(blob) >= 2**31 or blob[1:2] != b"{":
        return pa.array([orjson.dumps(v, option=_JSON).decode() for v in values], pa.string())
    # object i spans from its "{" to the next object's "{", or to the closing "]"; the comma
    # between two objects becomes a space, which JSON allows after a value
    text = data.copy()
    text[cuts + 1] = 0x20
    offsets = np.concatenate(([1], cuts + 2, [len(blob) - 1])).astype(np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))


def _numbers(predictions: Sequence[Any], classes: Sequence[Any] | None) -> list[float | None]:
    """Class indices of ``predictions`` (``classes`` given), else the values as numbers."""
    if not classes:
        return [_number(p) for p in predictions]
    index = {k: float(i) for i, k in enumerate(classes)}
    numbers = [index.get(p) for p in predictions]
    if None in numbers:  # a cached answer's JSON round trip: 1.0 for the class 1
        numbers = [_class_index(p, index) for p in predictions]
    return numbers


def _entity_keys(values: list[Any]) -> Any:
    import pyarrow as pa

    if all(v is None for v in values):
        return pa.nulls(len(values), type=pa.string())
    if all(v is None or type(v) is str for v in values):
        return pa.array(values, type=pa.string())
    return pa.array([_entity(v) for v in values], type=pa.string())


def _class_index(prediction: Any, index: dict[Any, float]) -> float | None:
    position = index.get(prediction)
    if position is None:
        position = {_key(k): i for k, i in index.items()}.get(_key(prediction))
    return position


def _key(value: Any) -> Any:
    # a class and a prediction compare as JSON would: 1 and 1.0 and "1" are the same class
    return str(value) if not isinstance(value, float) or not value.is_integer() else str(int(value))


def _number(prediction: Any) -> float | None:
    if isinstance(prediction, bool):
        return float(prediction)
    if isinstance(prediction, int | float):
        return float(prediction)
    return None


def _entity(value: Any) -> str | None:
    if value is None or isinstance(value, bool | dict | list):
        return None
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)
