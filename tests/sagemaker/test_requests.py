"""SageMaker requests: pure builders checked against botocore's own SageMaker service model."""

from __future__ import annotations

import io
import json
import tarfile

import botocore.session
import pytest
from botocore.validate import validate_parameters

from mlwp.training import sagemaker as sm
from mlwp.training.metrics import METRICS_BY_OBJECTIVE, metric_line

pytestmark = pytest.mark.unit

ROLE = "arn:aws:iam::123456789012:role/mlwp-sagemaker"
CHANNELS = {
    "train": "s3://bucket/churn/sagemaker/job/input/train",
    "validation": "s3://bucket/churn/sagemaker/job/input/validation",
}
METRICS = [f"validation:{m}" for m in METRICS_BY_OBJECTIVE["binary"]]


def _service_model():  # type: ignore[no-untyped-def]
    return botocore.session.get_session().get_service_model("sagemaker")


def _validate(operation: str, request: dict) -> None:
    shape = _service_model().operation_model(operation).input_shape
    validate_parameters(request, shape)  # raises ParamValidationError listing every problem


def _spec(**overrides: object) -> sm.SageMakerJobSpec:
    values: dict = {
        "role_arn": ROLE,
        "image_uri": "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:3.2-0",
        "source_uri": "s3://bucket/churn/code/abc/sourcedir.tar.gz",
        "output_uri": "s3://bucket/churn/sagemaker/job/output",
    }
    values.update(overrides)
    return sm.SageMakerJobSpec(**values)


def test_image_is_the_xgboost_framework_matching_the_locked_xgboost() -> None:
    uri = sm.xgboost_image_uri("us-east-1")
    assert uri.endswith("/sagemaker-xgboost:3.2-0")
    assert sm.XGBOOST_FRAMEWORK_VERSION == "3.2-0"


def test_training_request_passes_botocore_validation() -> None:
    request = sm.training_job_request(
        name="mlwp-churn-train-1a2b3c4d-1",
        spec=_spec(tags={"mlwp:project": "churn"}),
        hyperparameters={"target": "churn", "objective": "binary", "max_depth": 4, "eta": 0.1},
        channels=CHANNELS,
        metrics=METRICS,
    )
    _validate("CreateTrainingJob", request)
    hyper = request["HyperParameters"]
    # Script mode: every value a JSON string, plus the program and its tarball.
    assert json.loads(hyper["max_depth"]) == 4
    assert json.loads(hyper["sagemaker_program"]) == sm.ENTRY_POINT
    assert json.loads(hyper["sagemaker_submit_directory"]).endswith("sourcedir.tar.gz")
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == ["train", "validation"]


def test_spot_vpc_and_checkpoints_pass_validation() -> None:
    request = sm.training_job_request(
        name="job",
        spec=_spec(
            spot=True,
            max_runtime_seconds=3600,
            checkpoint_uri="s3://bucket/churn/checkpoints",
            subnets=("subnet-1",),
            security_group_ids=("sg-1",),
            instance_type="ml.m5.2xlarge",
            instance_count=2,
        ),
        hyperparameters={"target": "churn"},
        channels=CHANNELS,
        metrics=METRICS,
    )
    _validate("CreateTrainingJob", request)
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"]["MaxWaitTimeInSeconds"] == 7200
    assert request["VpcConfig"] == {"Subnets": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}


def test_metric_definitions_match_the_entry_points_metric_lines() -> None:
    import re

    request = sm.training_job_request(
        name="job", spec=_spec(), hyperparameters={}, channels=CHANNELS, metrics=METRICS
    )
    definitions = request["AlgorithmSpecification"]["MetricDefinitions"]
    log = "\n".join(metric_line(d["Name"], 0.8125) for d in definitions)
    for definition in definitions:
        match = re.search(definition["Regex"], log)
        assert match is not None, definition
        assert float(match.group(1)) == pytest.approx(0.8125)


def test_tuning_request_passes_botocore_validation() -> None:
    request = sm.tuning_job_request(
        name="mlwp-churn-train-1a2b3c4d-1",
        spec=_spec(),
        static_hyperparameters={"target": "churn", "objective": "binary", "max_depth": 4},
        channels=CHANNELS,
        metrics=METRICS,
        objective_metric="validation:roc_auc",
        direction="maximize",
        ranges={
            "max_depth": {"min": 2, "max": 8, "integer": True},
            "eta": {"min": 0.01, "max": 0.3, "log": True},
            "grow_policy": {"values": ["depthwise", "lossguide"]},
        },
        max_jobs=20,
        max_parallel_jobs=4,
        strategy="bayesian",
        seed=7,
    )
    _validate("CreateHyperParameterTuningJob", request)
    config = request["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {
        "Type": "Maximize",
        "MetricName": "validation:roc_auc",
    }
    ranges = config["ParameterRanges"]
    assert ranges["IntegerParameterRanges"][0] == {
        "Name": "max_depth",
        "MinValue": "2",
        "MaxValue": "8",
        "ScalingType": "Auto",
    }
    assert ranges["ContinuousParameterRanges"][0]["ScalingType"] == "Logarithmic"
    # A tuned parameter is not also static.
    assert "max_depth" not in request["TrainingJobDefinition"]["StaticHyperParameters"]
    assert len(request["HyperParameterTuningJobName"]) <= 32


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: _spec(role_arn="mlwp-role"), "role_arn"),
        (lambda: _spec(subnets=("subnet-1",)), "vpc"),
        (lambda: _spec(spot=True, max_wait_seconds=10), "max_wait"),
    ],
)
def test_bad_settings_name_the_field(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(sm.SageMakerRequestError, match=message):
        sm.training_job_request(
            name="job", spec=call(), hyperparameters={}, channels=CHANNELS, metrics=METRICS
        )


def test_bad_tuning_strategy_names_allowed_values() -> None:
    with pytest.raises(sm.SageMakerRequestError, match=r"tuning.strategy.*'annealing'"):
        sm.tuning_job_request(
            name="job",
            spec=_spec(),
            static_hyperparameters={},
            channels=CHANNELS,
            metrics=METRICS,
            objective_metric="validation:roc_auc",
            direction="maximize",
            ranges={"eta": {"min": 0.1, "max": 0.2}},
            max_jobs=2,
            max_parallel_jobs=1,
            strategy="annealing",
        )


def test_job_names_are_valid_and_deterministic() -> None:
    long = sm.job_name("mlwp", "a" * 50, "train_model", "manual__2026-11-23T10:00:00+00:00")
    assert len(long) <= 63
    assert long == sm.job_name("mlwp", "a" * 50, "train_model", "manual__2026-11-23T10:00:00+00:00")
    assert all(c.isalnum() or c == "-" for c in long)


def test_source_tarball_is_reproducible_and_self_contained() -> None:
    first, second = sm.source_tarball(), sm.source_tarball()
    assert first == second  # same code, same bytes: its sha256 names the code version
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        names = set(tar.getnames())
    assert {sm.ENTRY_POINT, "requirements.txt", "mlwp/training/entrypoint.py"} <= names
    assert not any(name.startswith(("operators/", "serving/")) for name in names)


def test_several_instances_shard_the_train_channel_by_s3_key() -> None:
    request = sm.training_job_request(
        name="job",
        spec=_spec(instance_count=3),
        hyperparameters={"target": "churn", "data": "external_memory"},
        channels=CHANNELS,
        metrics=METRICS,
    )
    _validate("CreateTrainingJob", request)
    assert request["ResourceConfig"]["InstanceCount"] == 3
    distribution = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3DataDistributionType"]
        for c in request["InputDataConfig"]
    }
    # each host gets about a third of the train split's partition objects, all of the others
    assert distribution == {"train": "ShardedByS3Key", "validation": "FullyReplicated"}
    single = sm.training_job_request(
        name="job", spec=_spec(), hyperparameters={}, channels=CHANNELS, metrics=METRICS
    )
    assert {
        c["DataSource"]["S3DataSource"]["S3DataDistributionType"] for c in single["InputDataConfig"]
    } == {"FullyReplicated"}
