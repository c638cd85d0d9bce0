"""Captured requests as record rows: how :func:`mlwp.monitoring.capture.read_capture`
(through :func:`~mlwp.monitoring.capture.record_rows`) turns what serving stores (one row
per request: its body as received, its answer as sent,
:func:`~mlwp.monitoring.capture.request_schema`) into the record-level frame readers use
(one row per input record, :func:`~mlwp.monitoring.capture.capture_schema`).

Serving keeps its request path to one append of bytes it already holds (docs/monitoring.md,
"Capture"), so the per-record work happens here, at read time, over whole batches: one
orjson parse of each request and answer, the records' JSON cut out of one dump of them all
(:func:`json_rows`), class indices, positive-class probabilities and the outputs' JSON built
by Arrow and numpy (:func:`outputs_columns`); Python touches each row only to read its entity
key. Anything the fast paths do not fit (a cached answer's prediction that is not one of the
classes as it is, variants with different classes in one batch) is built row by row
(:func:`_outputs_by_row`), with the same result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import pyarrow as pa

_JSON = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class BadCapturedRequest(ValueError):
    """A stored request or answer is not what serving writes (named by inference id)."""


def record_columns(requests: pa.Table) -> dict[str, Any]:
    """The columns of the record rows (``capture_schema()``'s, by name) of stored requests
    (``request_schema()``; at least one), request by request in the table's order, rows in
    each request's order.

    Raises :class:`BadCapturedRequest` naming the inference id of a request whose stored
    body or answer is not JSON of the shapes serving writes, or whose answer does not hold
    one prediction per record."""
    import numpy as np
    import pyarrow as pa

    ids = requests.column("inference_id").to_pylist()
    records_by_request: list[list[Any]] = []
    predictions: list[tuple[Any, ...]] = []
    probabilities: list[bytes | None] = []
    bodies = requests.column("request").to_pylist()
    answers = requests.column("response").to_pylist()
    for inference_id, body, answer in zip(ids, bodies, answers, strict=True):
        records, predicted, probability = _parse(inference_id, body, answer)
        records_by_request.append(records)
        predictions.append(predicted)
        probabilities.append(probability)
    texts = requests.column("classes").to_pylist()
    known = {text: tuple(orjson.loads(text)) for text in set(texts) if text is not None}
    classes = [None if text is None else known[text] for text in texts]

    counts = np.fromiter(map(len, records_by_request), dtype=np.int64, count=len(ids))
    starts = np.cumsum(counts) - counts
    request = pa.array(np.repeat(np.arange(len(ids)), counts))
    records = list(chain.from_iterable(records_by_request))
    fields = requests.column("entity_field").to_pylist()
    prediction, probability, outputs = outputs_columns(predictions, probabilities, classes)

    def per_request(name: str) -> Any:
        return requests.column(name).combine_chunks().take(request)

    return {
        "inference_id": per_request("inference_id"),
        "row": pa.array(np.arange(len(records)) - np.repeat(starts, counts), type=pa.int32()),
        "time": per_request("time"),
        "model": per_request("model"),
        "version": per_request("version"),
        "variant": per_request("variant"),
        "served": per_request("served"),
        "routing_key": per_request("routing_key"),
        "entity_key": _entity_keys(_entity_values(records, fields, counts)),
        "inputs": json_rows(records),
        "prediction": prediction,
        "probability": probability,
        "outputs": outputs,
        "latency_ms": per_request("latency_ms"),
    }


def _parse(
    inference_id: str, body: bytes, answer: bytes
) -> tuple[list[Any], tuple[Any, ...], bytes | None]:
    """A stored request's records, predictions and probabilities (as JSON bytes)."""
    try:
        records = orjson.loads(body)["data"]
        scored = orjson.loads(answer)
        predicted = tuple(scored["predictions"])
        probability = scored.get("probabilities")
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadCapturedRequest(
            f"captured request {inference_id!r}: the stored request or answer is not "
            f"serving's JSON ({exc!r})"
        ) from None
    if not isinstance(records, list) or len(records) != len(predicted):
        raise BadCapturedRequest(
            f"captured request {inference_id!r}: {len(predicted)} prediction(s) for "
            f"{len(records) if isinstance(records, list) else 'no list of'} record(s)"
        )
    return records, predicted, None if probability is None else orjson.dumps(probability)


def _entity_values(records: list[Any], fields: list[str | None], counts: Any) -> list[Any]:
    """Each record's value of its request's entity field (None without one)."""
    if fields.count(fields[0]) == len(fields):  # one field for the whole batch
        if fields[0] is None:
            return [None] * len(records)
        with contextlib.suppress(TypeError):  # a record that is no object: the loop below
            return list(map(dict.get, records, repeat(fields[0])))
        per_row: Any = repeat(fields[0])
    else:
        per_row = chain.from_iterable(map(repeat, fields, counts.tolist()))
    return [
        record.get(field) if field is not None and isinstance(record, dict) else None
        for record, field in zip(records, per_row, strict=False)
    ]


def json_rows(values: list[Any]) -> Any:
    """Each value (a JSON object) as its JSON text, in one Arrow string array.

    One ``orjson.dumps`` of the whole list, then the objects are cut apart where ``},{``
    separates them (numpy finds the places: each ``}``, then the two bytes after it), and
    Arrow strips the separating commas; no Python runs per row. When ``},{`` also occurs
    inside a value (a string holding it, a list of objects), the count of cuts is wrong and
    each value is serialised on its own instead.
    """
    import numpy as np
    import pyarrow as pa

    n = len(values)
    if n == 0:
        return pa.array([], type=pa.string())
    blob = orjson.dumps(values, option=_JSON)
    data = np.frombuffer(blob, dtype=np.uint8)
    ends = np.flatnonzero(data[:-2] == 0x7D)
    cuts = ends[(data[ends + 1] == 0x2C) & (data[ends + 2] == 0x7B)]
    if len(cuts) != n - 1 or len(blob) >= 2**31 or blob[1:2] != b"{":
        return pa.array([orjson.dumps(v, option=_JSON).decode() for v in values], pa.string())
    # object i spans from its "{" to the next object's "{", or to the closing "]"; the comma
    # between two objects becomes a space, which JSON allows after a value
    text = data.copy()
    text[cuts + 1] = 0x20
    offsets = np.concatenate(([1], cuts + 2, [len(blob) - 1])).astype(np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))


def outputs_columns(
    predictions: Sequence[tuple[Any, ...]],
    probabilities: Sequence[bytes | None],
    classes: Sequence[tuple[Any, ...] | None],
) -> tuple[Any, Any, Any]:
    """The ``prediction``, ``probability`` and ``outputs`` columns of a batch of requests:
    per request its predictions, its probabilities as JSON bytes (None without them) and its
    model's classes (None for a regression).

    The common cases, every request of a classifier with the same classes and its
    probabilities (:func:`_class_outputs`) or every request of a regression
    (:func:`_regression_outputs`), are built without Python per row. Anything else (a
    cached answer's prediction that is not one of the classes as it is, variants with
    different classes in one batch) takes :func:`_outputs_by_row`.
    """
    flat = list(chain.from_iterable(predictions))
    first = classes[0]
    columns = None
    if classes.count(first) == len(classes):
        if not first and probabilities.count(None) == len(probabilities):
            columns = _regression_outputs(flat)
        elif first and None not in probabilities:
            columns = _class_outputs(flat, b"".join(probabilities), first)  # type: ignore[arg-type]
    return columns or _outputs_by_row(predictions, probabilities, classes)


def _class_outputs(
    predictions: list[Any], probabilities: bytes, classes: tuple[Any, ...]
) -> tuple[Any, Any, Any] | None:
    """A classifier's columns: class indices by Arrow's ``index_in``, each row's
    ``probabilities`` text cut out of the requests' JSON bytes (:func:`_list_rows`), the
    positive-class probability of a binary classifier parsed by Arrow
    (:func:`_last_numbers`), the outputs' JSON joined by Arrow from the classes' JSON and
    those texts. None when the values are not what that needs."""
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = _list_rows(probabilities, len(predictions))
    if texts is None:
        return None
    try:
        index = pc.index_in(pa.array(predictions), value_set=pa.array(classes))
    except (pa.ArrowException, TypeError, ValueError):  # types Arrow does not compare
        return None
    if index.null_count:
        return None
    probability = pa.nulls(len(predictions), type=pa.float64())
    if len(classes) == 2:
        probability = _last_numbers(texts)
        if probability is None:
            return None
    class_json = pa.array([orjson.dumps(k, option=_JSON).decode() for k in classes])
    outputs = pc.binary_join_element_wise(
        '{"prediction":', class_json.take(index), ',"probabilities":', texts, "}", ""
    )
    return index.cast(pa.float64()), probability, outputs


def _regression_outputs(predictions: list[Any]) -> tuple[Any, Any, Any] | None:
    """A regression's columns: the values as float64, their JSON cut out of one orjson
    dump of them (numbers hold no commas), no probabilities. None when a value is not a
    number."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        values = pa.array(predictions, type=pa.float64())
    except (pa.ArrowException, TypeError, ValueError):
        return None
    if values.null_count:
        return None
    blob = orjson.dumps(predictions, option=_JSON)
    data = np.frombuffer(blob, dtype=np.uint8)
    commas = np.flatnonzero(data == 0x2C)
    if len(commas) != len(predictions) - 1:
        return None
    starts = np.concatenate(([1], commas + 1))
    ends = np.concatenate((commas, [len(blob) - 1]))
    outputs = pc.binary_join_element_wise(
        '{"prediction":', _spans(data, starts, ends), ',"probabilities":null}', ""
    )
    return values, pa.nulls(len(predictions), type=pa.float64()), outputs


def _list_rows(blob: bytes, rows: int) -> Any:
    """The JSON text of each inner list of a run of ``[[...],[...]]`` documents of numbers
    (the requests' probabilities, concatenated) as an Arrow string array; None when the
    bytes do not hold ``rows`` such lists.

    Only brackets matter in lists of numbers, so numpy finds them (few per row), a running
    sum gives each one's depth, and the inner lists are the spans from a ``[`` that opens
    depth 2 to the ``]`` that closes it."""
    import numpy as np

    data = np.frombuffer(blob, dtype=np.uint8)
    brackets = np.flatnonzero((data == 0x5B) | (data == 0x5D))
    opening = data[brackets] == 0x5B
    depth = np.cumsum(np.where(opening, 1, -1))
    starts = brackets[opening & (depth == 2)]
    ends = brackets[~opening & (depth == 1)] + 1
    if len(starts) != rows or len(ends) != rows or len(blob) >= 2**31:
        return None
    return _spans(data, starts, ends)


def _last_numbers(texts: Any) -> Any:
    """The last number of each two-number JSON list in ``texts`` (made by :func:`_spans`)
    as a float64 array, parsed by Arrow; None when a list is not two numbers."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    text = np.frombuffer(texts.buffers()[2], dtype=np.uint8)
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int32)[: len(texts) + 1]
    commas = np.flatnonzero(text == 0x2C)
    rows = len(texts)
    # one comma inside each list: [a,b]
    if len(commas) != rows or not (
        (commas > offsets[:-1]).all() and (commas < offsets[1:] - 1).all()
    ):
        return None
    numbers = _spans(text, commas + 1, offsets[1:] - 1)
    try:
        return pc.cast(numbers, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # null, or not a number
        return None


def _spans(data: Any, starts: Any, ends: Any) -> Any:
    """The byte ranges ``[starts[i], ends[i])`` of ``data`` as an Arrow string array (one
    gather by numpy)."""
    import numpy as np
    import pyarrow as pa

    lengths = ends - starts
    offsets = np.zeros(len(starts) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    # byte j of span i comes from starts[i] + j
    gather = np.arange(int(offsets[-1])) + np.repeat(starts - offsets[:-1], lengths)
    return pa.StringArray.from_buffers(
        len(starts), pa.py_buffer(offsets), pa.py_buffer(data[gather])
    )


def _outputs_by_row(
    predictions: Sequence[tuple[Any, ...]],
    probabilities: Sequence[bytes | None],
    classes: Sequence[tuple[Any, ...] | None],
) -> tuple[Any, Any, Any]:
    """The three columns built row by row in Python, for any mix of requests."""
    import pyarrow as pa

    numbers: list[float | None] = []
    positive: list[float | None] = []
    outputs: list[dict[str, Any]] = []
    for predicted, blob, known in zip(predictions, probabilities, classes, strict=True):
        rows = orjson.loads(blob) if blob is not None else [None] * len(predicted)
        numbers += _numbers(predicted, known)
        binary = known is not None and len(known) == 2
        positive += [q[1] if binary and q is not None else None for q in rows]
        outputs += [
            {"prediction": p, "probabilities": q} for p, q in zip(predicted, rows, strict=True)
        ]
    return (
        pa.array(numbers, type=pa.float64()),
        pa.array(positive, type=pa.float64()),
        json_rows(outputs),
    )


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

    if values.count(None) == len(values):
        return pa.nulls(len(values), type=pa.string())
    with contextlib.suppress(pa.ArrowTypeError, pa.ArrowInvalid):  # not all strings
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
