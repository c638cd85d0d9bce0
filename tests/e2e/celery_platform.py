"""The platform production-shaped for the Celery tests: ``mlwp up`` with CeleryExecutor on
PostgreSQL and Redis, datasets, MLflow artifacts and task logs on S3 (a moto server), and
Celery workers started apart from it with ``mlwp worker``, each with its own ``MLWP_HOME``
and working directory, in a mount namespace where the scheduler's home is an empty,
read-only folder: anything a worker would read from it (settings, secrets, DAG state, logs)
is simply not there, so a run that succeeds proves the workers need nothing from it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from platform_process import VENV_BIN, clean_environment, wait_until
from server_process import stop_process_group

# What the session's ``aws_env`` fixture (tests/conftest.py) points at the moto server, handed
# on to the platform's processes: `clean_environment` drops the session's AIRFLOW*/MLFLOW_*.
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
    "AIRFLOW_CONN_AWS_DEFAULT",
)


def aws_settings() -> dict[str, str]:
    """The moto server's variables, as the ``aws_env`` fixture set them."""
    return {name: os.environ[name] for name in AWS_VARIABLES if name in os.environ}


def require(what: str, reason: str | None) -> None:
    """Skip without ``what`` (fail when MLWP_REQUIRE_SERVICES=1, as CI sets it)."""
    if reason is None:
        return
    message = f"{what}: {reason}"
    if os.environ.get("MLWP_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} (MLWP_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


def private_mounts_refused() -> str | None:
    """None when this user may make a private mount namespace (root on Linux), else why not."""
    if shutil.which("unshare") is None:
        return "the unshare command (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if probe.returncode == 0 else f"unshare --mount: {probe.stderr.strip()}"


def hiding(paths: list[Path], argv: list[str]) -> list[str]:
    """``argv`` run in a private mount namespace where each of ``paths`` is an empty,
    read-only tmpfs: the process can neither read what is there nor write into it."""
    mounts = " && ".join(
        f"mount -t tmpfs -o ro,size=4k mlwp-hidden {shlex.quote(str(path))}" for path in paths
    )
    script = f"{mounts} && exec {shlex.join(argv)}"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


@dataclass
class Worker:
    name: str
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Workers:
    """Celery workers started with ``mlwp worker`` outside the scheduler's home."""

    env: dict[str, str]
    hidden: list[Path]
    root: Path
    started: list[Worker] = field(default_factory=list)

    def start(self, *names: str) -> list[Worker]:
        """Start the workers at once (their imports overlap), then wait for each to be ready."""
        started = [self.launch(name) for name in names]
        for worker in started:
            self.wait_ready(worker)
        return started

    def launch(self, name: str) -> Worker:
        home = self.root / name
        home.mkdir(parents=True)
        env = {**self.env, "MLWP_HOME": str(home)}
        argv = [str(VENV_BIN / "mlwp"), "worker", "--name", name]
        log = home / "worker.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                hiding(self.hidden, argv),
                env=env,
                cwd=home,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(name, home, proc, log)
        self.started.append(worker)
        return worker

    @staticmethod
    def wait_ready(worker: Worker) -> None:
        def ready() -> bool | None:
            if worker.proc.poll() is not None:
                pytest.fail(
                    f"worker {worker.name} exited with {worker.proc.returncode}:\n{worker.output()}"
                )
            return True if " ready." in worker.output() else None

        wait_until(f"Celery worker {worker.name} ready", ready, timeout=600, interval=1)

    def stop(self) -> None:
        for worker in self.started:
            stop_process_group(worker.proc)  # type: ignore[arg-type]


@contextmanager
def celery_workers(env: dict[str, str], hidden: list[Path], root: Path) -> Iterator[Workers]:
    workers = Workers(env, hidden, root)
    try:
        yield workers
    finally:
        workers.stop()


def celery_environment(
    home: Path,
    *,
    database_url: str,
    mlflow_database_url: str,
    redis_url: str,
    aws: dict[str, str],
    bucket: str,
    **extra: str,
) -> dict[str, str]:
    """``mlwp up``'s environment, production-shaped. The secrets Airflow's processes share
    (Fernet key, JWT secret, session key) are given as settings, as a deployment gives them,
    so that a worker with another home has the same ones."""
    import secrets

    from cryptography.fernet import Fernet

    return clean_environment(
        home,
        MLWP_EXECUTOR="CeleryExecutor",
        MLWP_CELERY_WORKERS="0",
        MLWP_DATABASE_URL=database_url,
        MLWP_MLFLOW_BACKEND_STORE_URI=mlflow_database_url,
        MLWP_REDIS_URL=redis_url,
        MLWP_STORAGE_ROOT=f"s3://{bucket}/storage",
        MLWP_MLFLOW_ARTIFACTS_DESTINATION=f"s3://{bucket}/mlflow",
        MLWP_REMOTE_LOG_FOLDER=f"s3://{bucket}/logs",
        MLWP_SERVING_DATABASE_URL=database_url,
        MLWP_FERNET_KEY=Fernet.generate_key().decode(),
        MLWP_JWT_SECRET=secrets.token_urlsafe(32),
        MLWP_API_SECRET_KEY=secrets.token_urlsafe(32),
        **aws,
        **extra,
    )


def create_database(admin_url: str, prefix: str) -> str:
    import sqlalchemy

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return urlparse(admin_url)._replace(path=f"/{name}").geturl()


def drop_database(admin_url: str, url: str) -> None:
    import sqlalchemy

    name = urlparse(url).path.lstrip("/")
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def bucket_keys(aws: dict[str, str], bucket: str, prefix: str) -> list[str]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=aws["AWS_ENDPOINT_URL"],
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        region_name=aws["AWS_DEFAULT_REGION"],
    )
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def ran_on(workers: Workers, marker: Any) -> list[str]:
    """The workers whose log mentions ``marker`` (a task instance id)."""
    return [w.name for w in workers.started if str(marker) in w.output()]
