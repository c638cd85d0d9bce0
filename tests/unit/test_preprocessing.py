"""The fitted preprocessing: fit, JSON round trip, training == serving, record errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlwp.preprocessing import (
    Expression,
    Preprocessing,
    PreprocessingError,
    RecordError,
    columns_from_frame,
    fit_step,
    infer_inputs,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "telco_churn_sample.csv"
CATEGORICAL = [
    "multiple_lines",
    "internet_service",
    "online_security",
    "online_backup",
    "device_protection",
    "tech_support",
    "streaming_tv",
    "streaming_movies",
    "contract",
    "payment_method",
]
STEPS = [
    {"op": "drop", "columns": ["customer_id"]},
    {"op": "fill_missing", "columns": ["total_charges"], "strategy": "median"},
    {"op": "ordinal", "columns": {"churn": ["No", "Yes"]}},
    {"op": "onehot", "columns": CATEGORICAL},
    {"op": "derive", "column": "charge_ratio", "expression": "total_charges / (tenure + 1)"},
    {"op": "scale", "columns": ["monthly_charges"]},
    {"op": "rename", "columns": {"tenure": "months"}},
]


def fit(frame: pd.DataFrame, steps: list[dict]) -> Preprocessing:
    columns = columns_from_frame(frame)
    fitted = []
    for index, args in enumerate(steps):
        step = fit_step(args, columns, f"steps[{index}]")
        columns = step.apply(columns, f"steps[{index}]")
        fitted.append(step)
    return Preprocessing(infer_inputs(frame), fitted)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.read_csv(DATA)


@pytest.fixture(scope="module")
def pre(frame: pd.DataFrame) -> Preprocessing:
    return fit(frame, STEPS).with_target("churn")


def test_fitted_statistics_and_outputs(frame: pd.DataFrame, pre: Preprocessing) -> None:
    fill = pre.steps[1].spec["values"]["total_charges"]
    assert fill == pytest.approx(float(frame.total_charges.median()))
    scale = pre.steps[5].spec["columns"]["monthly_charges"]
    assert scale["mean"] == pytest.approx(frame.monthly_charges.mean())
    assert "contract=Two year" in pre.outputs
    assert "months" in pre.outputs and "tenure" not in pre.outputs
    assert "churn" not in pre.outputs and "customer_id" not in pre.outputs
    names = [f.name for f in pre.features]
    assert "churn" not in names and "customer_id" not in names and "tenure" in names
    optional = {f.name for f in pre.features if not f.required}
    assert optional == {"total_charges"}
    assert pre.label_classes == ["No", "Yes"]


def test_training_and_serving_give_identical_matrices(
    frame: pd.DataFrame, pre: Preprocessing
) -> None:
    from_frame = pre.transform_frame(frame)
    records = frame.to_dict(orient="records")
    from_records = pre.transform_records(records)
    assert from_frame.shape == (len(frame), len(pre.outputs))
    assert np.array_equal(from_frame, from_records, equal_nan=True)
    # record by record too (batch size must not matter)
    one = np.vstack([pre.transform_records([r]) for r in records[:50]])
    assert np.array_equal(one, from_frame[:50], equal_nan=True)


def test_json_round_trip_keeps_the_transformation(frame: pd.DataFrame, pre: Preprocessing) -> None:
    again = Preprocessing.from_json(pre.to_json())
    assert again.outputs == pre.outputs and again.target == "churn"
    records = frame.head(100).to_dict(orient="records")
    assert np.array_equal(
        again.transform_records(records), pre.transform_records(records), equal_nan=True
    )


def test_unknown_category_gives_all_zero_onehot(frame: pd.DataFrame, pre: Preprocessing) -> None:
    record = frame.iloc[0].to_dict()
    record["contract"] = "Ten year"
    row = pre.transform_records([record])[0]
    contract = [row[pre.outputs.index(n)] for n in pre.outputs if n.startswith("contract=")]
    assert contract == [0.0, 0.0, 0.0]


def test_missing_optional_field_is_filled(frame: pd.DataFrame, pre: Preprocessing) -> None:
    record = frame.iloc[0].to_dict()
    del record["total_charges"]
    row = pre.transform_records([record])[0]
    assert row[pre.outputs.index("total_charges")] == pytest.approx(
        float(frame.total_charges.median())
    )


def test_missing_required_field_names_row_and_field(
    frame: pd.DataFrame, pre: Preprocessing
) -> None:
    records = frame.head(3).to_dict(orient="records")
    del records[2]["tenure"]
    with pytest.raises(RecordError, match=r"row 2: missing required field 'tenure'") as info:
        pre.transform_records(records)
    assert (info.value.row, info.value.field) == (2, "tenure")


def test_wrong_type_names_row_and_field(frame: pd.DataFrame, pre: Preprocessing) -> None:
    records = frame.head(2).to_dict(orient="records")
    records[1]["monthly_charges"] = "lots"
    with pytest.raises(RecordError, match=r"row 1: field 'monthly_charges': expected a number"):
        pre.transform_records(records)
    records[1]["monthly_charges"] = 10.0
    records[0]["contract"] = 3
    with pytest.raises(RecordError, match=r"row 0: field 'contract': expected text"):
        pre.transform_records(records)


def test_cast_error_at_serving_is_a_record_error() -> None:
    frame = pd.DataFrame({"amount": ["1.5", "2", None], "y": [0, 1, 0]})
    pre = fit(frame, [{"op": "cast", "columns": {"amount": "float"}}]).with_target("y")
    assert pre.transform_frame(frame)[:, 0].tolist()[:2] == [1.5, 2.0]
    with pytest.raises(RecordError, match=r"row 1: field 'amount': cannot read 'x' as a number"):
        pre.transform_records([{"amount": "3"}, {"amount": "x"}])


def test_text_left_over_is_refused() -> None:
    frame = pd.DataFrame({"city": ["a", "b"], "y": [0, 1]})
    pre = Preprocessing.identity(frame).with_target("y")
    with pytest.raises(PreprocessingError, match="'city' is still text"):
        pre.transform_frame(frame)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "tenure.real",
        "open('/etc/passwd')",
        "[1, 2]",
        "lambda: 1",
        "tenure[0]",
    ],
)
def test_expressions_refuse_anything_but_arithmetic(text: str) -> None:
    with pytest.raises(PreprocessingError, match=r"not allowed|invalid expression"):
        Expression(text, where="steps[3]")


def test_expression_evaluates_comparisons_and_functions(frame: pd.DataFrame) -> None:
    columns = columns_from_frame(frame)
    values = Expression(
        "log1p(monthly_charges) if contract == 'Two year' and tenure > 12 else -1",
        where="t",
    ).evaluate(columns)
    expected = np.where(
        (frame.contract == "Two year") & (frame.tenure > 12), np.log1p(frame.monthly_charges), -1
    )
    assert np.allclose(values, expected)


def test_target_used_in_a_feature_is_refused(frame: pd.DataFrame) -> None:
    pre = fit(
        frame,
        [
            {"op": "derive", "column": "leak", "expression": "tenure * 2"},
            {"op": "ordinal", "columns": {"churn": ["No", "Yes"]}},
            {"op": "derive", "column": "leak2", "expression": "churn + 1"},
        ],
    )
    with pytest.raises(PreprocessingError, match=r"leak2.*uses the target 'churn'"):
        pre.with_target("churn")


def test_listed_categories_must_cover_the_data(frame: pd.DataFrame) -> None:
    with pytest.raises(PreprocessingError, match=r"'contract' has values .* not among"):
        fit(frame, [{"op": "ordinal", "columns": {"contract": ["One year"]}}])


def test_record_encoder_equals_the_column_path_for_every_step_but_derive() -> None:
    from mlwp import preprocessing

    frame = pd.DataFrame(
        {
            "amount": ["1.5", "2", None, " 7 "],
            "flag": ["yes", "no", "1", None],
            "count": [3.7, -1.2, None, 2.0],
            "code": [1.0, 2.0, 2.0, None],
            "city": ["a", "b", None, "a"],
            "unused": ["x", "y", "z", "w"],
            "y": ["n", "y", "y", "n"],
        }
    )
    steps = [
        {"op": "drop", "columns": ["unused"]},
        {"op": "cast", "columns": {"amount": "float", "flag": "bool", "count": "int"}},
        {"op": "cast", "columns": {"code": "str"}},
        {"op": "fill_missing", "columns": {"amount": 0, "city": "mode", "code": "9"}},
        {"op": "ordinal", "columns": {"y": ["n", "y"]}},
        {"op": "onehot", "columns": ["city", "code"]},
        {"op": "scale", "columns": ["count"]},
        {"op": "rename", "columns": {"flag": "is_flag"}},
        {"op": "select", "columns": ["is_flag", "amount", "count", "city=a", "code=1", "code=9"]},
    ]
    pre = fit(frame, steps).with_target("y")
    assert pre.record_encoder is not None
    records = [
        {"amount": "3.25", "flag": "Y", "count": 4, "code": 2.0, "city": "b"},
        {"amount": None, "flag": None, "count": None, "code": None, "city": None},
        {"amount": "", "flag": "false", "count": -0.5, "code": 1, "city": "zzz", "extra": 1},
        {"flag": "no", "count": 1e6, "code": 9, "city": "a"},  # amount: optional (filled)
    ]
    encoded = pre.record_encoder.encode(records)
    original = preprocessing.ENCODER_MAX_ROWS
    preprocessing.ENCODER_MAX_ROWS = 0  # the column path
    try:
        columns = pre.transform_records(records)
    finally:
        preprocessing.ENCODER_MAX_ROWS = original
    assert pre.outputs == ["is_flag", "amount", "count", "city=a", "code=1", "code=9"]
    assert np.array_equal(encoded, columns, equal_nan=True)
    # an unreadable value falls back to the column path, which names row and field
    with pytest.raises(RecordError, match=r"row 1: field 'flag': cannot read 'maybe'"):
        pre.transform_records([records[0], {**records[0], "flag": "maybe"}])
