"""Connections and variables from the environment and from AWS Secrets Manager (moto server).

Airflow's real secrets backends run in a child process configured like the platform's
processes; moto serves the Secrets Manager API over HTTP, so botocore validates every request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlwp.platform.airflow_config import airflow_environment
from mlwp.security.roles import SecurityError
from mlwp.security.secrets_backend import secrets_manager_config
from mlwp.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REGION = "eu-west-1"
PROBE = """
import json
from airflow.models.connection import Connection
from airflow.models.variable import Variable
from airflow._shared.secrets_masker import redact

slack = Connection.get_connection_from_secrets("slack_ml")
env_db = Connection.get_connection_from_secrets("warehouse")
threshold = Variable.get("churn_threshold")
api_key = Variable.get("serving_api_key")
print(json.dumps({
    "slack_host": slack.host,
    "slack_password_redacted": redact("token=" + slack.password),
    "env_db_password_redacted": redact("pw=" + env_db.password),
    "env_db_host": env_db.host,
    "threshold": threshold,
    "api_key_redacted": redact("key=" + api_key),
}))
"""


@pytest.fixture
def secrets_manager(moto_endpoint: str) -> str:
    """The moto server (tests/conftest.py), serving the Secrets Manager API."""
    return moto_endpoint


def test_connections_and_variables_resolve_and_are_masked(
    secrets_manager: str, tmp_path: Path
) -> None:
    import boto3

    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    client = boto3.client(
        "secretsmanager",
        endpoint_url=secrets_manager,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_secret(
        Name="mlwp/connections/slack_ml",
        SecretString=json.dumps(
            {"conn_type": "slack", "host": "hooks.slack.com", "password": "xoxb-sm-secret-7"}
        ),
    )
    client.create_secret(Name="mlwp/variables/churn_threshold", SecretString="0.8")
    client.create_secret(Name="mlwp/variables/serving_api_key", SecretString="sk-live-123456")

    settings = Settings(home=tmp_path)
    env = {**os.environ, **airflow_environment(settings), **aws}
    for (section, key), value in secrets_manager_config(
        region=REGION, endpoint_url=secrets_manager
    ).items():
        env[f"AIRFLOW__{section.upper()}__{key.upper()}"] = value
    # The environment backend is always consulted first, before Secrets Manager.
    env["AIRFLOW_CONN_WAREHOUSE"] = "postgresql://etl:pg-env-secret-9@db.internal:5432/dw"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["slack_host"] == "hooks.slack.com"
    assert answer["env_db_host"] == "db.internal"
    assert answer["threshold"] == "0.8"
    # Masking is on: once read, secret values are redacted from anything logged.
    assert answer["slack_password_redacted"] == "token=***"
    assert answer["env_db_password_redacted"] == "pw=***"
    assert answer["api_key_redacted"] == "key=***"
    assert "xoxb-sm-secret-7" not in proc.stderr
    assert "sk-live-123456" not in proc.stderr


def test_bad_backend_settings_are_refused() -> None:
    with pytest.raises(SecurityError, match="region 'Europe' is not an AWS region"):
        secrets_manager_config(region="Europe")
    with pytest.raises(SecurityError, match="connections_prefix 'a b'"):
        secrets_manager_config(region=REGION, connections_prefix="a b")
