"""The SageMaker backend and the local backend are one: same entry point, same model.

The request the SageMaker path builds is run the way SageMaker's container runs it (see
``sagemaker_emulator``): channels from S3 (moto server), hyperparameters verbatim, the program
from the uploaded source tarball. With the same seed it must produce the very booster the
local backend produces.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import boto3
import pandas as pd
import pytest
from churn_steps import churn_steps
from sagemaker_emulator import run_training_job

from mlwp.data.transform import run_transform
from mlwp.model import load
from mlwp.training import sagemaker as sm
from mlwp.training.local import train_local
from mlwp.training.metrics import METRICS_BY_OBJECTIVE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "telco_churn_sample.csv"
BUCKET = "mlwp-sagemaker-test"
STEPS = churn_steps()
HYPERPARAMETERS = {
    "target": "churn",
    "objective": "binary",
    "num_boost_round": 40,
    "early_stopping_rounds": 5,
    "seed": 7,
    "max_depth": 3,
    "eta": 0.2,
}


def test_sagemaker_request_trains_the_same_model_as_the_local_backend(
    aws_env: str, tmp_path: Path
) -> None:
    frame = pd.read_csv(DATA)
    result = run_transform(frame, STEPS)
    local = train_local(
        result.splits, result.preprocessing, HYPERPARAMETERS, workdir=tmp_path / "local"
    )

    # Stage channels and code as SageMakerRequestOperator does.
    s3 = boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    base = "churn/sagemaker/job-1"
    channels = {}
    for split, split_frame in result.splits.items():
        key = f"{base}/input/{split}/data.parquet"
        s3.put_object(Bucket=BUCKET, Key=key, Body=split_frame.to_parquet(index=False))
        channels[split] = f"s3://{BUCKET}/{base}/input/{split}"
    s3.put_object(
        Bucket=BUCKET,
        Key=f"{base}/input/train/preprocessing.json",
        Body=result.preprocessing.to_json(),
    )
    code = sm.source_tarball()
    code_key = f"churn/code/{hashlib.sha256(code).hexdigest()}/{sm.SOURCE_TARBALL}"
    s3.put_object(Bucket=BUCKET, Key=code_key, Body=code)
    spec = sm.SageMakerJobSpec(
        role_arn="arn:aws:iam::123456789012:role/mlwp-sagemaker",
        image_uri=sm.xgboost_image_uri("us-east-1"),
        source_uri=f"s3://{BUCKET}/{code_key}",
        output_uri=f"s3://{BUCKET}/{base}/output",
    )
    request = sm.training_job_request(
        name="mlwp-churn-train-1",
        spec=spec,
        hyperparameters=HYPERPARAMETERS,
        channels=channels,
        metrics=[f"validation:{m}" for m in METRICS_BY_OBJECTIVE["binary"]],
    )
    # moto accepts the request as SageMaker would (botocore validates it on the way).
    boto3.client("sagemaker", endpoint_url=aws_env, region_name="us-east-1").create_training_job(
        **request
    )
    remote = run_training_job(request, s3, tmp_path / "container")

    assert (remote["model_dir"] / "model.ubj").read_bytes() == (
        local.model_dir / "model.ubj"
    ).read_bytes()
    # The metric definitions pick up the same numbers the local backend parsed.
    reported = {m["MetricName"]: m["Value"] for m in remote["metrics"]}
    assert reported["validation:roc_auc"] == pytest.approx(
        local.metrics["validation:roc_auc"], abs=1e-6
    )
    # Served the same: identical predictions on raw records.
    records = result.splits["test"].drop(columns=["churn"]).head(20).to_dict("records")
    assert (
        load(remote["model_dir"]).predict(records).probabilities
        == load(local.model_dir).predict(records).probabilities
    )
    # The container imported mlwp from the tarball, not from this checkout.
    assert (remote["imported_from"] / "mlwp" / "training" / "entrypoint.py").is_file()
