"""Run CreateTrainingJob and CreateTransformJob requests the way SageMaker's framework
container would.

moto accepts and describes SageMaker jobs but runs no container. This emulator plays the part
of the container for one request, following SageMaker's documented script-mode contract, with
nothing borrowed from mlwp's local backend. Training:

- the channels' S3 prefixes are downloaded into ``input/data/<channel>/``;
- ``HyperParameters`` are written verbatim (JSON strings) to ``input/config/hyperparameters.json``;
- ``sagemaker_submit_directory`` is downloaded and unpacked, and ``sagemaker_program`` is run
  from it with only that folder importable ahead of site-packages (so the tarball must be
  self-contained);
- ``SM_MODEL_DIR`` is packed into ``<S3OutputPath>/<job>/output/model.tar.gz``;
- each MetricDefinition regex is applied to the log, giving ``FinalMetricDataList``.

Batch Transform (:func:`run_transform_job`), from the CreateModel and CreateTransformJob
requests:

- ``ModelDataUrl`` is unpacked into the model directory (``/opt/ml/model``);
- ``SAGEMAKER_SUBMIT_DIRECTORY`` is unpacked and ``SAGEMAKER_PROGRAM`` imported from it, in a
  process of its own with the job's ``Environment``, only that folder ahead of site-packages;
- its ``model_fn`` loads the model once, then each object the input manifest lists is one
  request (``SplitType: None``): ``input_fn(body, ContentType)``, ``predict_fn``,
  ``output_fn(prediction, Accept)``, as the container's handler service calls them for
  ``POST /invocations`` (the HTTP server itself, ``/ping`` and ``/invocations``, is the
  container's and is not played here);
- each response is written to ``<S3OutputPath>/<path relative to the manifest prefix>.out``.

With ``ResourceConfig.InstanceCount`` n > 1 it starts n containers at once, each with its own
folders, ``SM_HOSTS`` and ``SM_CURRENT_HOST``: a ``ShardedByS3Key`` channel gives host i the
objects i, i + n, i + 2n... of the prefix in key order (SageMaker documents "about 1/n of the
objects" per host, not which), a ``FullyReplicated`` one gives every host all of them. Host
``algo-i`` is played by the loopback address ``127.0.0.i`` (the containers' network resolves
``algo-i``; this machine does not), and the rendezvous port is passed as ``MLWP_TRACKER_PORT``.
The model and the metrics are the first host's, as the entry point writes only there.
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


def _download_channels(
    request: dict[str, Any], s3: Any, input_dir: Path, host: int, hosts: int
) -> None:
    for channel in request["InputDataConfig"]:
        source = channel["DataSource"]["S3DataSource"]
        bucket, prefix = _split(source["S3Uri"])
        target = input_dir / "data" / channel["ChannelName"]
        target.mkdir(parents=True, exist_ok=True)
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        items = sorted(listing.get("Contents", []), key=lambda item: item["Key"])
        if source.get("S3DataDistributionType") == "ShardedByS3Key":
            items = items[host::hosts]
        for item in items:
            relative = item["Key"][len(prefix) :].lstrip("/") or Path(item["Key"]).name
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target / relative))


def run_training_job(
    request: dict[str, Any], s3: Any, workdir: Path, *, tracker_port: int | None = None
) -> dict[str, Any]:
    """Run ``request`` (CreateTrainingJob) with boto3 client ``s3``; return what ran."""
    name = request["TrainingJobName"]
    hyper = request["HyperParameters"]
    count = int(request.get("ResourceConfig", {}).get("InstanceCount", 1))
    hosts = [f"127.0.0.{index + 1}" for index in range(count)]
    code_dir = workdir / "code"
    bucket, key = _split(json.loads(hyper["sagemaker_submit_directory"]))
    archive = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(code_dir, filter="data")
    program = json.loads(hyper["sagemaker_program"])

    procs = []
    for index, host in enumerate(hosts):
        root = workdir if count == 1 else workdir / f"algo-{index + 1}"
        input_dir = root / "input"
        _download_channels(request, s3, input_dir, index, count)
        config = input_dir / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "hyperparameters.json").write_text(json.dumps(hyper))
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("SM_", "PYTHONPATH"))
        }
        env.update(
            {
                "SM_INPUT_CONFIG_DIR": str(config),
                "SM_MODEL_DIR": str(root / "model"),
                "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"),
                "SM_OUTPUT_DIR": str(root / "output"),
                **{
                    f"SM_CHANNEL_{c['ChannelName'].upper()}": str(
                        input_dir / "data" / c["ChannelName"]
                    )
                    for c in request["InputDataConfig"]
                },
            }
        )
        if count > 1:
            env.update(
                SM_HOSTS=json.dumps(hosts),
                SM_CURRENT_HOST=host,
                MLWP_TRACKER_PORT=str(tracker_port or 9099),
            )
        # `python -I` style isolation is too strict (site-packages are the container's
        # image); running the script from its folder puts the tarball's mlwp/ first.
        procs.append(
            (
                root,
                subprocess.Popen(
                    [sys.executable, program],
                    cwd=code_dir,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    logs = []
    try:
        for _, proc in procs:
            out, err = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"training container failed:\n{err[-3000:]}")
            logs.append(out + err)
    finally:
        for _, proc in procs:  # SageMaker stops the job's other containers too
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    model_dir = procs[0][0] / "model"
    log = logs[0]

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
        "logs": logs,
        "hosts": [root for root, _ in procs],
        "imported_from": code_dir,
    }


# The container's side of one transform job: load the model once, then one request per file.
_TRANSFORM_DRIVER = """
import importlib, json, os, sys
program = importlib.import_module(os.environ["SAGEMAKER_PROGRAM"].removesuffix(".py"))
job = json.loads(sys.argv[1])
model = program.model_fn(job["model_dir"])
for source, target in job["files"]:
    with open(source, "rb") as handle:
        body = handle.read()
    data = program.input_fn(body, job["content_type"])
    response = program.output_fn(program.predict_fn(data, model), job["accept"])
    with open(target, "wb") as handle:
        handle.write(response)
"""


def run_transform_job(
    model: dict[str, Any], request: dict[str, Any], s3: Any, workdir: Path
) -> dict[str, Any]:
    """Run ``request`` (CreateTransformJob) on ``model`` (CreateModel) with boto3 client ``s3``."""
    container = model["PrimaryContainer"]
    environment = container["Environment"]
    model_dir = workdir / "model"
    bucket, key = _split(container["ModelDataUrl"])
    packed = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as tar:
        tar.extractall(model_dir, filter="data")
    code_dir = workdir / "code"
    bucket, key = _split(environment["SAGEMAKER_SUBMIT_DIRECTORY"])
    archive = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(code_dir, filter="data")

    source = request["TransformInput"]
    assert source["SplitType"] == "None", "the emulator sends whole files, one per request"
    bucket, key = _split(source["DataSource"]["S3DataSource"]["S3Uri"])
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    prefix, paths = manifest[0]["prefix"], manifest[1:]
    files = []
    for number, path in enumerate(paths):
        local_in = workdir / "input" / f"{number}.in"
        local_in.parent.mkdir(parents=True, exist_ok=True)
        bucket, key = _split(prefix + path)
        s3.download_file(bucket, key, str(local_in))
        files.append((str(local_in), str(workdir / "output" / f"{number}.out")))
    (workdir / "output").mkdir(parents=True, exist_ok=True)
    job = {
        "model_dir": str(model_dir),
        "files": files,
        "content_type": source["ContentType"],
        "accept": request["TransformOutput"]["Accept"],
    }
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SM_", "SAGEMAKER_", "PYTHONPATH", "MLWP_"))
    }
    env.update(environment)
    env.update(request.get("Environment") or {})
    proc = subprocess.run(
        [sys.executable, "-c", _TRANSFORM_DRIVER, json.dumps(job)],
        check=False,
        cwd=code_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"transform container failed:\n{proc.stderr[-3000:]}")
    bucket, output_prefix = _split(request["TransformOutput"]["S3OutputPath"])
    written = []
    for path, (_, local_out) in zip(paths, files, strict=True):
        key = f"{output_prefix.rstrip('/')}/{path}.out"
        s3.upload_file(local_out, bucket, key)
        written.append(f"s3://{bucket}/{key}")
    return {"outputs": written, "imported_from": code_dir, "log": proc.stdout + proc.stderr}


def install_into_moto(s3_factory: Any, workdir: Path, *, tracker_port: int | None = None) -> Any:
    """Make moto's CreateTrainingJob and CreateTransformJob run the job with the emulator;
    returns an undo function.

    moto serves the API in this process (ThreadedMotoServer), so wrapping its backend methods
    runs the container before the job is described as Completed, as SageMaker would.
    """
    from moto.sagemaker.models import SageMakerModelBackend

    original = SageMakerModelBackend.create_training_job
    original_transform = SageMakerModelBackend.create_transform_job

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
                "ResourceConfig": kwargs["resource_config"],
            }
        )
        job = original(self, training_job_name, **kwargs)
        job.algorithm_specification["MetricDefinitions"] = request["AlgorithmSpecification"].get(
            "MetricDefinitions", []
        )
        outcome = run_training_job(
            request, s3_factory(), workdir / training_job_name, tracker_port=tracker_port
        )
        job.final_metric_data_list = outcome["metrics"]
        return job

    def create_transform_job(self: Any, transform_job_name: str, **kwargs: Any) -> Any:
        found = self.describe_model(kwargs["model_name"])
        model = {"PrimaryContainer": copy.deepcopy(found.primary_container)}
        request = copy.deepcopy(
            {
                "TransformJobName": transform_job_name,
                "TransformInput": kwargs["transform_input"],
                "TransformOutput": kwargs["transform_output"],
                "Environment": kwargs.get("environment") or {},
            }
        )
        run_transform_job(model, request, s3_factory(), workdir / transform_job_name)
        return original_transform(self, transform_job_name, **kwargs)

    SageMakerModelBackend.create_training_job = create_training_job  # type: ignore[method-assign]
    SageMakerModelBackend.create_transform_job = create_transform_job  # type: ignore[method-assign]

    def undo() -> None:
        SageMakerModelBackend.create_training_job = original  # type: ignore[method-assign]
        SageMakerModelBackend.create_transform_job = original_transform  # type: ignore[method-assign]

    return undo
