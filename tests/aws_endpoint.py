"""The environment that points every AWS client of the platform at one endpoint (a moto
server in tests), shared by tests/conftest.py's fixtures and tests that start processes."""

from __future__ import annotations

AWS_REGION = "us-east-1"


def aws_environment(endpoint: str) -> dict[str, str]:
    """The environment that points boto3, s3fs, MLflow and the Airflow AWS connection
    ``aws_default`` at ``endpoint``: what a platform process needs to use the moto server.

    botocore (so boto3 and s3fs, through aiobotocore) reads ``AWS_ENDPOINT_URL``; MLflow's S3
    artifact store reads ``MLFLOW_S3_ENDPOINT_URL``; Airflow's Amazon provider takes
    ``endpoint_url`` from the connection's extra.
    """
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": AWS_REGION,
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "AIRFLOW_CONN_AWS_DEFAULT": (
            f'{{"conn_type": "aws", "extra": {{"region_name": "{AWS_REGION}", '
            f'"endpoint_url": "{endpoint}"}}}}'
        ),
    }
