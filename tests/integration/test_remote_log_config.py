"""Task logs on S3 from ``MLWP_REMOTE_LOG_FOLDER``: in a process configured exactly as
``mlwp up`` configures Airflow's (plus the AWS connection pointing at a moto server), Airflow
picks the Amazon provider's S3 log handler, uploads a finished task log to the bucket through
the ``aws_default`` connection, and reads it back from there once the local copy is gone:
the calls a task's supervisor (upload) and every api-server (read) make."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from mlwp.platform.airflow_config import airflow_environment
from mlwp.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RELATIVE = "dag_id=probe/run_id=manual__1/task_id=say/attempt=1.log"

ROUND_TRIP = textwrap.dedent(
    f"""
    import json, pathlib
    from airflow.config_templates.airflow_local_settings import REMOTE_TASK_LOG
    from airflow.configuration import conf

    local = pathlib.Path(conf.get("logging", "base_log_folder")) / {RELATIVE!r}
    local.parent.mkdir(parents=True)
    local.write_text(json.dumps({{"event": "remote-log-marker", "level": "info"}}) + "\\n")
    REMOTE_TASK_LOG.upload({RELATIVE!r}, None)
    local.unlink()
    sources, messages = REMOTE_TASK_LOG.read({RELATIVE!r}, None)
    print(json.dumps({{
        "handler": type(REMOTE_TASK_LOG).__name__,
        "sources": sources,
        "messages": [str(m) for m in (messages or [])],
    }}))
    """
)


def test_a_task_log_goes_to_s3_and_is_read_back_from_there(s3_bucket: str, tmp_path: Path) -> None:
    import boto3

    settings = Settings(home=tmp_path, remote_log_folder=f"s3://{s3_bucket}/logs")
    env = {**os.environ, **airflow_environment(settings)}
    done = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert result["handler"] == "S3RemoteLogIO"
    assert result["sources"] == [f"s3://{s3_bucket}/logs/{RELATIVE}"]
    assert any("remote-log-marker" in message for message in result["messages"])
    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key=f"logs/{RELATIVE}")["Body"]
    assert b"remote-log-marker" in body.read()
