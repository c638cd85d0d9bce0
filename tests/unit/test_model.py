"""The model format: save, load, predict raw records, pyfunc and MLflow flavours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlwp import model as mlwp_model
from mlwp.data.transform import run_transform
from mlwp.training import entrypoint
from mlwp.training.local import prepare_workdir

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "fixtures" / "data" / "telco_churn_sample.csv"


def churn_steps() -> list[dict]:
    definition = yaml.safe_load((ROOT / "dags/projects/churn/workflow.yaml").read_text())
    return definition["workflows"]["train"]["tasks"]["features"]["steps"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, pd.DataFrame]]:
    """A tiny real churn model trained in process through the entry point's run()."""
    frame = pd.read_csv(DATA)
    result = run_transform(frame, churn_steps())
    workdir = tmp_path_factory.mktemp("train")
    environ = prepare_workdir(
        workdir,
        result.splits,
        result.preprocessing,
        {"target": "churn", "num_boost_round": 30, "max_depth": 3, "nthread": 1, "seed": 1},
    )
    entrypoint.run(environ)
    return workdir / "model", result.splits


def test_model_directory_layout(trained: tuple[Path, dict]) -> None:
    model_dir, _ = trained
    assert {p.name for p in model_dir.iterdir()} >= {"model.ubj", "mlwp.json", "preprocessing.json"}
    metadata = json.loads((model_dir / "mlwp.json").read_text())
    assert metadata["objective"] == "binary" and metadata["classes"] == ["No", "Yes"]
    assert metadata["target"] == "churn"
    assert "validation:roc_auc" in metadata["metrics"]


def test_load_exposes_features_objective_classes(trained: tuple[Path, dict]) -> None:
    model = mlwp_model.load(trained[0])
    names = [f.name for f in model.features]
    assert model.objective == "binary" and model.classes == ["No", "Yes"]
    assert "tenure" in names and "contract" in names
    assert "churn" not in names and "customer_id" not in names
    tenure = next(f for f in model.features if f.name == "tenure")
    assert tenure.dtype == "int" and tenure.required and isinstance(tenure.example, int)


def test_predict_records_matches_the_booster(trained: tuple[Path, dict]) -> None:
    model_dir, splits = trained
    model = mlwp_model.load(model_dir)
    test = splits["test"]
    result = model.predict(test.to_dict(orient="records"))
    import xgboost

    booster = xgboost.Booster(model_file=str(model_dir / "model.ubj"))
    matrix = model.preprocessing.transform_frame(test)
    expected = booster.predict(xgboost.DMatrix(matrix, feature_names=model.preprocessing.outputs))
    got = np.array([p[1] for p in result.probabilities])
    assert np.allclose(got, expected, atol=1e-6)
    assert result.predictions == ["Yes" if p >= 0.5 else "No" for p in got]
    assert all(abs(sum(p) - 1) < 1e-6 for p in result.probabilities)


def test_bad_record_raises_record_error(trained: tuple[Path, dict]) -> None:
    model = mlwp_model.load(trained[0])
    record = trained[1]["test"].iloc[0].to_dict()
    record["tenure"] = "long"
    with pytest.raises(mlwp_model.RecordError, match="row 1: field 'tenure'") as info:
        model.predict([trained[1]["test"].iloc[1].to_dict(), record])
    assert info.value.row == 1 and info.value.field == "tenure"
    assert model.predict([]).predictions == []


def test_one_record_is_scored_as_the_matrix_path_scores_it(trained: tuple[Path, dict]) -> None:
    """A one-record prediction goes through the record encoder's row and the compiled trees'
    predict_row (no matrix); it equals the matrix path's, bit for bit, and a record the
    encoder refuses still gets the matrix path's answer or error."""
    model = mlwp_model.load(trained[0])
    assert "compiled trees" in model.compile_trees()
    records = trained[1]["test"].to_dict(orient="records")
    matrix_path = lambda rs: model.predict_matrix(model.transform(rs))  # noqa: E731
    for record in records:
        assert model.predict([record]) == matrix_path([record])
    odd = [
        {**records[0], "tenure": None},  # a missing value
        {**records[0], "tenure": 10**400},  # no float: the column path reports it
        {**records[0], "tenure": "12"},  # a text where a number belongs: the column path
        {k: v for k, v in records[0].items() if k != "contract"},  # a one-hot field missing
    ]
    for record in odd:
        try:
            expected: object = matrix_path([record])
        except Exception as exc:  # the same error either way, whatever it is
            expected = (type(exc), str(exc))
        try:
            got: object = model.predict([record])
        except Exception as exc:
            got = (type(exc), str(exc))
        assert got == expected, record

    expected_first = matrix_path(records[:1])

    def no_matrix(records: object) -> None:
        raise AssertionError("the one-record path built a matrix")

    model.transform = no_matrix  # type: ignore[method-assign]
    assert model.predict(records[:1]) == expected_first


def test_pyfunc_loader_takes_a_dataframe(trained: tuple[Path, dict]) -> None:
    model_dir, splits = trained
    frame = splits["test"].head(20)
    pyfunc = mlwp_model._load_pyfunc(str(model_dir))
    out = pyfunc.predict(frame)
    direct = mlwp_model.load(model_dir).predict(frame.to_dict(orient="records"))
    assert out["prediction"].tolist() == direct.predictions
    assert np.allclose(out["probability_Yes"], [p[1] for p in direct.probabilities])


@pytest.mark.slow
def test_mlflow_model_has_both_flavours(trained: tuple[Path, dict], tmp_path: Path) -> None:
    import mlflow.pyfunc
    import mlflow.xgboost
    from mlflow.models import Model

    from mlwp.training import flavor
    from mlwp.training.tracking import input_example, signature

    model_dir, splits = trained
    model = mlwp_model.load(model_dir)
    path = tmp_path / "mlflow-model"
    flavor.save_model(
        str(path),
        model_dir=model_dir,
        signature=signature(model.features),
        input_example=input_example(model, splits["train"]),
    )
    mlmodel = Model.load(str(path / "MLmodel"))
    assert mlmodel.flavors["python_function"]["loader_module"] == "mlwp.model"
    assert mlmodel.flavors["xgboost"]["model_format"] == "ubj"
    assert [c.name for c in mlmodel.signature.inputs.inputs] == [f.name for f in model.features]
    frame = splits["test"].head(10)
    loaded = mlflow.pyfunc.load_model(str(path))
    got = loaded.predict(frame[[f.name for f in model.features]])
    direct = model.predict(frame.to_dict(orient="records"))
    assert got["prediction"].tolist() == direct.predictions
    booster = mlflow.xgboost.load_model(str(path))
    matrix = model.preprocessing.transform_frame(frame)
    assert np.allclose(booster.inplace_predict(matrix), [p[1] for p in direct.probabilities])


def test_incomplete_or_foreign_directories_are_refused(
    trained: tuple[Path, dict], tmp_path: Path
) -> None:
    with pytest.raises(mlwp_model.ModelFormatError, match=r"model\.ubj is missing"):
        mlwp_model.load(tmp_path)
    for name in ("model.ubj", "preprocessing.json"):
        (tmp_path / name).write_bytes((trained[0] / name).read_bytes())
    (tmp_path / "mlwp.json").write_text(json.dumps({"format": "other/9", "objective": "binary"}))
    with pytest.raises(mlwp_model.ModelFormatError, match="unsupported format 'other/9'"):
        mlwp_model.load(tmp_path)
