"""SageMaker distributed training: ``instance_count: 2``, the train split sharded by S3 key.

The request is validated by botocore and accepted by the moto server; the emulator then runs
it as SageMaker would with two instances: two containers at once, each with its shard of the
train split's partition objects and the whole validation and test splits. The entry points
meet through XGBoost's collective and train one model, streamed with external memory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from botocore.validate import validate_parameters
from churn_steps import churn_steps
from sagemaker_emulator import run_training_job
from server_process import free_port

from mlwp.data.transform import run_transform
from mlwp.model import load
from mlwp.training import sagemaker as sm
from mlwp.training.local import train_local
from mlwp.training.metrics import METRICS_BY_OBJECTIVE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "telco_churn_sample.csv"
BUCKET = "mlwp-sagemaker-distributed"
PARTS = 4
HYPERPARAMETERS = {
    "target": "churn",
    "objective": "binary",
    "num_boost_round": 40,
    "early_stopping_rounds": 5,
    "seed": 7,
    "max_depth": 3,
    "nthread": 1,
    "data": "external_memory",
}


def test_two_instances_train_one_model_on_sharded_partitions(aws_env: str, tmp_path: Path) -> None:
    result = run_transform(pd.read_csv(DATA), churn_steps())
    s3 = boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    base = "churn/sagemaker/job-2"
    channels = {}
    for split, frame in result.splits.items():
        # the train split as the partition files a partitioned transform writes
        bounds = np.linspace(0, len(frame), (PARTS if split == "train" else 1) + 1).astype(int)
        for index in range(len(bounds) - 1):
            piece = frame.iloc[bounds[index] : bounds[index + 1]]
            key = f"{base}/input/{split}/part-{index}.parquet"
            s3.put_object(Bucket=BUCKET, Key=key, Body=piece.to_parquet(index=False))
        channels[split] = f"s3://{BUCKET}/{base}/input/{split}"
    # as SageMakerRequestOperator stages it for several instances: a replicated channel
    s3.put_object(
        Bucket=BUCKET,
        Key=f"{base}/input/preprocessing/preprocessing.json",
        Body=result.preprocessing.to_json(),
    )
    channels["preprocessing"] = f"s3://{BUCKET}/{base}/input/preprocessing"
    code = sm.source_tarball()
    code_key = f"churn/code/{hashlib.sha256(code).hexdigest()}/{sm.SOURCE_TARBALL}"
    s3.put_object(Bucket=BUCKET, Key=code_key, Body=code)
    spec = sm.SageMakerJobSpec(
        role_arn="arn:aws:iam::123456789012:role/mlwp-sagemaker",
        image_uri=sm.xgboost_image_uri("us-east-1"),
        source_uri=f"s3://{BUCKET}/{code_key}",
        output_uri=f"s3://{BUCKET}/{base}/output",
        instance_count=2,
    )
    request = sm.training_job_request(
        name="mlwp-churn-train-2",
        spec=spec,
        hyperparameters=HYPERPARAMETERS,
        channels=channels,
        metrics=[f"validation:{m}" for m in METRICS_BY_OBJECTIVE["binary"]],
    )
    sagemaker = boto3.client("sagemaker", endpoint_url=aws_env, region_name="us-east-1")
    validate_parameters(
        request, sagemaker.meta.service_model.operation_model("CreateTrainingJob").input_shape
    )
    distribution = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3DataDistributionType"]
        for c in request["InputDataConfig"]
    }
    assert distribution == {
        "train": "ShardedByS3Key",
        "validation": "FullyReplicated",
        "test": "FullyReplicated",
        "preprocessing": "FullyReplicated",
    }
    sagemaker.create_training_job(**request)

    remote = run_training_job(request, s3, tmp_path / "job", tracker_port=free_port())

    first, second = remote["hosts"]
    # Each host had half of the train split's objects and all of the others.
    for host in (first, second):
        assert len(list((host / "input/data/train").glob("*.parquet"))) == PARTS // 2
        assert len(list((host / "input/data/validation").glob("*.parquet"))) == 1
    assert "host 127.0.0.2 of 2" in remote["logs"][1]
    assert "external memory" in remote["logs"][0]
    # One model, written by the first host; the second leaves its model folder empty.
    assert not (second / "model").exists() or not any((second / "model").iterdir())
    metadata = json.loads((remote["model_dir"] / "mlwp.json").read_text())
    assert metadata["rows"]["train"] == len(result.splits["train"])  # both hosts' rows

    # As good as one host trained on everything (same data, trees grown on the summed
    # histograms of both shards); served the same way.
    local = train_local(
        result.splits,
        result.preprocessing,
        {**HYPERPARAMETERS, "data": "in_memory"},
        workdir=tmp_path / "local",
    )
    reported = {m["MetricName"]: m["Value"] for m in remote["metrics"]}
    assert reported["validation:roc_auc"] == pytest.approx(
        local.metrics["validation:roc_auc"], abs=0.03
    )
    records = result.splits["test"].drop(columns=["churn"]).head(20).to_dict("records")
    assert len(load(remote["model_dir"]).predict(records).probabilities) == 20
