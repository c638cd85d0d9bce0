"""``batch_predict`` with ``backend: sagemaker`` through dag.test(), with AWS played by moto.

One DAG compiled from a definition scores the same partitioned extract twice: with the
Batch Transform backend (S3 and SageMaker a moto server reached through the Airflow AWS
connection, the container played by ``sagemaker_emulator`` running the handler from the
uploaded source tarball) and with the mapped local tasks. Both outputs must be the same rows,
with the same lineage. MLflow is a real tracking server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from churn_sagemaker import aws_connection, batch_transform_dag, moto_client
from sagemaker_emulator import install_into_moto

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHURN = ROOT / "dags" / "projects" / "churn"
BUCKET = "mlwp-transform-test"
MODEL = "churn_bt"


@pytest.fixture
def sagemaker_on_moto(
    aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    moto_client("s3", aws_env).create_bucket(Bucket=BUCKET)
    monkeypatch.setenv("MLWP_STORAGE_ROOT", f"s3://{BUCKET}/storage")
    # From here on, S3 and SageMaker are reached only through the Airflow AWS connection.
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(aws_env))
    containers = tmp_path / "containers"
    undo = install_into_moto(lambda: moto_client("s3", aws_env), containers)
    yield containers
    undo()


@pytest.fixture
def champion(mlflow_tracking: str, tmp_path: Path) -> str:
    """A small churn model logged to MLflow, registered as ``MODEL`` with the champion alias."""
    import mlflow

    from mlwp import registry
    from mlwp.data.transform import run_transform
    from mlwp.training import entrypoint
    from mlwp.training.local import prepare_workdir
    from mlwp.training.tracking import log_model_run

    document = yaml.safe_load((CHURN / "workflow.yaml").read_text())
    steps = document["workflows"]["train"]["tasks"]["features"]["steps"]
    result = run_transform(pd.read_csv(CHURN / "data" / "telco_churn.csv"), steps)
    workdir = tmp_path / "train"
    hyperparameters = {"target": "churn", "num_boost_round": 20, "max_depth": 3, "seed": 1}
    entrypoint.run(prepare_workdir(workdir, result.splits, result.preprocessing, hyperparameters))
    mlflow.set_tracking_uri(mlflow_tracking)
    client = mlflow.MlflowClient()
    run = client.create_run(client.create_experiment(f"bt-{tmp_path.name}"))
    tracked = log_model_run(
        run.info.run_id, workdir / "model", splits=result.splits, metrics={}, params={}
    )
    client.set_terminated(run.info.run_id)
    lineage = registry.Lineage(
        project="churn", mlflow_run_id=run.info.run_id, dataset_uri="s3://x", dataset_sha256="0"
    )
    version = registry.register(MODEL, tracked.model_uri, lineage).version
    client.set_registered_model_alias(MODEL, "champion", version)
    return str(version)


def score_dag(tmp_path: Path) -> Any:
    """extract (3 partitions) -> predict (SageMaker Batch Transform) and predict_local (mapped)."""
    return batch_transform_dag(tmp_path, MODEL, local=True)


SCORES = ["prediction", "probability_No", "probability_Yes"]


def test_batch_transform_scores_like_the_mapped_local_tasks(
    sagemaker_on_moto: Path, champion: str, dag_runner: Any, tmp_path: Path, aws_env: str
) -> None:
    from airflow.utils.state import DagRunState

    from mlwp.data.storage import Storage

    dag = score_dag(tmp_path)
    assert dag.get_task("predict_job").deferrable is True  # waits on the triggerer
    assert dag.get_task("predict_request").upstream_task_ids == {"extract"}
    run = dag_runner(dag)
    assert run.state == DagRunState.SUCCESS, {
        ti.task_id: ti.state for ti in run.get_task_instances()
    }

    storage = Storage(
        f"s3://{BUCKET}/storage",
        key="testing",
        secret="testing",
        client_kwargs={"endpoint_url": aws_env, "region_name": "us-east-1"},
    )
    (sidecar,) = storage.versions("churn", "predict")
    (local_sidecar,) = storage.versions("churn", "predict_local")
    assert sidecar["layout"] == "partitioned" and len(sidecar["partitions"]) == 3
    assert sidecar["rows"] == local_sidecar["rows"] == 7043
    # The same lineage as the local forms, plus the backend and the job.
    for key in ("model", "alias", "version", "input_sha256"):
        assert sidecar["metadata"][key] == local_sidecar["metadata"][key], key
    assert sidecar["metadata"]["version"] == champion
    assert sidecar["metadata"]["backend"] == "sagemaker"
    assert sidecar["source"] == local_sidecar["source"]
    assert sidecar["produced_by"]["dag_id"] == "churn.score_sm"
    assert sidecar["produced_by"]["task_id"] == "predict"
    job_name = sidecar["metadata"]["sagemaker"]["job_name"]
    assert job_name.startswith("mlwp-churn-predict-")
    document = {"uri": sidecar["uri"]}
    local_document = {"uri": local_sidecar["uri"]}

    # Same answers, row by row, in the same order.
    scored = storage.read_dataset(document["uri"])
    local = storage.read_dataset(local_document["uri"])
    # The lean default: each row's position in the input, numbered across the partitions
    # (the container numbers each request from 0; the collect task shifts them).
    assert list(scored.columns) == list(local.columns) == ["row", *SCORES]
    assert scored["row"].tolist() == local["row"].tolist() == list(range(7043))
    assert scored["prediction"].tolist() == local["prediction"].tolist()
    assert (scored["probability_Yes"] - local["probability_Yes"]).abs().max() < 1e-9

    # What SageMaker was asked for: the model made from the MLflow version, the manifest.
    sagemaker = moto_client("sagemaker", aws_env)
    job = sagemaker.describe_transform_job(TransformJobName=job_name)
    assert job["TransformResources"] == {"InstanceType": "ml.c5.xlarge", "InstanceCount": 2}
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3DataType"] == "ManifestFile"
    model = sagemaker.describe_model(ModelName=job["ModelName"])
    assert model["ModelName"].startswith(f"mlwp-churn-{MODEL.replace('_', '-')}-v{champion}-")
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "mlwp_inference.py"
    # The container imported mlwp's handler from the uploaded tarball.
    assert (
        sagemaker_on_moto / job_name / "code" / "mlwp" / "data" / "sagemaker_inference.py"
    ).is_file()
