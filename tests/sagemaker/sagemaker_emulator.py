"""Run a CreateTrainingJob request the way SageMaker's framework container would.

moto accepts and describes SageMaker jobs but trains nothing. This emulator plays the part of
the training container for one request, following SageMaker's documented script-mode
contract, with nothing borrowed from mlwp's local backend:

- the channels' S3 prefixes are downloaded into ``input/data/<channel>/``;
- ``HyperParameters`` are written verbatim (JSON strings) to ``input/config/hyperparameters.json``;
- ``sagemaker_submit_directory`` is downloaded and unpacked, and ``sagemaker_program`` is run
  from it with only that folder importable ahead of site-packages (so the tarball must be
  self-contained);
- ``SM_MODEL_DIR`` is packed into ``<S3OutputPath>/<job>/output/model.tar.gz``;
- each MetricDefinition regex is applied to the log, giving ``FinalMetricDataList``.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def run_training_job(request: dict[str, Any], s3: Any, workdir: Path) -> dict[str, Any]:
    """Run ``request`` (CreateTrainingJob) with boto3 client ``s3``; return what ran."""
    name = request["TrainingJobName"]
    hyper = request["HyperParameters"]
    input_dir = workdir / "input"
    for channel in request["InputDataConfig"]:
        bucket, prefix = _split(channel["DataSource"]["S3DataSource"]["S3Uri"])
        target = input_dir / "data" / channel["ChannelName"]
        target.mkdir(parents=True, exist_ok=True)
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        for item in listing.get("Contents", []):
            relative = item["Key"][len(prefix) :].lstrip("/") or Path(item["Key"]).name
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target / relative))
    config = input_dir / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyper))

    code_dir = workdir / "code"
    bucket, key = _split(json.loads(hyper["sagemaker_submit_directory"]))
    archive = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(code_dir, filter="data")
    program = json.loads(hyper["sagemaker_program"])

    model_dir = workdir / "model"
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("SM_", "PYTHONPATH"))
    }
    env.update(
        {
            "SM_INPUT_CONFIG_DIR": str(config),
            "SM_MODEL_DIR": str(model_dir),
            "SM_OUTPUT_DATA_DIR": str(workdir / "output" / "data"),
            "SM_OUTPUT_DIR": str(workdir / "output"),
            **{
                f"SM_CHANNEL_{c['ChannelName'].upper()}": str(input_dir / "data" / c["ChannelName"])
                for c in request["InputDataConfig"]
            },
        }
    )
    # `python -I` style isolation is too strict (site-packages are the container's image);
    # running the script from its folder puts the tarball's mlwp/ first on sys.path.
    proc = subprocess.run(
        [sys.executable, program],
        check=False,
        cwd=code_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"training container failed:\n{proc.stderr[-3000:]}")
    log = proc.stdout + proc.stderr

    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    bucket, prefix = _split(request["OutputDataConfig"]["S3OutputPath"])
    artifact_key = f"{prefix.rstrip('/')}/{name}/output/model.tar.gz"
    s3.put_object(Bucket=bucket, Key=artifact_key, Body=packed.getvalue())

    metrics = []
    for definition in request["AlgorithmSpecification"].get("MetricDefinitions", []):
        found = re.findall(definition["Regex"], log)
        if found:
            metrics.append({"MetricName": definition["Name"], "Value": float(found[-1])})
    return {
        "model_dir": model_dir,
        "artifact": f"s3://{bucket}/{artifact_key}",
        "metrics": metrics,
        "log": log,
        "imported_from": code_dir,
    }


def install_into_moto(s3_factory: Any, workdir: Path) -> Any:
    """Make moto's CreateTrainingJob run the job with the emulator; returns an undo function.

    moto serves the API in this process (ThreadedMotoServer), so wrapping its backend method
    runs the container before the job is described as Completed, as SageMaker would.
    """
    from moto.sagemaker.models import SageMakerModelBackend

    original = SageMakerModelBackend.create_training_job

    def create_training_job(self: Any, training_job_name: str, **kwargs: Any) -> Any:
        # Copy the request first: moto overwrites AlgorithmSpecification.MetricDefinitions
        # in place with a canned definition.
        request = copy.deepcopy(
            {
                "TrainingJobName": training_job_name,
                "HyperParameters": kwargs["hyper_parameters"],
                "InputDataConfig": kwargs["input_data_config"],
                "OutputDataConfig": kwargs["output_data_config"],
                "AlgorithmSpecification": kwargs["algorithm_specification"],
            }
        )
        job = original(self, training_job_name, **kwargs)
        job.algorithm_specification["MetricDefinitions"] = request["AlgorithmSpecification"].get(
            "MetricDefinitions", []
        )
        outcome = run_training_job(request, s3_factory(), workdir / training_job_name)
        job.final_metric_data_list = outcome["metrics"]
        return job

    SageMakerModelBackend.create_training_job = create_training_job  # type: ignore[method-assign]

    def undo() -> None:
        SageMakerModelBackend.create_training_job = original  # type: ignore[method-assign]

    return undo
