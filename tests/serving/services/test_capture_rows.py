"""The capture buffer's request parts and their record rows: what a buffered request holds
(bytes, nothing for the garbage collector), the request-level table the writer stores, and
how readers take it apart (JSON per row without Python per row, its fallbacks, class
indices, entity keys). No service needed."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from mlwp.monitoring import capture_rows
from mlwp.monitoring.capture import (
    MonitoringError,
    capture_schema,
    compact_capture,
    read_capture,
    read_spool,
    record_rows,
    request_schema,
)
from mlwp.monitoring.capture_rows import json_rows
from serving.core.config import ServingSettings
from serving.core.metrics import Metrics
from serving.services.capture import (
    AREA_BYTES,
    BATCH_CHUNKS,
    FIELDS,
    Area,
    CaptureBuffer,
    Captured,
)

pytestmark = pytest.mark.unit

# a record whose request fills a quarter of an area: four to a chunk
BIG = {"x": 1, "pad": "p" * (AREA_BYTES // 4 - 64)}
COMMON = {"time_ms": 1_764_000_000_000, "model": "m", "routing_key": None, "latency_ms": 1.0}
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def buffer_of(tmp_path: Path, *requests: Captured) -> CaptureBuffer:
    # the test's own storage: the session's (MLWP_HOME's, from the environment) is shared by
    # the tests of every worker, whose stored() folders would then hold each other's parts
    settings = ServingSettings(
        home=tmp_path,
        storage_root=(tmp_path / "storage").as_uri(),
        entity_fields={"m": "customer"},
    )
    buffer = CaptureBuffer(settings, Metrics())
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


def stored(buffer: CaptureBuffer) -> pa.Table:
    """The current chunk as the writer stores it (a spool part, in a folder of its own),
    read back; the buffer keeps it."""
    root = Path(buffer.root.removeprefix("file://")) / f"stored-{next(_STORED)}"
    buffer.root, buffer._spool = root.as_uri(), None
    assert buffer._write_parts([buffer._chunk]) == sum(buffer._chunk.items[7::FIELDS])
    parts = sorted(root.glob("monitoring/capture/model=*/date=*/*.spool"))
    return pa.concat_tables(read_spool(f"file://{part}") for part in parts)


_STORED = itertools.count()


def rows_of(buffer: CaptureBuffer) -> list[dict[str, Any]]:
    table = stored(buffer)
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
    table = stored(buffer).to_pylist()
    assert [r["request"] for r in table] == [served.request, shadow.request]  # as received
    assert [r["response"] for r in table] == [served.response, shadow.response]  # as sent
    assert [r["classes"] for r in table] == ['["No","Yes"]', "[0,1]"]
    assert [r["entity_field"] for r in table] == ["customer", "customer"]
    assert [r["rows"] for r in table] == [2, 1]

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
    """A buffered request is its values (strings and numbers) appended to the chunk's one
    flat list: no object per request that outlives it, so buffering leaves the garbage
    collector's count of young objects where it was, and nothing per request or per row
    for it to walk (why: the module's docstring)."""
    first = request(1, ["Yes", "No"], [[0.2, 0.8], [0.9, 0.1]], ["No", "Yes"])
    second = request(2, ["Yes"], [[0.2, 0.8]], ["No", "Yes"])
    buffer = buffer_of(tmp_path, first)
    gc.disable()  # the young generation's count is read, no collection resets it
    try:
        young = gc.get_count()[0]
        assert buffer.add(second)
        assert gc.get_count()[0] <= young
    finally:
        gc.enable()
    items = buffer._chunk.items
    assert len(items) == 2 * FIELDS
    assert not any(gc.is_tracked(value) for value in items)


class _Body(bytes):
    """A request body that notes when it is freed."""

    freed: list[int] = []

    def __del__(self) -> None:
        _Body.freed.append(threading.get_ident())


def test_bodies_are_copied_into_reused_areas_and_not_held(tmp_path: Path) -> None:
    """The buffer keeps no body: it copies each into its chunk's areas, so the request's
    bytes are freed when the request is done, on the event loop's thread, where the next
    request's allocations reuse that memory; the writer writes the areas as they are and
    gives them back for the next chunks (why: the module's docstring)."""
    record = captured("r1", [{"x": 1, "customer": "c1"}], ["Yes"], [[0.2, 0.8]], ["No", "Yes"])
    body = record.request
    record.request = _Body(body)
    buffer = CaptureBuffer(
        ServingSettings(home=tmp_path, storage_root=tmp_path.as_uri()), Metrics()
    )
    _Body.freed.clear()
    assert buffer.add(record)
    del record
    assert _Body.freed == [threading.get_ident()]  # not held by the buffer
    areas = (buffer._chunk.requests, buffer._chunk.responses)

    async def flush() -> int:
        return await buffer.flush()

    assert asyncio.run(flush()) == 1
    assert buffer._rows == 0
    assert list(buffer._free) == list(areas) and all(area.tell() == 0 for area in areas)
    parts = list(tmp_path.glob("monitoring/capture/model=m/date=*/*.spool"))
    assert len(parts) == 1
    table = read_spool(f"file://{parts[0]}")
    assert table.column("rows").to_pylist() == [1]
    assert table.column("request").to_pylist() == [body]
    # the next chunk reuses the areas; an answer larger than an area gets one of its own
    large = captured("r2", [{"x": 1}], ["y" * AREA_BYTES], [[0.9, 0.1]], ["No", "Yes"])
    assert buffer.add(large)
    chunk = buffer._chunk
    assert any(chunk.requests is a for a in areas) and len(chunk.responses) > AREA_BYTES
    assert asyncio.run(flush()) == 1
    assert len(buffer._free) == 2  # the large area is not kept


@pytest.mark.parametrize("codec", ["auto", "lz4_raw", "zstd", "none"])
def test_bodies_of_every_size_are_copied_and_stored_in_order(tmp_path: Path, codec: str) -> None:
    """Small and large request bodies alike are copied into the chunk's area, none held
    (the large ones were held in session 13: by CPU time that cost the loop more than
    their copy, docs/history/capture.md, "Session 14"); the part reads back as the requests
    in their order, and compacts. The default codec ("auto") stores a local root's bodies
    uncompressed."""
    many = [{"x": i, "customer": f"c{i}", "plan": "Month-to-month" * 4} for i in range(600)]
    sizes = (1, 600, 600, 2, 600, 1)
    requests = [
        captured(f"r{n}", many[:rows], ["No"] * rows, [[0.9, 0.1]] * rows, ["No", "Yes"])
        for n, rows in enumerate(sizes)
    ]
    settings = ServingSettings(
        home=tmp_path, storage_root=tmp_path.as_uri(), capture_spool_codec=codec
    )
    buffer = CaptureBuffer(settings, Metrics())
    for request in requests:
        assert buffer.add(request)
    chunk = buffer._chunk
    assert chunk is not None
    assert chunk.requests.tell() == sum(len(r.request) for r in requests)
    assert asyncio.run(buffer.flush()) == sum(sizes)
    [part] = tmp_path.glob("monitoring/capture/model=m/date=*/*.spool")
    stored = part.read_bytes()
    assert (requests[1].request in stored) == (codec in {"auto", "none"})  # as it came
    table = read_spool(f"file://{part}")
    assert table.column("request").to_pylist() == [r.request for r in requests]
    assert table.column("response").to_pylist() == [r.response for r in requests]
    before = read_capture(tmp_path.as_uri(), "m")
    assert list(before["row"]) == [i for rows in sizes for i in range(rows)]
    assert compact_capture(tmp_path.as_uri(), "m")["requests"] == len(sizes)
    after = read_capture(tmp_path.as_uri(), "m")
    assert after.equals(before)


def test_a_chunk_of_two_models_and_two_days_is_spooled_by_model_and_day(
    tmp_path: Path,
) -> None:
    """One chunk holds whatever arrived: each model's requests of each day become a spool
    part of their own (the path names both), each with its own bodies; the route's
    ``put`` buffers what ``add`` does."""
    day = 86_400_000
    first = captured("a", [{"x": 1}], ["Yes"], [[0.2, 0.8]], ["No", "Yes"])
    other = dataclasses.replace(
        captured("b", [{"x": 2}, {"x": 3}], ["No", "No"], [[0.9, 0.1]] * 2, ["No", "Yes"]),
        model="n",
    )
    late = dataclasses.replace(
        captured("c", [{"x": 4}], ["Yes"], [[0.1, 0.9]], ["No", "Yes"]),
        time_ms=COMMON["time_ms"] + day,
    )
    buffer = CaptureBuffer(
        ServingSettings(home=tmp_path, storage_root=tmp_path.as_uri()), Metrics()
    )
    assert buffer.add(first) and buffer.add(other)
    assert buffer.put(
        late.inference_id,
        late.time_ms,
        late.model,
        late.version,
        late.variant,
        late.served,
        late.routing_key,
        late.rows,
        late.request,
        late.response,
        '["No","Yes"]',
        late.latency_ms,
    )
    items = buffer._chunk.items
    assert items[2 * FIELDS + 10] == items[10]  # the same JSON
    assert asyncio.run(buffer.flush()) == 4
    parts = sorted(tmp_path.glob("monitoring/capture/model=*/date=*/*.spool"))
    assert [(p.parent.parent.name, p.parent.name) for p in parts] == [
        ("model=m", "date=2025-11-24"),
        ("model=m", "date=2025-11-25"),
        ("model=n", "date=2025-11-24"),
    ]
    stored = [read_spool(f"file://{part}").to_pylist() for part in parts]
    assert [[r["inference_id"] for r in part] for part in stored] == [["a"], ["c"], ["b"]]
    assert [part[0]["request"] for part in stored] == [first.request, late.request, other.request]
    assert [part[0]["response"] for part in stored] == [
        first.response,
        late.response,
        other.response,
    ]


def _counted(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


@pytest.mark.parametrize("where", ["import", "taking_apart", "second_chunk"])
def test_a_write_failing_outside_a_part_counts_every_row_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Rows are counted written or dropped, never neither: a failure outside one part's
    write (an import, a chunk the writer cannot take apart) drops the rows not counted yet
    as ``write_failed``, so written plus dropped is the rows captured."""
    from serving.services import capture as service

    buffer = buffer_of(tmp_path)
    big = BIG  # a few of these fill a chunk's area
    for number in range(6):
        assert buffer.add(captured(f"r{number}", [big, big], ["Yes", "No"], None, ["No", "Yes"]))
    assert len(buffer._pending) >= 1
    if where == "import":
        monkeypatch.setitem(sys.modules, "mlwp.monitoring.capture", None)
    else:
        real = service._parts
        calls = []

        def parts(chunk: Any) -> Any:
            calls.append(chunk)
            if where == "taking_apart" or len(calls) > 1:
                raise RuntimeError("unexpected")
            return real(chunk)

        monkeypatch.setattr(service, "_parts", parts)

    async def flush() -> int:
        return await buffer.flush()

    written = asyncio.run(flush())
    metrics = buffer.metrics
    stored = _counted(metrics, "mlwp_serving_capture_written_total", model="m")
    dropped = _counted(
        metrics, "mlwp_serving_capture_dropped_total", model="m", reason="write_failed"
    )
    assert stored == written and stored + dropped == 12
    assert (stored > 0) == (where == "second_chunk")
    assert buffer._rows == 0 and len(buffer._free) >= 2  # the areas given back all the same


def test_the_free_areas_a_burst_left_are_let_go(tmp_path: Path) -> None:
    """A burst while storage was slow leaves the pool a full buffer's worth of areas; those
    no chunk took for a minute (AREA_IDLE_SECONDS, not a flush interval: a lull between
    bursts keeps them) are unmapped (but two), by the writer after a write or by an idle
    flush, never on the request path."""
    buffer = buffer_of(tmp_path)
    big = BIG
    for number in range(24):  # ~6 chunks, ~12 areas
        assert buffer.add(captured(f"r{number}", [big], ["Yes"], None, ["No", "Yes"]))

    async def flush() -> int:
        return await buffer.flush()

    assert asyncio.run(flush()) == 24
    burst = list(buffer._free)
    assert len(burst) >= 10  # kept: given back just now
    assert asyncio.run(flush()) == 0
    buffer.flush_seconds = 0.0  # flush intervals pass: the pool is kept all the same
    assert asyncio.run(flush()) == 0
    assert len(buffer._free) == len(burst)  # still within the minute
    buffer.area_idle_seconds = 0.0  # the minute passed
    assert buffer.add(captured("r", [{"x": 1}], ["Yes"], None, ["No", "Yes"]))
    taken = buffer._chunk
    assert asyncio.run(flush()) == 1  # the writer trims: its chunk's two areas are newest
    assert len(buffer._free) == 2 and {id(a) for a in buffer._free} == {
        id(taken.requests),
        id(taken.responses),
    }
    assert all(area.closed for area in burst if area not in (taken.requests, taken.responses))
    buffer._free.extendleft(Area(AREA_BYTES) for _ in range(3))  # given back long ago
    assert asyncio.run(flush()) == 0  # an idle flush (nothing pending) trims as well
    assert len(buffer._free) == 2


def test_a_response_the_area_has_no_room_for_moves_its_request_to_the_next_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``put`` asks no area for its room: a body that does not fit raises in the map's
    write and the chunk is replaced. When the request went in and its response does not,
    the request is taken out again, and both go into the next chunk: every request's
    bodies lie in one chunk, and the parts read back as the requests, in order."""
    from serving.services import capture as serving_capture

    monkeypatch.setattr(serving_capture, "AREA_BYTES", 1024)
    settings = ServingSettings(home=tmp_path, storage_root=tmp_path.as_uri())
    buffer = CaptureBuffer(settings, Metrics())
    requests = [
        dataclasses.replace(
            captured(f"r{n}", [{"x": n}], ["No"], [[0.9, 0.1]], ["No", "Yes"]),
            request=bytes([65 + n]) * 300,
            response=bytes([97 + n]) * size,
        )
        for n, size in enumerate((600, 600, 100, 2000))  # the second's answer: no room left
    ]
    assert buffer.add(requests[0])
    first = buffer._chunk
    assert first is not None
    assert buffer.add(requests[1])
    assert buffer._chunk is not first and buffer._pending == [first]
    assert first.requests.tell() == 300  # the second request taken out again
    for request in requests[2:]:
        assert buffer.add(request)
    assert asyncio.run(buffer.flush()) == len(requests)
    parts = tmp_path.glob("monitoring/capture/model=m/date=*/*.spool")
    table = pa.concat_tables(read_spool(f"file://{part}") for part in parts)
    by_id = dict(zip(table["inference_id"].to_pylist(), table.to_pylist(), strict=True))
    for request in requests:
        assert by_id[request.inference_id]["request"] == request.request
        assert by_id[request.inference_id]["response"] == request.response


def test_full_chunks_make_a_batch_whatever_their_rows(tmp_path: Path) -> None:
    """Large requests fill areas long before the batch's rows wait: BATCH_CHUNKS full
    chunks wake the writer (a batch bounded in bytes), fewer do not."""
    buffer = buffer_of(tmp_path)
    buffer._wake = asyncio.Event()
    big = BIG  # four to an area
    for number in range(4 * BATCH_CHUNKS):
        assert buffer.add(captured(f"r{number}", [big], ["Yes"], None, ["No", "Yes"]))
    assert len(buffer._pending) == BATCH_CHUNKS - 1 and not buffer._wake.is_set()
    assert buffer._rows < buffer.batch_rows
    assert buffer.add(captured("last", [big], ["Yes"], None, ["No", "Yes"]))  # a new chunk
    assert len(buffer._pending) == BATCH_CHUNKS and buffer._wake.is_set()


def test_put_drops_past_the_buffer_and_wakes_the_writer_at_a_batch(tmp_path: Path) -> None:
    """``put``'s one compare: below both bounds nothing else is asked; at the batch's rows
    the writer is woken; past the buffer's rows a request is dropped and counted."""
    settings = ServingSettings(
        home=tmp_path,
        storage_root=tmp_path.as_uri(),
        capture_buffer_rows=5,
        capture_batch_rows=3,
    )
    metrics = Metrics()
    buffer = CaptureBuffer(settings, metrics)
    buffer._wake = asyncio.Event()
    one = captured("r", [{"x": 1}, {"x": 2}], ["No", "No"], [[0.9, 0.1]] * 2, ["No", "Yes"])
    assert buffer.add(one)
    assert not buffer._wake.is_set()
    assert buffer.add(one)  # 4 rows: a batch waits
    assert buffer._wake.is_set()
    assert not buffer.add(one)  # 6 > 5: dropped
    assert buffer._rows == 4
    dropped = _counted(
        metrics, "mlwp_serving_capture_dropped_total", model="m", reason="buffer_full"
    )
    assert dropped == 2


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux's /proc shows maps")
def test_areas_are_private_maps_advised_huge_pages() -> None:
    """An area is a private anonymous map advised ``MADV_HUGEPAGE``: Python's default, a
    shared one, is shmem, which never takes huge pages and whose 4 KiB pages the writer's
    direct writes pin one by one (twice the writer's CPU per 100-row request, session 20).
    Read from the kernel's own account of the process's maps."""
    import ctypes
    import mmap

    area = Area(AREA_BYTES)
    try:
        start = ctypes.addressof(ctypes.c_char.from_buffer(area))
        flags = _map_flags(start)
        assert "sh" not in flags  # private
        if hasattr(mmap, "MADV_HUGEPAGE") and _thp_offered():
            assert "hg" in flags  # advised huge pages
    finally:
        area.close()


def _map_flags(address: int) -> list[str]:
    """The ``VmFlags`` of the map holding ``address``, from /proc/self/smaps."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and ":" not in head:  # a map's first line: its address range
            low, high = (int(end, 16) for end in head.split("-"))
            inside = low <= address < high
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no map holds {address:#x}")


def _thp_offered() -> bool:
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return setting.exists() and "[never]" not in setting.read_text()
