"""The columnar encoder (mlwp.data.columnar_encoder) writes the column path's matrix bit for bit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlwp.data.batch_scoring import _arrow_columns
from mlwp.data.columnar_encoder import ColumnarEncoder, encoder_for
from mlwp.data.transform import run_transform
from mlwp.model.preprocessing import Preprocessing

pytestmark = pytest.mark.unit


def _frame(rows: int = 400, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "id": np.arange(rows),
            "tenure": rng.integers(0, 73, rows),
            "charges": np.round(rng.uniform(18, 120, rows), 2),
            "total": np.round(rng.uniform(0, 9000, rows), 2),
            "plan": rng.choice(["basic", "pro", "team"], rows),
            "region": rng.choice(["north", "south", "east", "west"], rows),
            "senior": rng.integers(0, 2, rows),
            "churn": rng.choice(["No", "Yes"], rows),
        }
    )
    frame.loc[rng.random(rows) < 0.05, "total"] = np.nan
    frame.loc[rng.random(rows) < 0.05, "charges"] = np.nan
    frame.loc[rng.random(rows) < 0.05, "plan"] = None
    frame.loc[rng.random(rows) < 0.05, "region"] = None
    return frame


STEPS: dict[str, list[dict[str, Any]]] = {
    "churn-like": [
        {"op": "drop", "columns": ["id"]},
        {"op": "fill_missing", "columns": ["total"], "strategy": "median"},
        {"op": "onehot", "columns": ["plan", "region"]},
        {"op": "scale", "columns": ["tenure", "charges", "total"]},
    ],
    "ordinal-and-casts": [
        {"op": "select", "columns": ["region", "tenure", "charges", "plan", "senior"]},
        {"op": "ordinal", "columns": ["plan"]},
        {"op": "cast", "columns": {"charges": "int", "senior": "bool", "tenure": "float"}},
        {"op": "onehot", "columns": ["region"]},
    ],
    "text-fill-rename": [
        {"op": "drop", "columns": ["id", "total"]},
        {"op": "fill_missing", "columns": {"plan": "basic", "region": "mode"}},
        {"op": "rename", "columns": {"plan": "tier", "charges": "monthly"}},
        {"op": "onehot", "columns": ["tier", "region"]},
        {"op": "fill_missing", "columns": ["monthly"], "value": -1.0},
    ],
    "steps-after-encoding": [
        {"op": "drop", "columns": ["id"]},
        {"op": "ordinal", "columns": ["region"]},
        {"op": "fill_missing", "columns": ["region"], "value": -1},
        {"op": "scale", "columns": ["region"]},
        {"op": "onehot", "columns": ["plan"]},
        {"op": "scale", "columns": ["plan=pro"]},
        {"op": "select", "columns": ["plan=team", "region", "plan=pro", "tenure", "senior"]},
    ],
}


def _fit(steps: list[dict[str, Any]], target: str | None = "churn") -> Preprocessing:
    preprocessing = run_transform(_frame(), steps).preprocessing
    return preprocessing.with_target(target) if target else preprocessing


def _column_path(preprocessing: Preprocessing, batch: Any) -> np.ndarray[Any, Any]:
    columns = _arrow_columns(preprocessing, batch)
    assert columns is not None
    out = preprocessing.transform_columns(columns)
    return out.matrix(out.names, np.float32)


def _batches(frame: pd.DataFrame) -> list[Any]:
    """The frame as Arrow reads it: text plain, and text as dictionaries (a Parquet read)."""
    import pyarrow as pa

    plain = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    coded = pa.RecordBatch.from_arrays(
        [c.dictionary_encode() if pa.types.is_string(c.type) else c for c in plain.columns],
        names=plain.schema.names,
    )
    return [plain, coded]


def _assert_same(encoder: ColumnarEncoder, preprocessing: Preprocessing, batch: Any) -> None:
    mine = encoder.matrix(batch)
    assert mine is not None
    theirs = _column_path(preprocessing, batch)
    assert mine.dtype == np.float32 and mine.flags.f_contiguous  # column-major, read by strides
    assert mine.shape == theirs.shape
    assert mine.view(np.uint32).tobytes() == theirs.view(np.uint32).tobytes()


@pytest.mark.parametrize("name", sorted(STEPS))
def test_matrix_is_the_column_paths_bit_for_bit(name: str) -> None:
    preprocessing = _fit(STEPS[name])
    encoder = ColumnarEncoder.compile(preprocessing)
    assert encoder is not None, name
    scored = _frame(300, seed=11)  # other rows than the fit's
    scored.loc[0, "plan"] = "enterprise"  # unknown categories: all-zero one-hot, NaN ordinal
    scored.loc[1, "region"] = "mars"
    scored.loc[2, ["plan", "region", "charges", "total"]] = [None, None, np.nan, np.nan]
    for batch in _batches(scored.drop(columns=["churn"])):
        _assert_same(encoder, preprocessing, batch)
    empty = _batches(scored.drop(columns=["churn"]).head(0))[0]
    assert encoder.matrix(empty).shape == (0, len(preprocessing.outputs))  # type: ignore[union-attr]


def test_optional_columns_may_be_absent() -> None:
    # a filled column is optional in a record, so it may be absent from a batch too
    preprocessing = _fit(STEPS["text-fill-rename"])
    optional = [f.name for f in preprocessing.features if not f.required]
    assert {"plan", "charges"} <= set(optional)
    encoder = encoder_for(preprocessing)
    assert encoder is not None and encoder_for(preprocessing) is encoder  # compiled once
    for batch in _batches(_frame(50).drop(columns=["churn", *optional])):
        _assert_same(encoder, preprocessing, batch)


def test_what_it_does_not_cover_is_left_to_the_column_path() -> None:
    import pyarrow as pa

    derived = _fit([{"op": "derive", "column": "per_month", "expression": "total / tenure"}])
    assert ColumnarEncoder.compile(derived) is None
    parsed = _fit(
        [{"op": "drop", "columns": ["plan", "region"]}, {"op": "cast", "columns": {"id": "str"}}]
    )
    assert ColumnarEncoder.compile(parsed) is None  # a number cast to text
    preprocessing = _fit(STEPS["churn-like"])
    encoder = ColumnarEncoder.compile(preprocessing)
    assert encoder is not None
    frame = _frame(20).drop(columns=["churn"])
    # a text feature stored as numbers, or a required column missing: not this encoder's
    frame["plan"] = np.arange(20)
    assert encoder.matrix(pa.RecordBatch.from_pandas(frame, preserve_index=False)) is None
    missing = _frame(20).drop(columns=["churn", "tenure"])
    assert encoder.matrix(pa.RecordBatch.from_pandas(missing, preserve_index=False)) is None
