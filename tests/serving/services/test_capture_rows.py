"""The capture buffer's request parts and their record rows: what a buffered request holds
(bytes, nothing for the garbage collector), the request-level table the writer stores, and
how readers take it apart (JSON per row without Python per row, its fallbacks, class
indices, entity keys). No service needed."""

from __future__ import annotations

import asyncio
import gc
import threading
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlwp.monitoring import capture_rows
from mlwp.monitoring.capture import MonitoringError, capture_schema, record_rows, request_schema
from mlwp.monitoring.capture_rows import json_rows
from serving.core.config import ServingSettings
from serving.core.metrics import Metrics
from serving.services.capture import CaptureBuffer, Captured

pytestmark = pytest.mark.unit

COMMON = {"time_ms": 1_764_000_000_000, "model": "m", "routing_key": None, "latency_ms": 1.0}
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def buffer_of(tmp_path: Path, *requests: Captured) -> CaptureBuffer:
    buffer = CaptureBuffer(
        ServingSettings(home=tmp_path, entity_fields={"m": "customer"}), Metrics()
    )
    for request in requests:
        assert buffer.add(request)
    return buffer


def captured(
    inference_id: str,
    records: list[Any],
    predictions: list[Any],
    probabilities: Any,
    classes: Any,
    version: str = "1",
    variant: str = "champion",
) -> Captured:
    """A request as the route captures it: the body and the answer as bytes."""
    answer = {"predictions": predictions, "probabilities": probabilities, "request_id": "x"}
    return Captured(
        inference_id=inference_id,
        version=version,
        variant=variant,
        served=variant != "shadow",
        rows=len(records),
        request=orjson.dumps({"data": records, "routing_key": None}),
        response=orjson.dumps(answer, option=_NUMPY),
        classes=classes,
        **COMMON,
    )


def request(number: int, predictions: list[Any], probabilities: Any, classes: Any) -> Captured:
    records = [{"x": i, "customer": f"c{i}"} for i in range(len(predictions))]
    return captured(f"r{number}", records, predictions, probabilities, classes)


def rows_of(buffer: CaptureBuffer) -> list[dict[str, Any]]:
    table = buffer._table(buffer._pending)
    assert table.schema == request_schema()
    rows = record_rows(table)
    assert rows.schema == capture_schema()
    result: list[dict[str, Any]] = rows.to_pylist()
    return result


def by_row(buffer: CaptureBuffer, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The same batch's rows with the vectorised paths switched off."""
    with monkeypatch.context() as patch:
        patch.setattr(capture_rows, "_class_outputs", lambda *args: None)
        patch.setattr(capture_rows, "_regression_outputs", lambda *args: None)
        return rows_of(buffer)


def test_json_rows_cuts_one_dump_and_falls_back_when_it_cannot() -> None:
    values = [{"a": 1, "b": "x"}, {}, {"c": [1, 2], "d": None}]
    rows = json_rows(values).to_pylist()
    assert [orjson.loads(text) for text in rows] == values
    tricky = [{"a": "},{"}, {"b": [{"c": 1}, {"d": 2}]}, {"e": 1.5}]
    assert [orjson.loads(t) for t in json_rows(tricky).to_pylist()] == tricky
    assert json_rows([]).to_pylist() == []


def test_stored_requests_and_their_rows(tmp_path: Path) -> None:
    served = captured(
        "r1",
        [{"x": 1, "customer": 7}, {"x": 2, "customer": "c2"}],
        ["Yes", "No"],
        [[0.2, 0.8], [0.9, 0.1]],
        ["No", "Yes"],
    )
    shadow = captured(
        "r2", [{"x": 3}], [1.0], None, [0, 1], version="2", variant="shadow"
    )  # 1.0: a cached answer's JSON for the class 1
    buffer = buffer_of(tmp_path, served, shadow)
    stored = buffer._table(buffer._pending).to_pylist()
    assert [r["request"] for r in stored] == [served.request, shadow.request]  # as received
    assert [r["response"] for r in stored] == [served.response, shadow.response]  # as sent
    assert [r["classes"] for r in stored] == ['["No","Yes"]', "[0,1]"]
    assert [r["entity_field"] for r in stored] == ["customer", "customer"]
    assert [r["rows"] for r in stored] == [2, 1]

    rows = rows_of(buffer)
    assert [r["inference_id"] for r in rows] == ["r1", "r1", "r2"]
    assert [r["row"] for r in rows] == [0, 1, 0]
    assert [r["prediction"] for r in rows] == [1.0, 0.0, 1.0]
    assert [r["probability"] for r in rows] == [0.8, 0.1, None]
    assert [r["entity_key"] for r in rows] == ["7", "c2", None]
    assert [r["served"] for r in rows] == [True, True, False]
    assert [r["variant"] for r in rows] == ["champion", "champion", "shadow"]
    assert orjson.loads(rows[1]["outputs"]) == {"prediction": "No", "probabilities": [0.9, 0.1]}
    assert orjson.loads(rows[2]["inputs"]) == {"x": 3}


def test_a_stored_request_that_is_not_servings_json_is_named() -> None:
    bad = {
        "inference_id": ["ok", "broken"],
        "time": [0, 0],
        "model": ["m", "m"],
        "version": ["1", "1"],
        "variant": ["champion", "champion"],
        "served": [True, True],
        "routing_key": [None, None],
        "entity_field": [None, None],
        "rows": [1, 2],
        "request": [b'{"data":[{"x":1}]}', b'{"data":[{"x":1},{"x":2}]}'],
        "response": [b'{"predictions":[1.5]}', b'{"predictions":[1.5]}'],
        "classes": [None, None],
        "latency_ms": [1.0, 1.0],
    }
    table = pa.Table.from_pydict(bad, schema=request_schema())
    with pytest.raises(MonitoringError, match=r"'broken': 1 prediction\(s\) for 2 record"):
        record_rows(table)
    bad["response"][1] = b"not json"
    with pytest.raises(MonitoringError, match=r"'broken': the stored request or answer"):
        record_rows(pa.Table.from_pydict(bad, schema=request_schema()))


@pytest.mark.parametrize(
    ("predictions", "probabilities", "classes", "vectorised"),
    [
        # binary, the common case; probabilities as the model's lists and as numpy
        (
            ["Yes", "No", "Yes"],
            [[0.25, 0.75], [0.875, 0.125], [1e-05, 0.99999]],
            ["No", "Yes"],
            True,
        ),
        (["Yes", "No", "Yes"], "numpy", ["No", "Yes"], True),
        # several classes, numbers as classes, a null probability (NaN), the positive
        # class's one taking the row path
        ([2, 0, 1], [[0.1, 0.2, 0.7], [0.8, 0.1, 0.1], [0.3, 0.4, 0.3]], [0, 1, 2], True),
        ([1, 0, 1], [[0.5, 0.5], [float("nan"), 0.2], [0.0, 1.0]], [0, 1], True),
        ([1, 0, 1], [[0.5, 0.5], [0.2, float("nan")], [0.0, 1.0]], [0, 1], False),
        # regression, and a prediction that is no class as it is (takes the row path)
        ([1.5, -2.0, 3], None, None, True),
        (["Yes", "Maybe", "No"], [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]], ["No", "Yes"], False),
    ],
)
def test_vectorised_columns_equal_the_row_by_row_ones(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    predictions: list[Any],
    probabilities: Any,
    classes: Any,
    vectorised: bool,
) -> None:
    if probabilities == "numpy":
        import numpy as np

        probabilities = np.array([[0.25, 0.75], [0.875, 0.125], [1e-05, 0.99999]])
    requests = [
        request(
            n,
            predictions[: n + 1],
            probabilities[: n + 1] if probabilities is not None else None,
            classes,
        )
        for n in range(3)
    ]
    buffer = buffer_of(tmp_path, *requests)
    slow = capture_rows._outputs_by_row
    by_row_calls = []
    with monkeypatch.context() as patch:
        patch.setattr(
            capture_rows, "_outputs_by_row", lambda *a: by_row_calls.append(1) or slow(*a)
        )
        rows = rows_of(buffer)
    assert bool(by_row_calls) is not vectorised
    expected = by_row(buffer, monkeypatch)
    assert len(rows) == 6
    for row, wanted in zip(rows, expected, strict=True):
        assert orjson.loads(row.pop("outputs")) == orjson.loads(wanted.pop("outputs"))
        assert str(row) == str(wanted)  # NaN equals NaN as text
    assert orjson.loads(rows[0]["inputs"]) == {"x": 0, "customer": "c0"}


def test_a_buffered_request_is_nothing_the_collector_walks(tmp_path: Path) -> None:
    """A buffered request is one tuple of strings, numbers and bytes, which the garbage
    collector stops tracking at its first (youngest-generation) collection: nothing per
    request or per row for it to walk then or later (why: the module's docstring)."""
    gc.disable()  # no collection but the one below
    try:
        buffer = buffer_of(
            tmp_path, request(1, ["Yes", "No"], [[0.2, 0.8], [0.9, 0.1]], ["No", "Yes"])
        )
        entry = buffer._pending[0]
        assert gc.is_tracked(entry)  # a new tuple is tracked until a collection looks at it
        gc.collect(0)
    finally:
        gc.enable()
    assert not gc.is_tracked(entry)
    assert not any(gc.is_tracked(value) for value in entry)


class _Body(bytes):
    """A request body that notes the thread it is freed on."""

    freed_on: list[int] = []

    def __del__(self) -> None:
        _Body.freed_on.append(threading.get_ident())


def test_the_writer_frees_the_bodies_on_its_own_thread(tmp_path: Path) -> None:
    """A flushed batch's bodies are freed by the writer's thread, not the event loop's when
    ``flush`` returns (why: the module's docstring), and written all the same."""
    record = captured("r1", [{"x": 1, "customer": "c1"}], ["Yes"], [[0.2, 0.8]], ["No", "Yes"])
    record.request = _Body(record.request)
    buffer = CaptureBuffer(
        ServingSettings(home=tmp_path, storage_root=tmp_path.as_uri()), Metrics()
    )
    assert buffer.add(record)
    del record
    _Body.freed_on.clear()

    async def flush() -> tuple[int, int]:
        return await buffer.flush(), threading.get_ident()

    written, loop_thread = asyncio.run(flush())
    assert written == 1
    assert len(_Body.freed_on) == 1
    assert _Body.freed_on[0] != loop_thread
    assert buffer._rows == 0
    parts = list(tmp_path.glob("monitoring/capture/model=m/date=*/*.parquet"))
    assert len(parts) == 1
    assert pq.read_table(parts[0]).column("rows").to_pylist() == [1]
