"""The training entry point: SageMaker contract, objectives, seeds, metrics, failures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mlwp import model as mlwp_model
from mlwp.data.transform import run_transform
from mlwp.training import entrypoint
from mlwp.training.core import TrainingConfig, TrainingError
from mlwp.training.local import prepare_workdir, train_local
from mlwp.training.metrics import metric_definitions, metric_regex, parse_metric_lines

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "fixtures" / "data" / "telco_churn_sample.csv"
FULL = ROOT / "dags" / "projects" / "churn" / "data" / "telco_churn.csv"
FAST = {"nthread": 1, "max_depth": 3, "num_boost_round": 30}


def churn_steps() -> list[dict]:
    definition = yaml.safe_load((ROOT / "dags/projects/churn/workflow.yaml").read_text())
    return definition["workflows"]["train"]["tasks"]["features"]["steps"]


@pytest.fixture(scope="module")
def churn() -> tuple[dict[str, pd.DataFrame], object]:
    result = run_transform(pd.read_csv(SAMPLE), churn_steps())
    return result.splits, result.preprocessing


def train_in_process(workdir: Path, splits, preprocessing, hyper) -> dict[str, float]:
    return entrypoint.run(prepare_workdir(workdir, splits, preprocessing, hyper))


def test_hyperparameters_are_decoded_like_sagemaker_passes_them() -> None:
    decoded = entrypoint.decode_hyperparameters(
        {
            "target": '"churn"',
            "max_depth": "4",
            "eta": "0.1",
            "name": "plain text",
            "params": '{"subsample": 0.9}',
        }
    )
    config = TrainingConfig.from_hyperparameters(decoded)
    assert config.target == "churn" and config.params["max_depth"] == 4
    assert config.params["subsample"] == 0.9 and config.params["name"] == "plain text"
    with pytest.raises(TrainingError, match="'target'"):
        TrainingConfig.from_hyperparameters({"objective": "binary"})
    with pytest.raises(TrainingError, match="objective: expected one of"):
        TrainingConfig.from_hyperparameters({"target": "y", "objective": "ranking"})


def test_metric_lines_match_the_sagemaker_regexes() -> None:
    line = "mlwp-metric validation:roc_auc=0.843215"
    match = re.search(metric_regex("validation:roc_auc"), f"junk\n{line}\n")
    assert match is not None and float(match.group(1)) == pytest.approx(0.843215)
    assert re.search(metric_regex("validation:auc"), line) is None
    names = [d["Name"] for d in metric_definitions("binary")]
    assert names == [
        "validation:roc_auc",
        "validation:accuracy",
        "validation:f1",
        "validation:logloss",
    ]
    assert parse_metric_lines(f"{line}\nmlwp-metric test:f1=1e-3\n") == {
        "validation:roc_auc": 0.843215,
        "test:f1": 0.001,
    }


def test_same_seed_same_data_gives_identical_booster_bytes(churn, tmp_path: Path) -> None:
    splits, pre = churn
    hyper = {"target": "churn", "subsample": 0.8, "colsample_bytree": 0.8, "seed": 5, **FAST}
    train_in_process(tmp_path / "a", splits, pre, hyper)
    train_in_process(tmp_path / "b", splits, pre, hyper)
    train_in_process(tmp_path / "c", splits, pre, {**hyper, "seed": 6})
    first = (tmp_path / "a/model/model.ubj").read_bytes()
    assert first == (tmp_path / "b/model/model.ubj").read_bytes()
    assert first != (tmp_path / "c/model/model.ubj").read_bytes()


def test_early_stopping_cuts_the_booster_to_the_best_round(churn, tmp_path: Path) -> None:
    splits, pre = churn
    hyper = {
        "target": "churn",
        "nthread": 1,
        "eta": 0.5,
        "num_boost_round": 300,
        "early_stopping_rounds": 5,
    }
    metrics = train_in_process(tmp_path, splits, pre, hyper)
    model = mlwp_model.load(tmp_path / "model")
    best = int(metrics["best_iteration"])
    assert best < 295
    assert model.booster.num_boosted_rounds() == best + 1
    assert model.metadata["best_iteration"] == best


@pytest.mark.parametrize(
    ("target", "objective", "metric"),
    [
        ("contract", "multiclass", "validation:f1_macro"),
        ("monthly_charges", "regression", "validation:rmse"),
    ],
)
def test_multiclass_and_regression(
    tmp_path: Path, target: str, objective: str, metric: str
) -> None:
    frame = pd.read_csv(SAMPLE)
    steps = [
        {"op": "drop", "columns": ["customer_id", "churn"]},
        {
            "op": "onehot",
            "columns": [
                c for c in frame.columns if frame[c].dtype == "str" and c not in ("churn", target)
            ],
        },
        {"op": "split", "seed": 1, **({"stratify": target} if objective != "regression" else {})},
    ]
    result = run_transform(frame, steps)
    metrics = train_in_process(
        tmp_path,
        result.splits,
        result.preprocessing,
        {"target": target, "objective": objective, **FAST},
    )
    assert metric in metrics
    model = mlwp_model.load(tmp_path / "model")
    records = result.splits["test"].head(5).to_dict(orient="records")
    out = model.predict(records)
    model.compile_trees()
    for record in records:  # one record: the encoder's row and the compiled trees (one output)
        assert model.predict([record]) == model.predict_matrix(model.transform([record]))
    if objective == "multiclass":
        assert model.classes == sorted(frame.contract.unique())
        assert set(out.predictions) <= set(model.classes)
        assert all(len(p) == 3 for p in out.probabilities)
    else:
        assert model.classes is None and out.probabilities is None
        assert all(isinstance(v, float) for v in out.predictions)


def test_churn_roc_auc_on_the_full_telco_test_split(tmp_path: Path) -> None:
    result = run_transform(pd.read_csv(FULL), churn_steps())
    definition = yaml.safe_load((ROOT / "dags/projects/churn/workflow.yaml").read_text())
    task = definition["workflows"]["train"]["tasks"]["train"]
    hyper = {
        "target": "churn",
        "nthread": 1,
        **task["params"],
        "num_boost_round": task["num_boost_round"],
        "early_stopping_rounds": task["early_stopping_rounds"],
    }
    metrics = train_in_process(tmp_path, result.splits, result.preprocessing, hyper)
    assert metrics["test:roc_auc"] >= 0.80
    written = json.loads((tmp_path / "output/data/metrics.json").read_text())
    assert written["test:roc_auc"] == metrics["test:roc_auc"]


def test_bad_target_fails_with_failure_file(churn, tmp_path: Path) -> None:
    splits, pre = churn
    environ = prepare_workdir(tmp_path, splits, pre, {"target": "nope", **FAST})
    with pytest.raises(TrainingError, match="target 'nope' is not among the input columns"):
        entrypoint.run(environ)


@pytest.mark.slow
def test_local_backend_runs_the_entry_point_in_a_subprocess(churn, tmp_path: Path) -> None:
    splits, pre = churn
    lines: list[str] = []
    result = train_local(
        splits,
        pre,
        {"target": "churn", **FAST},
        workdir=tmp_path,
        on_line=lines.append,
        timeout=600,
    )
    assert result.metrics["validation:roc_auc"] > 0.6
    assert any(line.startswith("[0]\ttrain-logloss:") for line in lines)
    assert any(re.search(metric_regex("test:roc_auc"), line) for line in lines)
    assert mlwp_model.load(result.model_dir).classes == ["No", "Yes"]


@pytest.mark.slow
def test_failing_subprocess_surfaces_the_stderr_tail(churn, tmp_path: Path) -> None:
    splits, pre = churn
    with pytest.raises(TrainingError) as info:
        train_local(
            splits,
            pre,
            {
                "target": "churn",
                "objective": "binary",
                "max_depth": -3,
                "nthread": 1,
                "num_boost_round": 2,
            },
            workdir=tmp_path,
            on_line=lambda _: None,
            timeout=600,
        )
    message = str(info.value)
    assert "exited with code 1" in message and "stderr tail:" in message
    assert "max_depth" in message
    assert (tmp_path / "output" / "failure").read_text().startswith("training_error: xgboost")
