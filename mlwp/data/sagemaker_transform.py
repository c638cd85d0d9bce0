"""SageMaker Batch Transform requests for batch prediction, built by small pure functions.

``batch_predict`` with ``backend: sagemaker`` scores a stored dataset on SageMaker instead of
in mapped Airflow tasks (docs/scale.md). The model version registered in MLflow becomes a
SageMaker model: its mlwp model directory packed as ``model.tar.gz`` (:func:`model_archive`),
served by AWS's XGBoost framework container in script mode with mlwp's inference handler
(:mod:`mlwp.data.sagemaker_inference`, shipped in the same source tarball the training entry point
uses). The transform job reads the dataset's partitions listed in a manifest file (exactly
the partitions of its content-addressed manifest, nothing else under the prefix), sends each
Parquet file as one request (``SplitType: None``: SageMaker splits only line, RecordIO and
TFRecord files) and writes ``<file>.out`` beside each input's relative path.

These functions build CreateModel and CreateTransformJob; the Amazon provider's
``SageMakerTransformOperator`` submits them. Nothing here talks to AWS: every request is
unit-tested against botocore's parameter validation.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlwp.data.sagemaker_inference import CHUNK_ROWS_VARIABLE, OUTPUT_VARIABLE, PARQUET
from mlwp.training.sagemaker import INFERENCE_PROGRAM, SageMakerRequestError, _tags

CONTENT_TYPE = PARQUET
OUTPUT_SUFFIX = ".out"  # what SageMaker appends to an input's name for its output object
MODEL_ARCHIVE = "model.tar.gz"
MAX_PAYLOAD_MB = 100  # SageMaker's bound on MaxPayloadInMB x MaxConcurrentTransforms


@dataclass(frozen=True)
class TransformSpec:
    """Everything a Batch Transform job of one model over one dataset needs."""

    role_arn: str
    image_uri: str
    source_uri: str  # sourcedir.tar.gz holding the inference handler
    model_uri: str  # model.tar.gz of the mlwp model directory
    manifest_uri: str  # the input partitions (S3DataType ManifestFile)
    output_uri: str
    region: str
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    max_payload_mb: int = MAX_PAYLOAD_MB
    max_concurrent_transforms: int = 1
    invocation_timeout_seconds: int = 600
    invocation_retries: int = 1
    chunk_rows: int = 65_536
    # which input columns the container writes beside the predictions (batch_scoring.Output)
    output: Mapping[str, Any] = field(default_factory=lambda: {"keys": [], "join_input": False})
    subnets: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)


def model_request(*, name: str, spec: TransformSpec) -> dict[str, Any]:
    """CreateModel: the framework container running mlwp's handler on the packed model.

    ``SAGEMAKER_PROGRAM`` and ``SAGEMAKER_SUBMIT_DIRECTORY`` are how SageMaker's framework
    containers find a user's inference script (as the SageMaker SDK sets them for a
    framework model).
    """
    if not spec.role_arn.startswith("arn:"):
        raise SageMakerRequestError(
            f"sagemaker.role_arn: expected an IAM role ARN, got {spec.role_arn!r}"
        )
    request: dict[str, Any] = {
        "ModelName": name,
        "ExecutionRoleArn": spec.role_arn,
        "PrimaryContainer": {
            "Image": spec.image_uri,
            "ModelDataUrl": spec.model_uri,
            "Environment": {
                "SAGEMAKER_PROGRAM": INFERENCE_PROGRAM,
                "SAGEMAKER_SUBMIT_DIRECTORY": spec.source_uri,
                "SAGEMAKER_REGION": spec.region,
                "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
            },
        },
    }
    if spec.subnets or spec.security_group_ids:
        if not (spec.subnets and spec.security_group_ids):
            raise SageMakerRequestError(
                "sagemaker.vpc: give both subnets and security_group_ids, or neither"
            )
        request["VpcConfig"] = {
            "Subnets": list(spec.subnets),
            "SecurityGroupIds": list(spec.security_group_ids),
        }
    if spec.tags:
        request["Tags"] = _tags(spec.tags)
    return request


def transform_job_request(*, name: str, model_name: str, spec: TransformSpec) -> dict[str, Any]:
    """CreateTransformJob over the manifest's partitions, one Parquet file per request."""
    if spec.max_payload_mb * spec.max_concurrent_transforms > MAX_PAYLOAD_MB:
        raise SageMakerRequestError(
            "sagemaker.max_payload_mb x max_concurrent_transforms may be at most "
            f"{MAX_PAYLOAD_MB} MB, got {spec.max_payload_mb} x {spec.max_concurrent_transforms}"
        )
    request: dict[str, Any] = {
        "TransformJobName": name,
        "ModelName": model_name,
        "MaxConcurrentTransforms": spec.max_concurrent_transforms,
        "MaxPayloadInMB": spec.max_payload_mb,
        # One whole file per request: a Parquet file cannot be cut into records by SageMaker.
        "BatchStrategy": "SingleRecord",
        "ModelClientConfig": {
            "InvocationsTimeoutInSeconds": spec.invocation_timeout_seconds,
            "InvocationsMaxRetries": spec.invocation_retries,
        },
        # The container carries the input columns itself: SageMaker's own JoinSource and
        # OutputFilter work on CSV and JSON lines only, not on a Parquet body.
        "Environment": {
            CHUNK_ROWS_VARIABLE: str(spec.chunk_rows),
            OUTPUT_VARIABLE: json.dumps(dict(spec.output), sort_keys=True),
        },
        "TransformInput": {
            "DataSource": {
                "S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": spec.manifest_uri}
            },
            "ContentType": CONTENT_TYPE,
            "CompressionType": "None",
            "SplitType": "None",
        },
        "TransformOutput": {
            "S3OutputPath": spec.output_uri,
            "Accept": CONTENT_TYPE,
            "AssembleWith": "None",
        },
        "TransformResources": {
            "InstanceType": spec.instance_type,
            "InstanceCount": spec.instance_count,
        },
    }
    if spec.tags:
        request["Tags"] = _tags(spec.tags)
    return request


def input_manifest(prefix_uri: str, paths: Sequence[str]) -> bytes:
    """A ManifestFile listing ``paths`` relative to ``prefix_uri`` (SageMaker's format)."""
    prefix = prefix_uri.rstrip("/") + "/"
    return json.dumps([{"prefix": prefix}, *paths]).encode()


def output_key(output_uri: str, path: str) -> str:
    """Where the job writes the output of the input ``path`` (relative to the manifest)."""
    return f"{output_uri.rstrip('/')}/{path}{OUTPUT_SUFFIX}"


def check_payloads(sizes: Mapping[str, int], max_payload_mb: int) -> None:
    """Refuse partitions larger than one request may be, naming the largest."""
    limit = max_payload_mb * 1024 * 1024
    too_big = {path: size for path, size in sizes.items() if size > limit}
    if too_big:
        path, size = max(too_big.items(), key=lambda item: item[1])
        raise SageMakerRequestError(
            f"sagemaker.max_payload_mb: {len(too_big)} partition(s) exceed {max_payload_mb} MB "
            f"(the largest, {path}, is {size / 1024 / 1024:.1f} MB); each partition is one "
            "request: raise max_payload_mb (at most 100) or extract with a smaller "
            "rows_per_partition"
        )


def model_archive(model_dir: str | Path) -> bytes:
    """The mlwp model files of ``model_dir`` as a reproducible ``model.tar.gz``.

    SageMaker unpacks it into ``/opt/ml/model``, the directory the handler's ``model_fn``
    loads. Same files, same bytes: its sha256 names the SageMaker model.
    """
    from mlwp.model import METADATA_FILE, MODEL_FILE, PREPROCESSING_FILE

    source = Path(model_dir)
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w") as tar,
    ):
        for name in (MODEL_FILE, METADATA_FILE, PREPROCESSING_FILE):
            data = (source / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
