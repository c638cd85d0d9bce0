"""``backend: sagemaker`` compiles to request -> provider job (deferrable) -> model tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlwp.definitions import Project

pytestmark = pytest.mark.unit

CHURN = Path(__file__).resolve().parents[2] / "dags" / "projects" / "churn" / "workflow.yaml"


def _churn(tuning: bool = True, **sagemaker: object) -> Project:
    document = yaml.safe_load(CHURN.read_text())
    train = document["workflows"]["train"]["tasks"]["train"]
    if not tuning:
        train.pop("tuning", None)
    train["backend"] = "sagemaker"
    train["sagemaker"] = {
        "instance_type": "ml.m5.xlarge",
        "role_arn": "arn:aws:iam::123456789012:role/mlwp-sagemaker",
        **sagemaker,
    }
    return Project.model_validate(document)


def test_sagemaker_train_becomes_three_tasks_wired_like_one() -> None:
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTuningOperator

    from operators.compiler import build_dag
    from operators.sagemaker import SageMakerModelOperator, SageMakerRequestOperator

    project = _churn(max_runtime="1h", spot=True, max_wait="3h")
    dag = build_dag(project, "train", project_dir=CHURN.parent)
    request, job, model = (dag.get_task(t) for t in ("train_request", "train_job", "train"))
    assert isinstance(request, SageMakerRequestOperator)
    # The definition asks for tuning, so the job is a SageMaker tuning job.
    assert isinstance(job, SageMakerTuningOperator)
    assert job.deferrable is True
    assert isinstance(model, SageMakerModelOperator)
    assert request.upstream_task_ids == {"features"}
    assert job.upstream_task_ids == {"train_request"}
    assert model.upstream_task_ids == {"train_job"}
    assert "train" in dag.get_task("evaluate").upstream_task_ids
    assert request.sagemaker["max_runtime_seconds"] == 3600
    assert request.sagemaker["max_wait_seconds"] == 3 * 3600
    assert request.sagemaker["spot"] is True
    assert request.tuning["trials"] == project.workflows["train"].tasks["train"].tuning.trials
    # Retries of the definition apply to each of the three tasks.
    assert request.retries == job.retries == model.retries


def test_without_tuning_the_job_is_a_training_job() -> None:
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator

    from operators.compiler import build_dag

    project = _churn(tuning=False)
    dag = build_dag(project, "train", project_dir=CHURN.parent)
    job = dag.get_task("train_job")
    assert isinstance(job, SageMakerTrainingOperator)
    assert job.deferrable is True
    assert job.action_if_job_exists == "timestamp"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"subnets": ["subnet-1"]}, "security_group_ids"),
        ({"max_runtime": "2h", "max_wait": "1h"}, "max_wait"),
        ({"role_arn": "mlwp-role"}, "role_arn"),
        ({"instance_typ": "ml.m5.xlarge"}, "instance_typ"),
    ],
)
def test_bad_sagemaker_settings_are_rejected_naming_the_field(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _churn(**settings)


def test_sagemaker_batch_predict_becomes_request_transform_job_and_collect() -> None:
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTransformOperator

    from operators.batch_transform import (
        BatchTransformCollectOperator,
        BatchTransformRequestOperator,
    )
    from operators.compiler import build_dag

    document = yaml.safe_load(CHURN.read_text())
    predict = document["workflows"]["score"]["tasks"]["predict"]
    predict["backend"] = "sagemaker"
    predict["sagemaker"] = {"instance_count": 3, "invocation_timeout": "30m"}
    dag = build_dag(Project.model_validate(document), "score", project_dir=CHURN.parent)
    request, job, collect = (dag.get_task(t) for t in ("predict_request", "predict_job", "predict"))
    assert isinstance(request, BatchTransformRequestOperator)
    assert isinstance(job, SageMakerTransformOperator) and job.deferrable is True
    assert job.action_if_job_exists == "timestamp"
    assert isinstance(collect, BatchTransformCollectOperator)
    assert request.upstream_task_ids == {"extract"}
    assert job.upstream_task_ids == {"predict_request"}
    assert collect.upstream_task_ids == {"predict_job"}
    # The asset event stays on the task that keeps the definition's id.
    assert collect.outlets and not request.outlets and not job.outlets
    assert request.sagemaker["instance_count"] == 3
    assert request.sagemaker["invocation_timeout_seconds"] == 1800
    assert request.sagemaker["instance_type"] == "ml.m5.xlarge"
