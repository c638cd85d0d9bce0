"""The churn training workflow written as a Python Airflow DAG with the mlwp operators.

It is equivalent to ``workflow: train`` in ``dags/projects/churn/workflow.yaml`` (same tasks,
fields, edges, defaults, tags and access_control) and shows how to author a DAG in Python with
the same building blocks. Its dag_id is ``examples.churn_train`` so it can sit next to the YAML
one. To turn a definition object into a DAG from Python, call ``operators.compiler.build_dag``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param

from mlwp.security.roles import project_access_control
from operators.approve import ApproveOperator
from operators.deploy import DeployOperator
from operators.evaluate import EvaluateOperator
from operators.extract import ExtractOperator
from operators.register import RegisterOperator
from operators.rollout import RolloutApprovalOperator, RolloutOperator
from operators.train import TrainOperator
from operators.transform import TransformOperator
from operators.validate import ValidateOperator

PROJECT_DIR = str(Path(__file__).resolve().parent.parent / "projects" / "churn")
CONTEXT = {"project": "churn", "workflow": "train", "project_dir": PROJECT_DIR}

with DAG(
    dag_id="examples.churn_train",
    description="Extract, validate, featurise, train, register, approve and deploy.",
    # Weekly, or when the churn monitor finds drift (`{cron: "@weekly", assets: [...]}`).
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("@weekly", timezone="UTC"),
        assets=[Asset(name="churn.monitor.monitor", uri="x-mlwp://churn/monitor/monitor")],
    ),
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={
        "owner": "alice",
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "execution_timeout": timedelta(hours=2),
    },
    tags=["mlwp", "project:churn", "churn", "telco", "example"],
    access_control=project_access_control("churn"),
    params={"min_roc_auc": Param(0.8, type="number", description="Registration gate.")},
    doc_md=__doc__,
):
    extract = ExtractOperator(
        task_id="extract",
        source="data/telco_churn.csv",
        outlets=[
            Asset(name="examples.churn_train.extract", uri="x-mlwp://examples/churn_train/extract")
        ],
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
            {
                "op": "onehot",
                "columns": [
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
                ],
            },
            {
                "op": "split",
                "test_size": 0.2,
                "validation_size": 0.15,
                "stratify": "churn",
                "seed": 42,
            },
        ],
        outlets=[
            Asset(
                name="examples.churn_train.features", uri="x-mlwp://examples/churn_train/features"
            )
        ],
        **CONTEXT,
    )
    train = TrainOperator(
        task_id="train",
        target="churn",
        objective="binary",
        backend="local",
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
        gate={"metric": "roc_auc", "min": 0.8, "beat": "champion", "margin": 0.0},
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
    # The guarded rollout: the steps below 100 %, alice's answer with the evidence, then the
    # promotion. It lasts days: no compute deadline, and no retry (it would restart the steps).
    rollout = {
        "model": "churn",
        "steps": [10, 50, 100],
        "step_duration": 86400.0,
        "check_every": 900.0,
        "guardrails": {
            "max_error_rate": 0.01,
            "max_p99_latency_ms": 250,
            "min_requests": 100,
            "drift": True,
            "labels": True,
        },
        "execution_timeout": None,
        "retries": 0,
        **CONTEXT,
    }
    rollout_steps = RolloutOperator(task_id="rollout_steps", phase="steps", **rollout)
    rollout_approval = RolloutApprovalOperator(
        task_id="rollout_approval",
        model="churn",
        input="rollout_steps",
        subject="Promote the challenger of churn after its rollout?",
        mode="human",
        approvers=["alice"],
        allow_admins=True,
        execution_timeout=None,
        **CONTEXT,
    )
    promote = RolloutOperator(
        task_id="rollout", phase="promote", input="rollout_approval", **rollout
    )
    extract >> validate >> features >> train >> evaluate >> register >> approve >> deploy
    deploy >> rollout_steps >> rollout_approval >> promote
