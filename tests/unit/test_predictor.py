"""DensePredictor gives the booster's own predictions, bit for bit, from any thread."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import xgboost

from mlwp.model.columns import _columns_checked, columns_from_records
from mlwp.model.features import Feature
from mlwp.model.predictor import DensePredictor


def booster(objective: str, classes: int = 1) -> tuple[xgboost.Booster, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 6))
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values take the default branches
    y = (
        rng.integers(0, classes, size=300)
        if classes > 1
        else (x[:, 0] > 0).astype(float)
        if objective == "binary:logistic"
        else rng.normal(size=300)
    )
    params = {"objective": objective, "max_depth": 4, "nthread": 1, "seed": 1}
    if classes > 1:
        params["num_class"] = classes
    return xgboost.train(params, xgboost.DMatrix(x, label=y), num_boost_round=20), x


@pytest.mark.parametrize(
    ("objective", "classes"),
    [("binary:logistic", 1), ("multi:softprob", 3), ("reg:squarederror", 1)],
)
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_same_output_as_inplace_predict(objective: str, classes: int, rows: int) -> None:
    model, x = booster(objective, classes)
    matrix = x[:rows]
    expected = model.inplace_predict(matrix)
    got = DensePredictor(model).predict(matrix)
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_column_major_matrix_is_read_through_its_strides(rows: int) -> None:
    """The columnar encoder's Fortran-ordered float32 block: the same predictions as the
    C-ordered copy, without the copy."""
    model, x = booster("multi:softprob", 3)
    columns = np.asfortranarray(x[:rows], dtype=np.float32)
    assert columns.flags.f_contiguous
    expected = model.inplace_predict(np.ascontiguousarray(columns))
    assert np.array_equal(DensePredictor(model).predict(columns), expected)
    every_other = columns[::2]  # neither C- nor Fortran-contiguous: read by its strides too
    assert np.array_equal(
        DensePredictor(model).predict(every_other),
        model.inplace_predict(np.ascontiguousarray(every_other)),
    )
    first_rows = columns[: (rows + 1) // 2]  # a column-major block's first rows (a view)
    assert np.array_equal(
        DensePredictor(model).predict(first_rows),
        model.inplace_predict(np.ascontiguousarray(first_rows)),
    )


def test_threads_do_not_mix_their_inputs() -> None:
    model, x = booster("binary:logistic")
    predictor = DensePredictor(model)
    expected = [model.inplace_predict(x[i : i + 1]) for i in range(len(x))]

    def one(i: int) -> bool:
        return bool(np.array_equal(predictor.predict(x[i : i + 1]), expected[i]))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(one, list(range(len(x))) * 5))


def test_falls_back_to_the_public_call_without_the_c_entry_point() -> None:
    model, x = booster("binary:logistic")
    predictor = DensePredictor(model)
    predictor._entry = None
    assert np.array_equal(predictor.predict(x[:5]), model.inplace_predict(x[:5]))


FEATURES = [
    Feature("tenure", "int"),
    Feature("charges", "float", required=False),
    Feature("senior", "bool"),
    Feature("contract", "str"),
]


@pytest.mark.parametrize(
    "records",
    [
        [{"tenure": 3, "charges": 10.5, "senior": True, "contract": "One year"}],
        [
            {"tenure": 3, "senior": False, "contract": None},
            {"tenure": 4.0, "charges": None, "senior": None, "contract": "x", "extra": 1},
        ],
        # values only the value-by-value path accepts: 0/1 booleans, NaN text
        [{"tenure": np.int64(2), "charges": 1, "senior": 1, "contract": float("nan")}],
    ],
)
def test_one_pass_columns_equal_the_checked_ones(records: list[dict[str, object]]) -> None:
    fast = columns_from_records(records, FEATURES)
    checked = _columns_checked(records, FEATURES)
    assert fast.names == checked.names and fast.size == checked.size
    for name in fast.names:
        a, b = fast.data[name], checked.data[name]
        assert a.dtype == b.dtype
        if a.dtype == object:
            assert a.tolist() == b.tolist()
        else:
            assert np.array_equal(a, b, equal_nan=True)
