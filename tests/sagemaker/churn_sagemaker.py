"""The churn DAG with ``backend: sagemaker`` and the moto plumbing its tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from churn_steps import churn_steps

DATA_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "data"
CHURN_PROJECT = Path(__file__).resolve().parents[2] / "dags" / "projects" / "churn"
REGION = "us-east-1"
EXECUTION_ROLE_ARN = "arn:aws:iam::123456789012:role/mlwp-sagemaker"


def moto_client(service: str, endpoint: str, session: Any = None) -> Any:
    """A boto3 client of the moto server (from ``session`` when given)."""
    import boto3

    factory = session.client if session is not None else boto3.client
    return factory(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def aws_connection(endpoint: str, **extra: Any) -> str:
    """AIRFLOW_CONN_AWS_DEFAULT pointing at moto, with the SageMaker extras."""
    import json

    return json.dumps(
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {
                "region_name": REGION,
                "endpoint_url": endpoint,
                "sagemaker_role_arn": EXECUTION_ROLE_ARN,
                **extra,
            },
        }
    )


def churn_sagemaker_dag(dag_id: str, model: str) -> Any:
    """extract -> features -> SageMaker train (request, job, model) -> register ``model``."""
    from airflow.sdk import DAG

    from operators.extract import ExtractOperator
    from operators.register import RegisterOperator
    from operators.sagemaker import sagemaker_train_tasks
    from operators.transform import TransformOperator

    context = {"project": "churn", "workflow": "train_sm", "project_dir": str(DATA_DIR)}
    with DAG(dag_id, schedule=None, catchup=False) as dag:
        extract = ExtractOperator(task_id="extract", source="telco_churn_sample.csv", **context)
        features = TransformOperator(task_id="features", steps=churn_steps(), **context)
        head, train = sagemaker_train_tasks(
            task_id="train",
            target="churn",
            objective="binary",
            hyperparameters={
                "target": "churn",
                "objective": "binary",
                "num_boost_round": 40,
                "early_stopping_rounds": 5,
                "seed": 7,
                "max_depth": 3,
            },
            sagemaker={"instance_type": "ml.m5.xlarge"},
            tuning=None,
            input=None,
            **context,
        )
        register = RegisterOperator(task_id="register", model=model, **context)
        extract >> features >> head
        train >> register
    return dag


def batch_transform_dag(tmp_path: Path, model: str, *, local: bool = False) -> Any:
    """``churn.score_sm``: extract (3 partitions of the churn project's data) -> ``predict``
    (SageMaker Batch Transform of ``model``'s champion) and, with ``local``, ``predict_local``
    (the mapped local tasks) on the same extract."""
    import shutil

    import yaml

    from mlwp.definitions.loading import load_project
    from operators.compiler import build_dag

    project_dir = tmp_path / "churn"
    shutil.copytree(CHURN_PROJECT, project_dir)
    document = yaml.safe_load((project_dir / "workflow.yaml").read_text())
    predict = {"type": "batch_predict", "after": ["extract"], "model": model, "chunk_rows": 1000}
    tasks: dict[str, Any] = {
        "extract": {
            "type": "extract",
            "source": "data/telco_churn.csv",
            "rows_per_partition": 3000,
        },
        "predict": {
            **predict,
            "backend": "sagemaker",
            "sagemaker": {"instance_type": "ml.c5.xlarge", "instance_count": 2},
        },
    }
    if local:
        tasks["predict_local"] = {**predict, "map_partitions": True}
    document["defaults"] = {"retries": 0}
    document["workflows"] = {"score_sm": {"tasks": tasks}}
    (project_dir / "workflow.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    dag = build_dag(
        load_project(project_dir / "workflow.yaml"), "score_sm", project_dir=project_dir
    )
    dag.access_control = None
    return dag
