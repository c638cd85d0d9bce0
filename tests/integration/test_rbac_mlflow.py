"""MLflow's production-shaped configuration refuses anonymous access; users kept in step.

A real ``mlflow server --app-name basic-auth`` on a free port, configured by
``mlwp.security.mlflow_auth``; every request is plain HTTP against it.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from server_process import run_mlflow_server

from mlwp.security.mlflow_auth import MlflowAuthError, MlflowUsers, write_basic_auth_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = ("mlflow-admin", "admin-password-123")
API = "/api/2.0/mlflow"
# Generous timeouts: CI machines are shared and password hashing is slow on purpose.
HTTP = httpx.Client(timeout=120)


@pytest.fixture(scope="module")
def mlflow_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-auth")
    config = write_basic_auth_config(
        root / "basic_auth.ini",
        database_uri=f"sqlite:///{root / 'auth.db'}",
        admin_username=ADMIN[0],
    )
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        # The flask secret of the auth app (CSRF); any value will do for a test server.
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key",
    }
    with run_mlflow_server(root, app_name="basic-auth", env=env) as (url, _):
        yield url


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
