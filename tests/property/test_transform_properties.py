"""Hypothesis properties of the transform: rows are never lost by non-filter steps, and the
fitted preprocessing gives, at serving time (records, numpy only), exactly the rows the
transform produced at training time (DataFrame)."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlwp.data.transform import run_transform
from mlwp.model.record_encoder import Fallback

pytestmark = [pytest.mark.property, pytest.mark.slow]

CATEGORIES = ["a", "b", "c", "d e", "f<g"]


@st.composite
def datasets(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(min_value=1, max_value=40))
    finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
    x = draw(st.lists(st.one_of(finite, st.just(math.nan)), min_size=n, max_size=n))
    k = draw(st.lists(st.integers(min_value=-5, max_value=50), min_size=n, max_size=n))
    color = draw(
        st.lists(st.one_of(st.sampled_from(CATEGORIES), st.none()), min_size=n, max_size=n)
    )
    label = draw(st.lists(st.sampled_from(["yes", "no"]), min_size=n, max_size=n))
    return pd.DataFrame(
        {
            "x": pd.Series(x, dtype="float64"),
            "k": pd.Series(k, dtype="int64"),
            "color": pd.Series(color, dtype="str"),
            "label": pd.Series(label, dtype="str"),
        }
    )


FEATURE_STEPS = [
    {"op": "fill_missing", "columns": ["x"], "strategy": "median"},
    {"op": "fill_missing", "columns": {"color": "mode"}},
    {"op": "onehot", "columns": ["color"]},
    {"op": "ordinal", "columns": {"label": ["no", "yes"]}},
    {"op": "scale", "columns": ["k"]},
    {"op": "derive", "column": "xk", "expression": "x * k - k / (abs(x) + 1)"},
    {"op": "cast", "columns": {"k": "int"}},
    {"op": "rename", "columns": {"x": "x2"}},
]


@st.composite
def step_lists(draw: st.DrawFn) -> list[dict]:
    chosen = draw(st.lists(st.sampled_from(range(len(FEATURE_STEPS))), unique=True, max_size=6))
    steps = [FEATURE_STEPS[i] for i in sorted(chosen)]
    # rename must stay last: later steps name the original column
    steps = [s for s in steps if s["op"] != "rename"] + [s for s in steps if s["op"] == "rename"]
    if draw(st.booleans()):
        split = {
            "op": "split",
            "test_size": draw(st.sampled_from([0.0, 0.2, 0.5])),
            "validation_size": draw(st.sampled_from([0.0, 0.1, 0.3])),
            "seed": draw(st.integers(0, 10)),
        }
        if draw(st.booleans()):
            split["stratify"] = "label"
        steps.insert(draw(st.integers(0, len(steps))), split)
    return steps


SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(frame=datasets(), steps=step_lists())
def test_no_row_is_lost_without_filters(frame: pd.DataFrame, steps: list[dict]) -> None:
    result = run_transform(frame, steps)
    assert result.rows_filtered == 0
    assert sum(len(split) for split in result.splits.values()) == len(frame)
    for name, split in result.splits.items():
        assert len(result.features(name)) == len(split)


@SETTINGS
@given(frame=datasets(), steps=step_lists())
def test_serving_reproduces_training_rows(frame: pd.DataFrame, steps: list[dict]) -> None:
    steps = (
        [*steps, {"op": "onehot", "columns": ["color"]}]
        if not any(s["op"] == "onehot" for s in steps)
        else steps
    )
    result = run_transform(frame, steps)
    target = "label"
    pre = result.preprocessing.with_target(target)
    for name, split in result.splits.items():
        expected = result.features(name).drop(columns=target).to_numpy(dtype=np.float64)
        from_frame = pre.transform_frame(split)
        from_records = pre.transform_records(split.to_dict(orient="records"))
        assert np.array_equal(from_frame, expected, equal_nan=True)
        assert np.array_equal(from_records, expected, equal_nan=True)
        # the record-by-record encoder (serving's small batches), on the records as a JSON
        # request carries them, gives the same rows
        encoder = pre.record_encoder
        assert (encoder is None) == any(s["op"] == "derive" for s in steps)
        if encoder is not None:
            request = orjson.loads(
                orjson.dumps(split.to_dict(orient="records"), option=orjson.OPT_SERIALIZE_NUMPY)
            )
            assert np.array_equal(encoder.encode(request), expected, equal_nan=True)
            assert np.array_equal(encoder.encode_batch(request), expected, equal_nan=True)


@SETTINGS
@given(frame=datasets(), threshold=st.integers(-5, 50))
def test_filter_keeps_exactly_the_matching_rows(frame: pd.DataFrame, threshold: int) -> None:
    result = run_transform(frame, [{"op": "filter", "expression": f"k >= {threshold}"}])
    assert result.splits["train"].k.tolist() == frame.k[frame.k >= threshold].tolist()


@st.composite
def raw_records(draw: st.DrawFn) -> dict:
    """A record as a JSON request may carry it: ints and floats (NaN, infinities, -0.0)
    for numbers, None, unknown and empty categories, optional fields left out."""
    number = st.one_of(
        st.none(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(2**70), max_value=2**70),
    )
    record = {
        "x": draw(number),
        "k": draw(number),
        "color": draw(st.one_of(st.none(), st.sampled_from([*CATEGORIES, "zzz", ""]))),
    }
    for optional in ("x", "color"):  # both filled by a fill_missing step
        if draw(st.booleans()):
            del record[optional]
    return record


@SETTINGS
@given(frame=datasets(), records=st.lists(raw_records(), max_size=40))
def test_record_encoder_equals_the_column_path_bit_for_bit(
    frame: pd.DataFrame, records: list[dict]
) -> None:

    steps = [s for s in FEATURE_STEPS if s["op"] not in ("derive", "rename")]
    pre = run_transform(frame, steps).preprocessing.with_target("label")
    encoder = pre.record_encoder
    assert encoder is not None
    columns = pre.transform_records_by_column(records)
    for encoded in (encoder.encode(records), encoder.encode_batch(records)):
        assert encoded.dtype == columns.dtype == np.float64
        assert encoded.shape == columns.shape == (len(records), len(pre.outputs))
        assert encoded.tobytes() == columns.tobytes()


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    """A request body as a client may write it: numbers as any JSON number literal (ints
    past 64 bits, exponents, -0), texts with escapes, nulls, unknown fields, fields left
    out, and now and then a value the usual path refuses or reads otherwise (a boolean or a
    text for a number, a number for a text, invalid UTF-8, a lone surrogate, something
    that is not a record)."""
    number = st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.builds(
            "{}.{}e{}".format,
            st.integers(0, 10**20),
            st.integers(0, 10**20),
            st.integers(-330, 310),
        ),
        st.sampled_from(["-0", "-0.0", "1E2", "0.1", "null"]),
    )
    text = st.one_of(
        # categories as they are and written with escapes ("a", "d e"), unknown texts
        st.sampled_from(
            [*CATEGORIES, "\\u0061", "d\\u0020e", "zzz", "", "caf\\u00e9", "caf\u00e9"]
        ).map('"{}"'.format),
        st.just("null"),
    )
    # INVALID stands for a byte that is no UTF-8
    odd = st.sampled_from(
        ["1e400", "true", '"1"', "1", '"\\ud800"', '"INVALID"', "[]", "01", '"\\q"', "1."]
    )

    def rarely_odd(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.integers(0, 15).flatmap(lambda i: odd if i == 0 else values)

    records = []
    for _ in range(draw(st.integers(0, 12))):
        fields = {"x": draw(rarely_odd(number)), "k": draw(rarely_odd(number))}
        fields["color"] = draw(rarely_odd(text))
        if draw(st.integers(0, 9)) == 0:
            fields["unknown"] = draw(st.one_of(number, text, odd, st.just('{"a": [1, null]}')))
        kept = [name for name in fields if draw(st.integers(0, 15)) > 0]
        record = "{" + ", ".join(f'"{name}": {fields[name]}' for name in kept) + "}"
        records.append(record if draw(st.integers(0, 40)) > 0 else draw(number))
    key = draw(st.one_of(number, text, odd))
    body = '{"data": [' + ", ".join(records) + '], "key": ' + key + "}"
    return body.encode().replace(b"INVALID", b"\xff")


@SETTINGS
@given(frame=datasets(), body=json_bodies(), chosen=st.sets(st.integers(0, 6)))
def test_json_records_equal_parsed_records_bit_for_bit(
    frame: pd.DataFrame, body: bytes, chosen: set[int]
) -> None:
    """Serving's JSON decoder takes a body only when its matrix is the usual path's (orjson,
    then transform_records), bit for bit, and reads the extra field as orjson does."""
    steps = [s for s in FEATURE_STEPS if s["op"] not in ("derive", "rename")]
    steps = [step for index, step in enumerate(steps) if index in chosen or index == 2]
    pre = run_transform(frame, steps).preprocessing.with_target("label")
    decoder = pre.json_records
    assert decoder is not None
    try:
        records, (key,) = decoder.decode(body, "data", ("key",))
    except Fallback:
        return
    payload = orjson.loads(body)  # what the decoder took, orjson takes
    expected = pre.transform_records(payload["data"])
    encoded = decoder.matrix(records)
    assert encoded.dtype == expected.dtype == np.float64
    assert encoded.shape == expected.shape
    assert encoded.tobytes() == expected.tobytes()
    assert key == payload.get("key")
