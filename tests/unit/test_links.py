"""Operator extra links: the URLs built for a browser, and which operator shows which link."""

from __future__ import annotations

import pytest

from operators import links


@pytest.fixture(autouse=True)
def _platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLWP_STORAGE_ROOT", "file:///srv/mlwp/storage")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.delenv("MLWP_MLFLOW_PUBLIC_URL", raising=False)


def test_mlflow_links_use_the_public_url_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert links.mlflow_run_url("abc", "7") == (
        "http://mlflow.internal:5000/#/experiments/7/runs/abc"
    )
    monkeypatch.setenv("MLWP_MLFLOW_PUBLIC_URL", "https://mlflow.example.org/")
    assert links.mlflow_model_version_url("churn model", 3) == (
        "https://mlflow.example.org/#/models/churn%20model/versions/3"
    )
    assert links.mlflow_run_url(None, "7") is None
    assert links.mlflow_model_version_url("churn", None) is None


def test_storage_links_stay_inside_the_platform_root() -> None:
    uri = "file:///srv/mlwp/storage/churn/datasets/extract/ab12.parquet"
    assert links.dataset_url(uri) == (
        "/mlwp/datasets?path=churn%2Fdatasets%2Fextract%2Fab12.parquet"
    )
    assert links.storage_file_url(
        "file:///srv/mlwp/storage/churn/datasets/extract/ab12.gx/raw/docs/index.html"
    ) == ("/mlwp/storage/churn/datasets/extract/ab12.gx/raw/docs/index.html")
    # Elsewhere: an S3 object opens the S3 console; a local file elsewhere has no link.
    assert links.dataset_url("s3://bucket/team/x.parquet") == (
        "https://s3.console.aws.amazon.com/s3/object/bucket?prefix=team%2Fx.parquet"
    )
    assert links.storage_file_url("file:///etc/passwd") is None
    assert links.storage_file_url("file:///srv/mlwp/storage/../../etc/passwd") is None


def test_sagemaker_console_urls() -> None:
    assert links.sagemaker_console_url("job-1", "eu-west-1", tuning=False) == (
        "https://eu-west-1.console.aws.amazon.com/sagemaker/home?region=eu-west-1#/jobs/job-1"
    )
    assert links.sagemaker_console_url("tune-1", "us-east-1", tuning=True).endswith(
        "#/hyper-tuning-jobs/tune-1"
    )
    assert links.sagemaker_console_url("job-1", None, tuning=False) is None


def test_each_task_type_shows_its_links() -> None:
    from operators.approve import ApproveOperator
    from operators.deploy import DeployOperator
    from operators.extract import ExtractOperator
    from operators.register import RegisterOperator
    from operators.sagemaker import SageMakerModelOperator
    from operators.sagemaker_jobs import SageMakerTrainingJobOperator, SageMakerTuningJobOperator
    from operators.train import TrainOperator
    from operators.transform import TransformOperator
    from operators.validate import ValidateOperator

    def names(cls: type) -> set[str]:
        return {link.name for link in cls.operator_extra_links}

    assert names(TrainOperator) == {"MLflow run"}
    assert names(RegisterOperator) == {"MLflow model version", "MLflow run"}
    assert names(ApproveOperator) == {"MLflow model version"}
    assert names(DeployOperator) == {"MLflow model version"}
    assert names(ValidateOperator) == {"GX data docs", "Stored dataset"}
    assert names(ExtractOperator) == names(TransformOperator) == {"Stored dataset"}
    assert names(SageMakerModelOperator) == {"MLflow run", "SageMaker job"}
    assert (
        names(SageMakerTrainingJobOperator)
        == names(SageMakerTuningJobOperator)
        == {"SageMaker job"}
    )
