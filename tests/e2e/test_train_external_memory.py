"""Training beyond memory through the real operators (issue #16): a partitioned extract, its
transform into partitioned splits, and ``data: external_memory`` training that streams the
split files through XGBoost's external memory, tracked in the real MLflow and registered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from churn_steps import churn_steps

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DATA_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def external_memory_dag(dag_id: str, model: str) -> Any:
    from airflow.sdk import DAG

    from operators.extract import ExtractOperator
    from operators.register import RegisterOperator
    from operators.train import TrainOperator
    from operators.transform import TransformOperator

    context = {"project": "churn", "workflow": "train_big", "project_dir": str(DATA_DIR)}
    with DAG(dag_id, schedule=None, catchup=False) as dag:
        extract = ExtractOperator(
            task_id="extract",
            source="telco_churn_sample.csv",
            rows_per_partition=400,
            **context,
        )
        features = TransformOperator(task_id="features", steps=churn_steps(), **context)
        train = TrainOperator(
            task_id="train",
            target="churn",
            params={"max_depth": 3, "nthread": 1},
            num_boost_round=30,
            early_stopping_rounds=5,
            seed=7,
            data="external_memory",
            **context,
        )
        register = RegisterOperator(task_id="register", model=model, **context)
        extract >> features >> train >> register
    return dag


def test_external_memory_training_registers_a_model_that_serves(
    pipeline_env: Path, mlflow_tracking: str, dag_runner: Any
) -> None:
    import mlflow
    import pandas as pd
    from airflow.utils.state import DagRunState

    run = dag_runner(external_memory_dag("churn.train_big", "churn_big"))
    assert run.state == DagRunState.SUCCESS

    client = mlflow.MlflowClient(mlflow_tracking)
    (version,) = client.search_model_versions("name = 'churn_big'")
    logged = client.get_run(version.run_id).data
    assert logged.params["data"] == "external_memory"
    assert logged.metrics["validation_roc_auc"] > 0.7
    assert "test_roc_auc" in logged.metrics and "best_iteration" in logged.metrics
    # The MLflow model is the same two-flavour model serving loads.
    model = mlflow.pyfunc.load_model(f"models:/churn_big/{version.version}")
    raw = pd.read_csv(DATA_DIR / "telco_churn_sample.csv").drop(columns=["churn", "customer_id"])
    assert len(model.predict(raw.head(5))) == 5
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "plots")}
    assert "plots/roc.png" in artifacts
