"""MLflow artifacts through the tracking server's proxy, stored in S3 (a moto server).

The server runs as ``mlwp up`` runs it (``--serve-artifacts --artifacts-destination
s3://...``); the client is another process, in another working directory, with no AWS
credentials at all: what it logs can only reach the bucket through the server, and nothing
lands on its own disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from aws_endpoint import aws_environment
from server_process import run_mlflow_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENT = textwrap.dedent(
    """
    import json, sys
    import mlflow
    from mlwp.training.tracking import experiment_id

    client = mlflow.MlflowClient()
    exp_id = experiment_id(client, "state.s3-artifacts")
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_text("logged from elsewhere", "notes/hello.txt")
        mlflow.log_dict({"rows": 3}, "summary.json")
    print(json.dumps({
        "run_id": run.info.run_id,
        "experiment_id": exp_id,
        "experiment_root": client.get_experiment(exp_id).artifact_location,
        "run_root": run.info.artifact_uri,
    }))
    """
)


@pytest.fixture(scope="module")
def s3_server(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A tracking server whose artifacts go to a new bucket (one for the module: a server
    start is the slow part); botocore finds moto through ``AWS_ENDPOINT_URL`` alone
    (``MLFLOW_S3_ENDPOINT_URL`` is not needed)."""
    import uuid

    import boto3

    aws = aws_environment(moto_endpoint)
    bucket = f"mlwp-test-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=aws["AWS_DEFAULT_REGION"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=bucket)
    aws.pop("MLFLOW_S3_ENDPOINT_URL")
    with run_mlflow_server(
        tmp_path_factory.mktemp("server"),
        env={**os.environ, **aws},
        artifacts_destination=f"s3://{bucket}/mlartifacts",
        timeout=600,
    ) as (url, _):
        yield {"url": url, "bucket": bucket}


@pytest.fixture
def s3_tracking(s3_server: dict, aws_env: str, monkeypatch: pytest.MonkeyPatch) -> str:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", s3_server["url"])
    mlflow.set_tracking_uri(s3_server["url"])  # over any process-wide URI (restored by conftest)
    return str(s3_server["url"])


def test_a_run_from_another_process_lands_in_s3_and_downloads_through_the_proxy(
    s3_tracking: str, s3_server: dict, tmp_path: Path
) -> None:
    import boto3
    import mlflow
    import orjson

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    client_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "MLFLOW_S3", "AIRFLOW_CONN_"))
    }
    client_env.update(
        MLFLOW_TRACKING_URI=s3_tracking,
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
        MLWP_PRODUCTION="true",
    )
    done = subprocess.run(
        [sys.executable, "-c", CLIENT],
        cwd=elsewhere,
        env=client_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    logged = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert logged["experiment_root"] == f"mlflow-artifacts:/{logged['experiment_id']}"
    assert logged["run_root"].startswith("mlflow-artifacts:/")
    assert list(elsewhere.iterdir()) == []  # no mlruns/, no mlartifacts/ on the client's disk

    prefix = f"mlartifacts/{logged['experiment_id']}/{logged['run_id']}/artifacts/"
    listed = boto3.client("s3").list_objects_v2(Bucket=s3_server["bucket"], Prefix=prefix)
    keys = sorted(item["Key"].removeprefix(prefix) for item in listed.get("Contents", []))
    assert keys == ["notes/hello.txt", "summary.json"]

    # The server named explicitly: an earlier test in this worker may have set mlflow's
    # process-wide tracking URI, which wins over the environment variable.
    downloaded = mlflow.artifacts.download_artifacts(
        run_id=logged["run_id"],
        artifact_path="notes/hello.txt",
        dst_path=str(tmp_path / "dl"),
        tracking_uri=s3_tracking,
    )
    assert Path(downloaded).read_text() == "logged from elsewhere"


def test_an_experiment_with_a_local_root_is_refused_in_production_only(
    s3_tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from mlwp.training.tracking import LocalArtifactRoot, experiment_id

    client = mlflow.MlflowClient()
    legacy = client.create_experiment(
        "state.legacy-local", artifact_location=(tmp_path / "old-artifacts").as_uri()
    )
    monkeypatch.setenv("MLWP_PRODUCTION", "false")
    assert experiment_id(client, "state.legacy-local") == legacy  # one disk: works as before
    monkeypatch.setenv("MLWP_PRODUCTION", "true")
    with pytest.raises(LocalArtifactRoot) as caught:
        experiment_id(client, "state.legacy-local")
    assert f"'state.legacy-local' (id {legacy})" in caught.value.message
    assert f"mlflow experiments rename --experiment-id {legacy}" in caught.value.message
