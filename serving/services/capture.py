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


@dataclass(frozen=True, slots=True)
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
        self.metrics.capture_buffered.set(self._rows)
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
                self.metrics.capture_buffered.set(self._rows)

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
        import pyarrow as pa

        from mlwp.monitoring.capture import capture_schema

        columns: dict[str, list[Any]] = {name: [] for name in capture_schema().names}
        dumps = orjson.dumps
        option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
        for c in items:
            field = self.entity_fields.get(c.model, self.default_entity_field)
            index = {_key(k): i for i, k in enumerate(c.classes)} if c.classes else None
            binary = c.classes is not None and len(c.classes) == 2
            n = len(c.records)
            columns["inference_id"].extend([c.inference_id] * n)
            columns["row"].extend(range(n))
            columns["time"].extend([c.time_ms] * n)
            columns["model"].extend([c.model] * n)
            columns["version"].extend([c.version] * n)
            columns["variant"].extend([c.variant] * n)
            columns["served"].extend([c.served] * n)
            columns["routing_key"].extend([c.routing_key] * n)
            columns["latency_ms"].extend([c.latency_ms] * n)
            probabilities = c.probabilities
            for i, record in enumerate(c.records):
                columns["entity_key"].append(
                    _entity(record.get(field)) if isinstance(record, dict) else None
                )
                columns["inputs"].append(dumps(record, option=option).decode())
                prediction = c.predictions[i]
                probability = probabilities[i] if probabilities is not None else None
                columns["outputs"].append(
                    dumps(
                        {"prediction": prediction, "probabilities": probability}, option=option
                    ).decode()
                )
                columns["prediction"].append(_number(prediction, index))
                columns["probability"].append(
                    float(probability[1]) if binary and probability is not None else None
                )
        return pa.Table.from_pydict(columns, schema=capture_schema())


def _key(value: Any) -> Any:
    # a class and a prediction compare as JSON would: 1 and 1.0 and "1" are the same class
    return str(value) if not isinstance(value, float) or not value.is_integer() else str(int(value))


def _number(prediction: Any, index: dict[Any, int] | None) -> float | None:
    if index is not None:
        position = index.get(_key(prediction))
        return None if position is None else float(position)
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
