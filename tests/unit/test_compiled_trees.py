"""The compiled trees give XGBoost's own predictions, bit for bit, or refuse to compile."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tree_models import MODEL_KINDS, check_predict_row, train, train_kind

from mlwp.model.compiled_trees import CompiledTrees, Unsupported
from mlwp.model.predictor import BoosterPredictor


@pytest.mark.parametrize(("objective", "classes", "params"), MODEL_KINDS)
def test_same_output_as_xgboost(objective: str, classes: int, params: dict[str, object]) -> None:
    model, x = train_kind(objective, classes, params)
    compiled = CompiledTrees.compile(model)
    expected = model.inplace_predict(x)
    for start in (0, 1, 5, 100):
        for rows in (1, 2, 3, 8):
            got = compiled.predict(x[start : start + rows])
            assert got.dtype == np.float32
            assert got.shape == expected[start : start + rows].shape
            assert np.array_equal(got, expected[start : start + rows])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), depth=st.integers(1, 8), data=st.data())
def test_random_models_and_rows(seed: int, depth: int, data: st.DataObject) -> None:
    model, _ = train("binary:logistic", seed=seed, max_depth=depth)
    compiled = CompiledTrees.compile(model)
    values = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, -1.0])
    )
    row = np.array([data.draw(st.lists(values, min_size=7, max_size=7))], dtype=np.float32)
    assert np.array_equal(compiled.predict(row), model.inplace_predict(row))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    objective=st.sampled_from(["binary:logistic", "reg:squarederror"]),
    data=st.data(),
)
def test_predict_row_equals_predict(seed: int, objective: str, data: st.DataObject) -> None:
    model, x = train(objective, seed=seed)
    compiled = CompiledTrees.compile(model)
    check_predict_row(compiled.predict_row, compiled.predict, model, x, data)


def test_sigmoid_of_one_value_equals_the_array_sigmoid() -> None:
    """predict_row's sigmoid (Python floats rounded to float32) against predict's (float32
    scalars), on margins of every magnitude, both signs, the cap and beyond."""
    binary, _ = train("binary:logistic")
    compiled = CompiledTrees.compile(binary)
    rng = np.random.default_rng(7)
    margins = np.concatenate(
        [
            rng.normal(scale=3, size=20_000),
            rng.uniform(-120, 120, size=20_000),
            np.ldexp(rng.uniform(-1, 1, size=20_000), rng.integers(-140, 8, size=20_000)),
            [0.0, -0.0, 88.7, -88.7, 88.8, -88.8, 1e30, -1e30, np.inf, -np.inf],
        ]
    ).astype(np.float32)
    expected = compiled._sigmoid(margins.tolist())
    got = np.array([compiled._sigmoid_value(m) for m in margins.tolist()], dtype=np.float32)
    assert np.array_equal(got, expected)


def test_predict_row_takes_one_row_of_a_one_output_model() -> None:
    binary, _ = train("binary:logistic")
    with pytest.raises(ValueError, match="one row of 7 values"):
        CompiledTrees.compile(binary).predict_row([0.0] * 6)
    multiclass, _ = train("multi:softprob", 3)
    compiled = CompiledTrees.compile(multiclass)
    assert not compiled.single_output
    with pytest.raises(ValueError, match="3 outputs"):
        compiled.predict_row([0.0] * 7)


def test_refuses_what_it_does_not_reproduce() -> None:
    dart, _ = train("binary:logistic", booster="dart", rate_drop=0.3)
    with pytest.raises(Unsupported, match="dart"):
        CompiledTrees.compile(dart)
    poisson, _ = train("reg:squarederror")
    poisson.set_param({"objective": "count:poisson"})
    with pytest.raises(Unsupported, match="count:poisson"):
        CompiledTrees.compile(poisson)


def test_booster_predictor_uses_compiled_trees_for_small_batches_only() -> None:
    model, x = train("binary:logistic")
    predictor = BoosterPredictor(model)
    assert predictor.compiled is None  # batch jobs never compile
    rows = predictor.compile_trees(x[:1].astype(np.float32))
    assert rows == predictor.compiled_rows
    if rows:
        assert predictor.compiled is not None
    else:
        assert predictor.not_compiled
    for size in (1, rows, rows + 1, 50):
        batch = x[: max(size, 1)]
        assert np.array_equal(predictor.predict(batch), model.inplace_predict(batch))
    # whatever the timing decided: up to compiled_rows the compiled trees answer, above XGBoost
    predictor.compiled, predictor.compiled_rows = CompiledTrees.compile(model), 3

    def no_xgboost(matrix: np.ndarray) -> np.ndarray:
        raise AssertionError(f"XGBoost asked for {len(matrix)} rows")

    predictor.dense.predict = no_xgboost  # type: ignore[method-assign]
    assert np.array_equal(predictor.predict(x[:3]), model.inplace_predict(x[:3]))
    with pytest.raises(AssertionError, match="4 rows"):
        predictor.predict(x[:4])


def test_booster_predictor_reports_why_it_did_not_compile() -> None:
    model, x = train("reg:squarederror")
    model.set_param({"objective": "count:poisson"})
    predictor = BoosterPredictor(model)
    assert predictor.compile_trees(x[:1]) == 0
    assert "count:poisson" in predictor.not_compiled
    assert np.array_equal(predictor.predict(x[:2]), model.inplace_predict(x[:2]))
