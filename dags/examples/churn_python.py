"""The churn training workflow written in Python with the mlwp operators (an Airflow DAG).

It is the same pipeline as ``dags/projects/churn/workflow.yaml`` (workflow ``train``),
for teams that prefer to author DAGs in Python: each operator takes the same fields as the
YAML task type, plus the project context. Its dag_id is ``churn.train_python`` so that both
can be loaded side by side. Parsing imports nothing heavy: the operators import XGBoost,
Great Expectations and MLflow only when their task runs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Asset, Param

from operators.approve import ApproveOperator
from operators.deploy import DeployOperator
from operators.evaluate import EvaluateOperator
from operators.extract import ExtractOperator
from operators.register import RegisterOperator
from operators.train import TrainOperator
from operators.transform import TransformOperator
from operators.validate import ValidateOperator

PROJECT_DIR = Path(__file__).resolve().parent.parent / "projects" / "churn"
CONTEXT = {"project": "churn", "workflow": "train_python", "project_dir": str(PROJECT_DIR)}
ONEHOT = [
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


def dataset_asset(task_id: str) -> Asset:
    """The asset of a dataset-producing task, named as the compiler names them."""
    return Asset(name=f"churn.train_python.{task_id}", uri=f"mlwp://churn/train_python/{task_id}")


with DAG(
    dag_id="churn.train_python",
    description="Telco churn training, authored in Python with the mlwp operators.",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "alice", "retries": 2, "retry_delay": timedelta(minutes=5)},
    params={"min_roc_auc": Param(0.8, type="number")},
    tags=["mlwp", "project:churn", "example"],
) as dag:
    extract = ExtractOperator(
        task_id="extract",
        source="data/telco_churn.csv",
        outlets=[dataset_asset("extract")],
        **CONTEXT,
    )
    validate = ValidateOperator(task_id="validate", suite="telco_churn_raw", **CONTEXT)
    features = TransformOperator(
        task_id="features",
        input="extract",
        steps=[
            {"op": "drop", "columns": ["customer_id"]},
            {"op": "fill_missing", "columns": ["total_charges"], "value": 0},
            {"op": "cast", "columns": {"total_charges": "float"}},
            {"op": "ordinal", "columns": {"churn": ["No", "Yes"]}},
            {"op": "onehot", "columns": ONEHOT},
            {
                "op": "split",
                "test_size": 0.2,
                "validation_size": 0.15,
                "stratify": "churn",
                "seed": 42,
            },
        ],
        outlets=[dataset_asset("features")],
        **CONTEXT,
    )
    train = TrainOperator(
        task_id="train",
        target="churn",
        objective="binary",
        params={"max_depth": 4, "eta": 0.1, "subsample": 0.9},
        num_boost_round=200,
        early_stopping_rounds=20,
        tuning={
            "trials": 8,
            "metric": "roc_auc",
            "direction": "maximize",
            "ranges": {
                "max_depth": {"min": 3, "max": 8, "integer": True},
                "eta": {"min": 0.01, "max": 0.3, "log": True},
            },
        },
        execution_timeout=timedelta(hours=1),
        **CONTEXT,
    )
    evaluate = EvaluateOperator(
        task_id="evaluate", metrics=["roc_auc", "accuracy", "f1", "logloss"], **CONTEXT
    )
    register = RegisterOperator(
        task_id="register",
        model="churn",
        gate={"metric": "roc_auc", "min": 0.8, "beat": "champion"},
        **CONTEXT,
    )
    approve = ApproveOperator(task_id="approve", mode="human", approvers=["alice"], **CONTEXT)
    deploy = DeployOperator(
        task_id="deploy",
        model="churn",
        alias="challenger",
        traffic={"champion": 90, "challenger": 10},
        **CONTEXT,
    )

    extract >> validate >> features >> train >> evaluate >> register >> approve >> deploy
