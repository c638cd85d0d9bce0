"""terraform/iam.tf's serving role grants what serving writes to S3 with, and no more.

Serving's capture writer (serving.services.capture.CaptureBuffer, as the running service
flushes it) and the feedback route's call (mlwp.monitoring.capture.write_labels on serving's
capture root) write into an ``s3://`` storage root laid out as terraform/ lays out production
(the data bucket's root: outputs.tf ``storage_root``, which the Airflow pods and serving both
get) on a moto server. Every AWS call is recorded before it is sent (tests/aws_calls.py),
translated into the IAM authorizations AWS checks and evaluated against the statements of the
serving role, parsed from terraform/iam.tf: each must be allowed, each granted action must be
needed by a recorded call or listed in MARGIN with its reason, and nothing outside the capture
and label prefixes may be written.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aws_calls import (
    ACCOUNT,
    KMS_KEY_ARN,
    REGION,
    AwsCallRecorder,
    Permission,
    allowed,
    required_permissions,
    used_grants,
)
from terraform_hcl import TERRAFORM, load_module, resolve

pytestmark = pytest.mark.unit

DATA_BUCKET = "mlwp-iam-serving-data"
ROLE = "serving"

# Granted although no recorded call needs it: (statement id, action) -> why.
MARGIN = {
    ("BucketKey", "kms:Decrypt"): "a batch above s3fs's 50 MiB block goes up as a multipart "
    "upload, which SSE-KMS completes only with kms:Decrypt; the recorded batch is one PutObject",
}


def _statements() -> dict[str, dict[str, Any]]:
    module = load_module(TERRAFORM)
    substitutions = {
        "local.region": REGION,
        "local.partition": "aws",
        "local.account_id": ACCOUNT,
        "aws_kms_key.this.arn": KMS_KEY_ARN,
        "local.bucket_arns.data": f"arn:aws:s3:::{DATA_BUCKET}",
    }
    roles = module.locals["workload_roles"]
    assert roles[ROLE]["permissions"] == "${local.serving_permissions}"
    statements: dict[str, dict[str, Any]] = resolve(
        module.locals["serving_permissions"], module, substitutions
    )
    return statements


def _capture(model: str, inference_id: str) -> Any:
    from serving.services.capture import Captured

    return Captured(
        inference_id=inference_id,
        time_ms=1_764_000_000_000,
        model=model,
        version="1",
        variant="champion",
        served=True,
        routing_key=None,
        rows=1,
        request=orjson.dumps({"data": [{"tenure": 3, "customer_id": "c1"}]}),
        response=orjson.dumps({"predictions": [1], "probabilities": [[0.2, 0.8]]}),
        classes=[0, 1],
        latency_ms=1.0,
    )


def test_the_serving_role_grants_exactly_what_capture_and_feedback_write(
    aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    import s3fs

    from mlwp.monitoring.capture import read_capture, read_labels, write_labels
    from serving.core.config import ServingSettings
    from serving.core.metrics import Metrics
    from serving.services.capture import CaptureBuffer

    statements = _statements()  # parsed first: python-hcl2 is slow on a loaded machine
    boto3.client("s3").create_bucket(Bucket=DATA_BUCKET)
    root = f"s3://{DATA_BUCKET}"
    s3fs.S3FileSystem.clear_instance_cache()  # no session cached by an earlier test
    recorder = AwsCallRecorder()
    recorder.install(monkeypatch)
    settings = ServingSettings(home=tmp_path, storage_root=root)
    buffer = CaptureBuffer(settings, Metrics())
    # two models, two batches: every part a new object, the bucket probed per batch
    assert buffer.add(_capture("churn", "r1")) and buffer.add(_capture("upsell", "r2"))
    assert asyncio.run(buffer.flush()) == 2
    assert buffer.add(_capture("churn", "r3"))
    assert asyncio.run(buffer.flush()) == 1
    # what POST /v1/models/churn/feedback does (serving/api/routes/feedback.py)
    accepted, _ = write_labels(
        settings.capture_root, "churn", [{"inference_id": "r1", "label": 1}], source="api"
    )
    assert accepted == 1
    recorder.calls, calls = [], recorder.calls
    assert sorted(read_capture(root, "churn")["inference_id"]) == ["r1", "r3"]
    assert read_labels(root, "churn")["inference_id"].tolist() == ["r1"]

    written = [call.params["Key"] for call in calls if call.operation == "PutObject"]
    assert len(written) == 4
    assert sum(key.startswith("monitoring/capture/model=") for key in written) == 3
    assert sum(key.startswith("monitoring/labels/model=churn/") for key in written) == 1

    permissions: list[Permission] = [p for call in calls for p in required_permissions(call)]
    problems = [
        f"{ROLE}: {p.because} needs {p.action} on {p.resource}: no statement grants it"
        for p in permissions
        if not allowed(statements, p)
    ]
    used = used_grants(statements, permissions)
    granted = {(sid, action) for sid, st in statements.items() for action in st["actions"]}
    problems += [
        f"{ROLE}: statement {sid} grants {action}, which no recorded call needs"
        for sid, action in sorted(granted - used - MARGIN.keys())
    ]
    problems += [f"MARGIN lists {entry}, used or not granted" for entry in MARGIN.keys() & used]
    problems += [f"MARGIN lists {entry}, not granted" for entry in MARGIN.keys() - granted]
    assert not problems, "\n".join(problems)


def test_the_serving_role_writes_nowhere_but_captures_and_labels() -> None:
    statements = _statements()
    outside = [
        Permission("s3:PutObject", f"arn:aws:s3:::{DATA_BUCKET}/datasets/churn/x.parquet"),
        Permission("s3:PutObject", f"arn:aws:s3:::{DATA_BUCKET}/monitoring/reports/x"),
        Permission("s3:GetObject", f"arn:aws:s3:::{DATA_BUCKET}/monitoring/capture/model=m/x"),
        Permission("s3:DeleteObject", f"arn:aws:s3:::{DATA_BUCKET}/monitoring/capture/x"),
        Permission("s3:PutObject", "arn:aws:s3:::another-bucket/monitoring/capture/x"),
    ]
    assert [p for p in outside if allowed(statements, p)] == []
