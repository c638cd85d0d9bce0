"""Tiny real churn models trained on the telco data, saved in the mlwp model format and
registered in an MLflow server; shared by the serving tests and bench/serving. The features
are the churn example's own transform steps (``tests/churn_steps.py``)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
TELCO_CSV = REPO_ROOT / "dags" / "projects" / "churn" / "data" / "telco_churn.csv"


def feature_steps() -> list[dict[str, Any]]:
    """The churn example's transform steps, from ``tests/churn_steps.py``.

    Under pytest ``tests/`` is on ``sys.path`` already; bench/serving loads this file by path
    outside pytest, so it is added here when missing.
    """
    tests = str(REPO_ROOT / "tests")
    if tests not in sys.path:
        sys.path.append(tests)
    from churn_steps import churn_steps

    return churn_steps()


def train_model_dir(
    target_dir: Path, *, rounds: int = 20, max_depth: int = 3, seed: int = 0
) -> Path:
    """Train a small XGBoost churn model through mlwp's transform and save an mlwp model
    directory with an MLmodel file (python_function via mlwp.model, plus xgboost)."""
    import pandas as pd
    import xgboost
    from mlflow.models import Model as MlflowModel

    from mlwp import model as mlwp_model
    from mlwp.data.transform import run_transform

    frame = pd.read_csv(TELCO_CSV)
    result = run_transform(frame, feature_steps())
    preprocessing = result.preprocessing.with_target("churn")
    train = result.splits["train"]
    matrix = preprocessing.transform_frame(train)
    labels = preprocessing.transform_label(train["churn"].to_numpy(dtype=object))
    dtrain = xgboost.DMatrix(matrix, label=labels, feature_names=preprocessing.outputs)
    booster = xgboost.train(
        {
            "objective": "binary:logistic",
            "max_depth": max_depth,
            "eta": 0.3,
            "seed": seed,
            "nthread": 1,
        },
        dtrain,
        num_boost_round=rounds,
    )
    root = mlwp_model.save(
        target_dir,
        booster,
        preprocessing,
        objective="binary",
        classes=preprocessing.label_classes or ["No", "Yes"],
    )
    mlmodel = MlflowModel()
    mlmodel.add_flavor("python_function", loader_module="mlwp.model", python_version="3.11")
    mlmodel.add_flavor(
        "xgboost",
        xgb_version=xgboost.__version__,
        data=mlwp_model.MODEL_FILE,
        model_class="xgboost.core.Booster",
        model_format="ubj",
    )
    mlmodel.save(str(root / "MLmodel"))
    return root


def sample_records(count: int = 5, offset: int = 0) -> list[dict[str, Any]]:
    """Raw telco rows as a client would send them (no id, no label)."""
    import pandas as pd

    frame = pd.read_csv(TELCO_CSV).iloc[offset : offset + count]
    frame = frame.drop(columns=["customer_id", "churn"])
    records: list[dict[str, Any]] = json.loads(frame.to_json(orient="records"))
    return records


def register_version(
    tracking_uri: str, name: str, model_dir: Path, *, aliases: tuple[str, ...] = ()
) -> str:
    """Log ``model_dir`` as a run's ``model`` artifact and register it; returns the version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name)
    experiment = client.get_experiment_by_name("serving-tests")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("serving-tests")
    )
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(
        name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def set_traffic(tracking_uri: str, name: str, traffic: dict[str, float]) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).set_registered_model_tag(
        name, "mlwp.traffic", json.dumps(traffic)
    )


def corrupt_model_dir(source: Path) -> Path:
    """A copy of ``source`` whose booster file is garbage: loads fail, clearly."""
    import shutil

    target = Path(tempfile.mkdtemp(prefix="corrupt-model-")) / "model"
    shutil.copytree(source, target)
    (target / "model.ubj").write_bytes(b"this is not a booster")
    return target


def mismatched_model_dir(source: Path, features: int = 5) -> Path:
    """A copy of ``source`` whose booster was trained on ``features`` columns, not on what
    the copy's preprocessing produces (a feature set that drifted from its preprocessing)."""
    import shutil

    import numpy as np
    import xgboost

    target = Path(tempfile.mkdtemp(prefix="mismatched-model-")) / "model"
    shutil.copytree(source, target)
    rng = np.random.default_rng(0)
    data = xgboost.DMatrix(rng.random((50, features)), label=rng.integers(0, 2, 50))
    booster = xgboost.train({"objective": "binary:logistic", "nthread": 1}, data, 3)
    booster.save_model(str(target / "model.ubj"))
    return target
