"""SageMaker requests for the training entry point, built by small pure functions.

The SageMaker backend runs the very entry point the local backend runs
(``mlwp.training.entrypoint``), in AWS's XGBoost framework container in script mode. These
functions only build the request dictionaries (CreateTrainingJob,
CreateHyperParameterTuningJob) and the source tarball; the Amazon provider's operators submit
them. Nothing here talks to AWS, so every request is unit-tested against botocore's own
parameter validation.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlwp.errors import MlwpError

# The XGBoost framework container that matches the locked xgboost (3.2.x).
XGBOOST_FRAMEWORK_VERSION = "3.2-0"
ENTRY_POINT = "mlwp_train.py"
# The inference script of Batch Transform (mlwp.data.sagemaker_inference), in the same tarball.
INFERENCE_PROGRAM = "mlwp_inference.py"
SOURCE_TARBALL = "sourcedir.tar.gz"
# SageMaker job names: 1-63 characters, alphanumerics and hyphens, no leading hyphen.
_JOB_NAME_MAX = 63
_JOB_NAME_INVALID = re.compile(r"[^a-zA-Z0-9-]+")
_TUNING_NAME_MAX = 32
_STRATEGIES = {"bayesian": "Bayesian", "random": "Random", "hyperband": "Hyperband", "grid": "Grid"}


class SageMakerRequestError(MlwpError):
    """A SageMaker setting cannot be turned into a valid request."""

    code = "sagemaker_request_error"


@dataclass(frozen=True)
class SageMakerJobSpec:
    """Everything a training job needs besides hyperparameters and data."""

    role_arn: str
    image_uri: str
    source_uri: str
    output_uri: str
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    volume_size_gb: int = 30
    max_runtime_seconds: int = 3600
    spot: bool = False
    max_wait_seconds: int | None = None
    checkpoint_uri: str | None = None
    subnets: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)


def job_name(*parts: str, limit: int = _JOB_NAME_MAX) -> str:
    """Return a valid, deterministic SageMaker job name made from ``parts``.

    Deterministic so that a retried Airflow task finds the job it already started instead of
    launching (and paying for) a second one.
    """
    import hashlib

    raw = "-".join(parts)
    name = _JOB_NAME_INVALID.sub("-", raw).strip("-")
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def xgboost_image_uri(region: str, version: str = XGBOOST_FRAMEWORK_VERSION) -> str:
    """Return the AWS XGBoost framework image for ``region`` (from the SageMaker SDK's table)."""
    from sagemaker.core import image_uris

    uri: str = image_uris.retrieve("xgboost", region=region, version=version)
    return uri


def sagemaker_hyperparameters(params: Mapping[str, Any], source_uri: str) -> dict[str, str]:
    """Encode hyperparameters the way SageMaker script mode expects: every value a JSON string.

    ``sagemaker_program`` and ``sagemaker_submit_directory`` tell the framework container which
    script to run from which tarball.
    """
    encoded = {str(key): json.dumps(value) for key, value in params.items() if value is not None}
    encoded["sagemaker_program"] = json.dumps(ENTRY_POINT)
    encoded["sagemaker_submit_directory"] = json.dumps(source_uri)
    return encoded


def metric_definitions(metric_names: list[str]) -> list[dict[str, str]]:
    """SageMaker metric definitions whose regexes match the entry point's metric lines."""
    from mlwp.training.metrics import metric_regex

    return [{"Name": name, "Regex": metric_regex(name)} for name in metric_names]


# With several instances the train channel is sharded: each host receives about 1/n of its
# objects (the split's partition files) and XGBoost's collective joins the shards
# (mlwp.training.distributed); validation and test stay whole on every host.
SHARDED_CHANNEL = "train"


def _channels(channels: Mapping[str, str], instance_count: int = 1) -> list[dict[str, Any]]:
    return [
        {
            "ChannelName": name,
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": uri,
                    "S3DataDistributionType": "ShardedByS3Key"
                    if instance_count > 1 and name == SHARDED_CHANNEL
                    else "FullyReplicated",
                }
            },
            "ContentType": "application/x-parquet",
            "InputMode": "File",
        }
        for name, uri in channels.items()
    ]


def _job_common(spec: SageMakerJobSpec, channels: Mapping[str, str]) -> dict[str, Any]:
    """The parts a training job and a tuning job's training definition share."""
    if not spec.role_arn.startswith("arn:"):
        raise SageMakerRequestError(
            f"sagemaker.role_arn: expected an IAM role ARN, got {spec.role_arn!r}"
        )
    if not channels:
        raise SageMakerRequestError("sagemaker: at least one input channel (train) is required")
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": spec.max_runtime_seconds}
    request: dict[str, Any] = {
        "AlgorithmSpecification": {
            "TrainingImage": spec.image_uri,
            "TrainingInputMode": "File",
        },
        "RoleArn": spec.role_arn,
        "InputDataConfig": _channels(channels, spec.instance_count),
        "OutputDataConfig": {"S3OutputPath": spec.output_uri},
        "ResourceConfig": {
            "InstanceType": spec.instance_type,
            "InstanceCount": spec.instance_count,
            "VolumeSizeInGB": spec.volume_size_gb,
        },
        "StoppingCondition": stopping,
    }
    if spec.spot:
        # Managed spot training needs a wait budget and should checkpoint, so an interrupted
        # job resumes instead of starting over.
        stopping["MaxWaitTimeInSeconds"] = spec.max_wait_seconds or 2 * spec.max_runtime_seconds
        if stopping["MaxWaitTimeInSeconds"] < spec.max_runtime_seconds:
            raise SageMakerRequestError(
                "sagemaker.max_wait: must be at least max_runtime "
                f"({stopping['MaxWaitTimeInSeconds']} < {spec.max_runtime_seconds})"
            )
        request["EnableManagedSpotTraining"] = True
    if spec.checkpoint_uri:
        request["CheckpointConfig"] = {"S3Uri": spec.checkpoint_uri}
    if spec.subnets or spec.security_group_ids:
        if not (spec.subnets and spec.security_group_ids):
            raise SageMakerRequestError(
                "sagemaker.vpc: give both subnets and security_group_ids, or neither"
            )
        request["VpcConfig"] = {
            "Subnets": list(spec.subnets),
            "SecurityGroupIds": list(spec.security_group_ids),
        }
    return request


def _tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": str(value)[:256]} for key, value in tags.items() if value]


def training_job_request(
    *,
    name: str,
    spec: SageMakerJobSpec,
    hyperparameters: Mapping[str, Any],
    channels: Mapping[str, str],
    metrics: list[str],
) -> dict[str, Any]:
    """Build a CreateTrainingJob request for the mlwp entry point."""
    request: dict[str, Any] = {"TrainingJobName": name, **_job_common(spec, channels)}
    request["AlgorithmSpecification"]["MetricDefinitions"] = metric_definitions(metrics)
    request["HyperParameters"] = sagemaker_hyperparameters(hyperparameters, spec.source_uri)
    if spec.tags:
        request["Tags"] = _tags(spec.tags)
    return request


def parameter_ranges(ranges: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Map the definition's ``tuning.ranges`` onto SageMaker ParameterRanges.

    A range is ``{min, max, log, integer}`` (continuous or integer) or ``{values}``
    (categorical), as in the definition schema.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for param, spec in ranges.items():
        if spec.get("values") is not None:
            kind = "CategoricalParameterRanges"
            entry: dict[str, Any] = {"Name": param, "Values": [str(v) for v in spec["values"]]}
        elif spec.get("min") is None or spec.get("max") is None:
            raise SageMakerRequestError(
                f"tuning.ranges.{param}: needs 'min' and 'max', or 'values'"
            )
        else:
            integer = bool(spec.get("integer"))
            kind = "IntegerParameterRanges" if integer else "ContinuousParameterRanges"
            low, high = spec["min"], spec["max"]
            if integer:
                low, high = int(low), int(high)
            entry = {
                "Name": param,
                "MinValue": str(low),
                "MaxValue": str(high),
                "ScalingType": "Logarithmic" if spec.get("log") else "Auto",
            }
        out.setdefault(kind, []).append(entry)
    return out


def tuning_job_request(
    *,
    name: str,
    spec: SageMakerJobSpec,
    static_hyperparameters: Mapping[str, Any],
    channels: Mapping[str, str],
    metrics: list[str],
    objective_metric: str,
    direction: str,
    ranges: Mapping[str, Mapping[str, Any]],
    max_jobs: int,
    max_parallel_jobs: int,
    strategy: str = "bayesian",
    seed: int | None = None,
) -> dict[str, Any]:
    """Build a CreateHyperParameterTuningJob request from the definition's ``tuning:`` block."""
    if strategy not in _STRATEGIES:
        raise SageMakerRequestError(
            f"tuning.strategy: expected one of {sorted(_STRATEGIES)}, got {strategy!r}"
        )
    if direction not in ("maximize", "minimize"):
        raise SageMakerRequestError(
            f"tuning.direction: expected 'maximize' or 'minimize', got {direction!r}"
        )
    if objective_metric not in metrics:
        metrics = [*metrics, objective_metric]
    tuned = set(ranges)
    definition = _job_common(spec, channels)
    definition["AlgorithmSpecification"]["MetricDefinitions"] = metric_definitions(metrics)
    definition["StaticHyperParameters"] = sagemaker_hyperparameters(
        {k: v for k, v in static_hyperparameters.items() if k not in tuned}, spec.source_uri
    )
    config: dict[str, Any] = {
        "Strategy": _STRATEGIES[strategy],
        "HyperParameterTuningJobObjective": {
            "Type": "Maximize" if direction == "maximize" else "Minimize",
            "MetricName": objective_metric,
        },
        "ResourceLimits": {
            "MaxNumberOfTrainingJobs": max_jobs,
            "MaxParallelTrainingJobs": max_parallel_jobs,
        },
        "ParameterRanges": parameter_ranges(ranges),
        "TrainingJobEarlyStoppingType": "Auto" if strategy != "hyperband" else "Off",
    }
    if seed is not None:
        config["RandomSeed"] = seed
    request: dict[str, Any] = {
        "HyperParameterTuningJobName": job_name(name, limit=_TUNING_NAME_MAX),
        "HyperParameterTuningJobConfig": config,
        "TrainingJobDefinition": definition,
    }
    if spec.tags:
        request["Tags"] = _tags(spec.tags)
    return request


def source_tarball() -> bytes:
    """Package the entry point and the Airflow-free core as SageMaker's ``sourcedir.tar.gz``.

    The framework container unpacks it, installs ``requirements.txt`` and runs
    ``mlwp_train.py``, which calls the same ``mlwp.training.entrypoint`` the local backend runs;
    for Batch Transform it imports ``mlwp_inference.py``'s handler functions instead.
    """
    package_root = Path(__file__).resolve().parents[1]  # mlwp/
    shim = b"from mlwp.training.entrypoint import main\n\nif __name__ == '__main__':\n    main()\n"
    handler = (
        b"from mlwp.data.sagemaker_inference import input_fn, model_fn, output_fn, predict_fn\n\n"
        b"__all__ = ['input_fn', 'model_fn', 'output_fn', 'predict_fn']\n"
    )
    requirements = b"pyarrow>=18\npandas>=2.2\npydantic>=2.10\norjson>=3.10\n"
    buffer = io.BytesIO()
    # The gzip header carries a timestamp too (mode="w:gz" writes the current time): zero it,
    # or two packings a second apart differ.
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w") as tar,
    ):
        for name, data in (
            (ENTRY_POINT, shim),
            (INFERENCE_PROGRAM, handler),
            ("requirements.txt", requirements),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
        for path in sorted(package_root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            tar.add(path, arcname=f"mlwp/{path.relative_to(package_root)}", filter=_reset_mtime)
    return buffer.getvalue()


def _reset_mtime(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Same sources, same bytes: the tarball's sha256 then names the code version.
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
