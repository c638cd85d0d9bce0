"""A whole DAG with ``backend: sagemaker`` through dag.test(), with AWS played by moto.

S3 and SageMaker are a moto server reached over HTTP through the Airflow AWS connection;
the training container is played by ``sagemaker_emulator`` (the documented script-mode
contract); MLflow is a real tracking server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from churn_sagemaker import DATA_DIR, aws_connection, churn_sagemaker_dag, moto_client
from sagemaker_emulator import install_into_moto

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BUCKET = "mlwp-dag-test"


@pytest.fixture
def sagemaker_on_moto(
    aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    s3 = moto_client("s3", aws_env)
    s3.create_bucket(Bucket=BUCKET)
    monkeypatch.setenv("MLWP_STORAGE_ROOT", f"s3://{BUCKET}/storage")
    # From here on, S3 and SageMaker are reached only through the Airflow AWS connection.
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(aws_env))
    undo = install_into_moto(lambda: moto_client("s3", aws_env), tmp_path / "containers")
    yield aws_env
    undo()


def test_churn_dag_trains_on_sagemaker_and_registers_like_local(
    sagemaker_on_moto: str, mlflow_tracking: str, dag_runner: Any
) -> None:
    import mlflow
    from airflow.utils.state import DagRunState

    dag = churn_sagemaker_dag("churn.train_sm", model="churn_sm")
    job_task = dag.get_task("train_job")
    assert job_task.deferrable is True  # waits on the triggerer, not in a worker slot
    run = dag_runner(dag)
    assert run.state == DagRunState.SUCCESS

    client = mlflow.MlflowClient(mlflow_tracking)
    versions = client.search_model_versions("name = 'churn_sm'")
    assert len(versions) == 1
    tags = versions[0].tags
    run_tags = client.get_run(versions[0].run_id).data.tags
    assert run_tags["mlwp.backend"] == "sagemaker"
    job_name = run_tags["mlwp.sagemaker.job_name"]
    assert job_name.startswith("mlwp-churn-train-")
    assert run_tags["mlwp.sagemaker.instance_type"] == "ml.m5.xlarge"
    assert run_tags["mlwp.sagemaker.job_arn"].startswith("arn:aws:sagemaker:")
    assert tags.get("mlwp.project", run_tags.get("mlwp.project")) == "churn"

    # The job really ran the entry point: its metric lines became SageMaker metrics,
    # and the model it wrote is what MLflow now serves.
    sagemaker = moto_client("sagemaker", sagemaker_on_moto)
    job = sagemaker.describe_training_job(TrainingJobName=job_name)
    metrics = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
    assert metrics.get("validation:roc_auc", 0) > 0.7, job["FinalMetricDataList"]
    logged = client.get_run(versions[0].run_id).data.metrics
    assert logged["validation_roc_auc"] == pytest.approx(metrics["validation:roc_auc"], abs=1e-6)
    model = mlflow.pyfunc.load_model(f"models:/churn_sm/{versions[0].version}")
    import pandas as pd

    raw = pd.read_csv(DATA_DIR / "telco_churn_sample.csv").drop(columns=["churn", "customer_id"])
    assert len(model.predict(raw.head(5))) == 5
