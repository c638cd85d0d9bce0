"""Transform steps: splits, fitting on training rows, dataset steps, errors with step index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlwp.data.transform import TransformError, run_transform

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "fixtures" / "data" / "telco_churn_sample.csv"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.read_csv(DATA)


@pytest.fixture(scope="module")
def churn_steps() -> list[dict]:
    definition = yaml.safe_load((ROOT / "dags/projects/churn/workflow.yaml").read_text())
    return definition["workflows"]["train"]["tasks"]["features"]["steps"]


def test_churn_steps_split_without_losing_rows(frame: pd.DataFrame, churn_steps: list) -> None:
    result = run_transform(frame, churn_steps)
    sizes = {name: len(split) for name, split in result.splits.items()}
    assert sum(sizes.values()) == len(frame) and result.rows_filtered == 0
    split = next(s for s in churn_steps if s["op"] == "split")
    assert sizes["test"] == pytest.approx(split["test_size"] * len(frame), abs=2)
    assert sizes["validation"] == pytest.approx(
        split.get("validation_size", 0.1) * len(frame), abs=2
    )
    ids = pd.concat([s.customer_id for s in result.splits.values()])
    assert ids.is_unique and set(ids) == set(frame.customer_id)
    rate = {n: (s.churn == "Yes").mean() for n, s in result.splits.items()}
    assert rate["train"] == pytest.approx(rate["test"], abs=0.01)  # stratified
    # the raw rows keep raw values (the preprocessing is not applied to them)
    assert set(result.splits["train"].churn) == {"No", "Yes"}


def test_split_is_seeded(frame: pd.DataFrame, churn_steps: list) -> None:
    first = run_transform(frame, churn_steps).splits["test"].customer_id.tolist()
    again = run_transform(frame, churn_steps).splits["test"].customer_id.tolist()
    other = [dict(s, seed=7) if s["op"] == "split" else s for s in churn_steps]
    assert first == again
    assert run_transform(frame, other).splits["test"].customer_id.tolist() != first


def test_statistics_come_from_training_rows_only(frame: pd.DataFrame) -> None:
    steps = [
        {"op": "fill_missing", "columns": ["total_charges"], "strategy": "median"},
        {"op": "scale", "columns": ["tenure"]},
        {"op": "split", "test_size": 0.3, "validation_size": 0.2, "seed": 3},
    ]
    result = run_transform(frame, steps)
    train = result.splits["train"]
    fitted = {s.op: s.spec for s in result.preprocessing.steps}
    assert fitted["fill_missing"]["values"]["total_charges"] == pytest.approx(
        train.total_charges.median()
    )
    assert fitted["scale"]["columns"]["tenure"]["mean"] == pytest.approx(train.tenure.mean())
    assert fitted["scale"]["columns"]["tenure"]["mean"] != pytest.approx(frame.tenure.mean())


def test_transformed_rows_equal_the_fitted_preprocessing(
    frame: pd.DataFrame, churn_steps: list
) -> None:
    result = run_transform(frame, churn_steps)
    pre = result.preprocessing.with_target("churn")
    for name in ("train", "test"):
        expected = result.features(name).drop(columns="churn").to_numpy()
        assert np.array_equal(pre.transform_frame(result.splits[name]), expected, equal_nan=True)
        records = result.splits[name].to_dict(orient="records")
        assert np.array_equal(pre.transform_records(records), expected, equal_nan=True)


def test_filter_drops_rows_anywhere(frame: pd.DataFrame) -> None:
    steps = [
        {"op": "derive", "column": "per_month", "expression": "total_charges / tenure"},
        {"op": "filter", "expression": "tenure > 0 and contract != 'Two year'"},
        {"op": "split", "seed": 1},
    ]
    result = run_transform(frame, steps)
    kept = frame[(frame.tenure > 0) & (frame.contract != "Two year")]
    assert result.rows_filtered == len(frame) - len(kept)
    assert sum(len(s) for s in result.splits.values()) == len(kept)
    assert "per_month" not in result.splits["train"].columns  # raw rows, not derived


def test_missing_column_names_column_and_step(frame: pd.DataFrame) -> None:
    steps = [{"op": "drop", "columns": ["customer_id"]}, {"op": "onehot", "columns": ["contrakt"]}]
    with pytest.raises(TransformError, match=r"steps\[1\] \(onehot\): column 'contrakt' not found"):
        run_transform(frame, steps)
    with pytest.raises(TransformError, match=r"steps\[0\] \(split\): stratify column 'y'"):
        run_transform(frame, [{"op": "split", "stratify": "y"}])


def test_python_steps_run_first_and_define_the_raw_schema(frame: pd.DataFrame) -> None:
    steps = [
        {"op": "python", "callable": "pandas:DataFrame.dropna"},
        {"op": "drop", "columns": ["customer_id"]},
    ]
    result = run_transform(frame, steps)
    assert len(result.splits["train"]) == len(frame.dropna())
    late = [{"op": "drop", "columns": ["customer_id"]}, {"op": "python", "callable": "os:getcwd"}]
    with pytest.raises(TransformError, match=r"steps\[1\] \(python\).*move it before steps\[0\]"):
        run_transform(frame, late)
    with pytest.raises(TransformError, match=r"steps\[0\] \(python\): cannot import 'nope:f'"):
        run_transform(frame, [{"op": "python", "callable": "nope:f"}])


def test_bad_steps_are_refused(frame: pd.DataFrame) -> None:
    with pytest.raises(TransformError, match=r"steps\[0\] \(pivot\): unknown op"):
        run_transform(frame, [{"op": "pivot"}])
    with pytest.raises(TransformError, match=r"a second split \(the first is steps\[0\]\)"):
        run_transform(frame, [{"op": "split"}, {"op": "split"}])
    with pytest.raises(TransformError, match=r"steps\[0\] \(split\): test_size"):
        run_transform(frame, [{"op": "split", "test_size": 0.7, "validation_size": 0.5}])
    with pytest.raises(TransformError, match=r"steps\[0\] \(cast\).*unknown type 'decimal'"):
        run_transform(frame, [{"op": "cast", "columns": {"tenure": "decimal"}}])
    with pytest.raises(TransformError, match=r"steps\[0\] \(filter\).*not allowed"):
        run_transform(frame, [{"op": "filter", "expression": "__import__('os')"}])


def test_cast_failure_names_step_column_and_row() -> None:
    frame = pd.DataFrame({"amount": ["1", "2", "oops"], "y": [0, 1, 0]})
    with pytest.raises(TransformError, match=r"steps\[0\] \(cast\): column 'amount', row 2"):
        run_transform(frame, [{"op": "cast", "columns": {"amount": "float"}}])


def test_accepts_definition_step_models(frame: pd.DataFrame) -> None:
    from mlwp.definitions.schema import DropStep, SplitStep

    steps = [DropStep(columns=["customer_id"]), SplitStep()]
    result = run_transform(frame, steps)
    assert "customer_id" in result.splits["train"].columns  # raw rows keep it
    assert "customer_id" not in [f.name for f in result.preprocessing.features]
