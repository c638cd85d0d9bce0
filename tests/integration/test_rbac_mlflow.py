"""MLflow's production-shaped configuration refuses anonymous access; users kept in step.

A real ``mlflow server --app-name basic-auth`` on a free port, configured by
``mlwp.security.mlflow_auth``; every request is plain HTTP against it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlwp.security.mlflow_auth import MlflowAuthError, MlflowUsers, write_basic_auth_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = ("mlflow-admin", "admin-password-123")
API = "/api/2.0/mlflow"
# Generous timeouts: CI machines are shared and password hashing is slow on purpose.
HTTP = httpx.Client(timeout=120)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def mlflow_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-auth")
    config = write_basic_auth_config(
        root / "basic_auth.ini",
        database_uri=f"sqlite:///{root / 'auth.db'}",
        admin_username=ADMIN[0],
    )
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        # The flask secret of the auth app (CSRF); any value will do for a test server.
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key",
        # No job runner (seven huey consumers) for a test server.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            (root / "artifacts").as_uri(),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # shared CI machines start slowly
    try:
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                state = f"exited {proc.returncode}" if proc.poll() is not None else "timed out"
                raise RuntimeError(
                    f"mlflow server {state}:\n" + (root / "server.log").read_text()[-4000:]
                )
            try:
                if HTTP.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        # The server's workers live in its process group: stop them all.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def test_anonymous_reads_and_writes_are_refused(mlflow_auth_server: str) -> None:
    url = mlflow_auth_server
    assert HTTP.get(f"{url}{API}/experiments/search", params={"max_results": 5}).status_code == 401
    create = HTTP.post(f"{url}{API}/experiments/create", json={"name": "anonymous"})
    assert create.status_code == 401
    registry = HTTP.post(f"{url}{API}/registered-models/create", json={"name": "anonymous"})
    assert registry.status_code == 401


def test_users_in_step_with_the_platform(mlflow_auth_server: str) -> None:
    url = mlflow_auth_server
    admin_experiment = HTTP.post(
        f"{url}{API}/experiments/create", json={"name": "churn"}, auth=ADMIN
    )
    assert admin_experiment.status_code == 200, admin_experiment.text
    experiment_id = admin_experiment.json()["experiment_id"]

    with MlflowUsers(url, *ADMIN) as users:
        assert users.sync_user("alice", "alice-pass-1", admin=False) == "created"
        assert users.sync_user("alice", "alice-pass-2", admin=False) == "updated"
        assert users.sync_user("root", "root-password-1", admin=True) == "created"

    alice = ("alice", "alice-pass-2")
    # The old password went with the update; a wrong one gets the same 401 as no user at all.
    stale = HTTP.get(
        f"{url}{API}/experiments/get",
        params={"experiment_id": experiment_id},
        auth=("alice", "alice-pass-1"),
    )
    assert stale.status_code == 401
    read = HTTP.get(
        f"{url}{API}/experiments/get", params={"experiment_id": experiment_id}, auth=alice
    )
    assert read.status_code == 200
    write = HTTP.post(f"{url}{API}/runs/create", json={"experiment_id": experiment_id}, auth=alice)
    assert write.status_code == 403
    as_admin = HTTP.post(
        f"{url}{API}/runs/create",
        json={"experiment_id": experiment_id},
        auth=("root", "root-password-1"),
    )
    assert as_admin.status_code == 200

    with MlflowUsers(url, *ADMIN) as users:
        assert users.delete_user("alice") is True
        assert users.delete_user("alice") is False
    gone = HTTP.get(
        f"{url}{API}/experiments/get", params={"experiment_id": experiment_id}, auth=alice
    )
    assert gone.status_code == 401


def test_wrong_admin_credentials_are_a_clear_error(mlflow_auth_server: str) -> None:
    with (
        MlflowUsers(mlflow_auth_server, ADMIN[0], "wrong") as users,
        pytest.raises(MlflowAuthError, match="refused the admin credentials"),
    ):
        users.sync_user("bob", "bob-password-1", admin=False)
