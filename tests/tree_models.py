"""XGBoost models for the two tree compilers' tests (`test_compiled_trees`, Python, and
`test_native_trees`, C): the same models and the same bit-for-bit properties judge both."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import xgboost
from hypothesis import strategies as st

# (objective, classes, params): every kind of model both compilers reproduce
MODEL_KINDS = [
    ("binary:logistic", 1, {}),
    ("binary:logistic", 1, {"base_score": 0.2, "max_depth": 9}),
    ("multi:softprob", 3, {}),
    ("multi:softprob", 4, {"num_parallel_tree": 2}),
    ("reg:squarederror", 1, {}),
    ("reg:logistic", 1, {}),
]


def train(
    objective: str, classes: int = 1, *, seed: int = 0, rounds: int = 30, **params: object
) -> tuple[xgboost.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, 7))
    x[rng.random(x.shape) < 0.15] = np.nan  # missing values take the default branches
    x[:, 3] = np.round(x[:, 3])  # values exactly at thresholds
    if classes > 1:
        y = rng.integers(0, classes, size=400)
    elif objective == "binary:logistic":
        y = (np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 3]) > 0).astype(float)
    else:
        y = rng.normal(size=400) * 10 + 3
    config = {"objective": objective, "max_depth": 5, "nthread": 1, "seed": seed, **params}
    if classes > 1:
        config["num_class"] = classes
    return xgboost.train(config, xgboost.DMatrix(x, label=y), num_boost_round=rounds), x


def train_kind(
    objective: str, classes: int, params: dict[str, object]
) -> tuple[xgboost.Booster, np.ndarray]:
    """A model of one of :data:`MODEL_KINDS` (reg:logistic: a binary model's trees with the
    regression objective, as XGBoost cannot train it on these labels)."""
    if objective == "reg:logistic":
        model, x = train("binary:logistic", **params)
        model.set_param({"objective": "reg:logistic"})
        return model, x
    return train(objective, classes, **params)


def check_predict_row(
    predict_row: Callable[[Sequence[float]], float],
    predict: Callable[[np.ndarray], np.ndarray],
    model: xgboost.Booster,
    x: np.ndarray,
    data: st.DataObject,
) -> None:
    """One row of Python floats (doubles, rounded to float32 on the way in as numpy's cast
    rounds them): the same value as ``predict`` of the float64 matrix, and as XGBoost's."""
    values = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),  # doubles: most round to float32
        st.floats(-3, 3).map(lambda v: float(np.nextafter(np.float32(v), np.float32(9)))),
        st.sampled_from([0.0, -1.0, 1e300, -1e-300, 2.0**-149 * 1.5]),
    )
    row = data.draw(st.lists(values, min_size=7, max_size=7))
    matrix = np.array([row], dtype=np.float64)
    got = predict_row(row)
    assert type(got) is float
    expected = predict(matrix)
    assert np.array_equal(np.array([got], dtype=np.float32), expected, equal_nan=True)
    assert np.array_equal(expected, model.inplace_predict(matrix.astype(np.float32)))
    for start in range(0, 400, 40):  # the training rows, missing values among them
        one = x[start].tolist()
        assert predict_row(one) == float(predict(x[start : start + 1])[0])
