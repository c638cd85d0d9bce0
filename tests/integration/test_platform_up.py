"""`mlwp up` for real: Airflow (FAB), MLflow and serving as child processes, then a clean stop.

Runs the command a new user runs, in a subprocess with a fresh ``MLWP_HOME`` and free ports,
production-shaped on PostgreSQL with a separate MLflow database (stopped with ``mlwp down``).
The embedded SQLite defaults (stopped with Ctrl-C) are the platform of a new user's first run,
``test_first_run.py``, which reuses :func:`check_platform_serves`.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import orjson
import psutil
import pytest
from platform_process import (
    REPO_ROOT,
    VENV_BIN,
    RunningPlatform,
    clean_environment,
    start_platform,
    wait_until,
)
from server_process import free_port


def token(platform: RunningPlatform) -> str:
    credentials_file = platform.home / "credentials"
    assert credentials_file.stat().st_mode & 0o777 == 0o600
    credentials = orjson.loads(credentials_file.read_bytes())
    assert credentials["username"] == "admin"
    # The password is shown once, on the run that created the user.
    assert credentials["password"] in platform.output()
    response = httpx.post(
        f"{platform.url('airflow')}/auth/token",
        json={"username": credentials["username"], "password": credentials["password"]},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    access_token: str = response.json()["access_token"]
    return access_token


def is_churn(dag: dict[str, object]) -> bool:
    tags = {tag["name"] for tag in dag["tags"]}  # type: ignore[attr-defined]
    return str(dag["dag_id"]).startswith("churn.") or "project:churn" in tags


def wait_for_churn_dag(platform: RunningPlatform, headers: dict[str, str]) -> list[str]:
    base = platform.url("airflow")
    deadline = time.monotonic() + 120
    while True:
        response = httpx.get(f"{base}/api/v2/dags", params={"limit": 100}, headers=headers)
        assert response.status_code == 200, response.text
        churn = [dag["dag_id"] for dag in response.json()["dags"] if is_churn(dag)]
        if churn:
            return churn
        if time.monotonic() > deadline:
            errors = httpx.get(f"{base}/api/v2/importErrors", headers=headers).json()
            pytest.fail(f"no churn DAG after 120s; import errors: {errors}")
        time.sleep(2)


@pytest.fixture
def postgres_backend(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """PostgreSQL for Airflow plus a database of its own for MLflow."""
    import sqlalchemy

    airflow_url: str = request.getfixturevalue("postgres_database")
    admin_url: str = request.getfixturevalue("postgres_admin_url")
    name = f"mlwp_mlflow_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    mlflow_url = urlparse(admin_url)._replace(path=f"/{name}").geturl()
    yield {"MLWP_DATABASE_URL": airflow_url, "MLWP_MLFLOW_BACKEND_STORE_URI": mlflow_url}
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def check_platform_serves(platform: RunningPlatform) -> list[psutil.Process]:
    """What `mlwp up` promises once ready; returns its child processes."""
    children = psutil.Process(platform.proc.pid).children(recursive=True)
    commands = []
    for child in children:
        # a short-lived child may have exited since the listing, or be a zombie its parent
        # has not reaped yet (psutil.ZombieProcess, a NoSuchProcess): it runs no command
        with contextlib.suppress(psutil.NoSuchProcess):
            commands.append(" ".join(child.cmdline()))
    assert not any("standalone" in command for command in commands), commands

    # Airflow: the FAB login page, a JWT for the admin, the churn DAG in the DAG list.
    login_page = httpx.get(f"{platform.url('airflow')}/auth/login/", timeout=30)
    assert login_page.status_code == 200
    assert "Sign In" in login_page.text
    headers = {"Authorization": f"Bearer {token(platform)}"}
    assert wait_for_churn_dag(platform, headers)
    # Both heartbeat: Airflow calls the DAG processor healthy while its last heartbeat is
    # within 2.1 heartbeats (~10 s). On a loaded two-core CI machine one heartbeat came late
    # once (a parse loop of the churn DAGs beside the other tests' platforms), so a late one
    # is waited for, briefly; a processor that stopped heartbeating still fails.
    seen: list[object] = []

    def both_healthy() -> bool | None:
        health = httpx.get(f"{platform.url('airflow')}/api/v2/monitor/health", timeout=30).json()
        seen[:] = [health]
        statuses = (health["scheduler"]["status"], health["dag_processor"]["status"])
        return True if statuses == ("healthy", "healthy") else None

    try:
        wait_until("the scheduler and DAG processor healthy", both_healthy, timeout=60)
    except pytest.fail.Exception as exc:
        pytest.fail(f"{exc}; last health: {seen}")

    # MLflow's REST API and the serving service's health.
    experiments = httpx.post(
        f"{platform.url('mlflow')}/api/2.0/mlflow/experiments/search",
        json={"max_results": 10},
        timeout=30,
    )
    assert experiments.status_code == 200, experiments.text
    assert any(e["name"] == "Default" for e in experiments.json()["experiments"])
    assert httpx.get(f"{platform.url('serving')}/health/live").status_code == 200

    # Another terminal: status sees everything; a second `up` is refused.
    status = platform.mlwp("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    report = orjson.loads(status.stdout)
    assert report["running"] is True
    assert {p["name"] for p in report["processes"] if p["alive"]} == {
        "api-server", "scheduler", "dag-processor", "triggerer", "mlflow", "serving",
        "roles-sync",
    }  # fmt: skip
    # Each is a real child process of `mlwp up` (separate components, not standalone).
    assert {p["pid"] for p in report["processes"]} <= {child.pid for child in children}
    healthy = {p["name"]: p["health"] for p in report["processes"]}
    assert healthy["scheduler"] == "healthy", healthy
    assert healthy["api-server"] == "healthy", healthy
    second = platform.mlwp("up", timeout=60)
    assert second.returncode == 1
    assert "already running" in second.stderr
    return children


# The embedded SQLite defaults, stopped with Ctrl-C: tests/integration/test_first_run.py (one
# `mlwp up` for a new user's whole first run).
@pytest.mark.integration
@pytest.mark.slow
def test_up_on_postgres_serves_airflow_mlflow_and_serving_then_mlwp_down_stops_it(
    postgres_backend: dict[str, str], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    platform = start_platform(clean_environment(home, **postgres_backend), home)
    children: list[psutil.Process] = []
    try:
        children = check_platform_serves(platform)
        down = platform.mlwp("down")
        assert down.returncode == 0, down.stderr
        assert "mlwp stopped" in down.stdout
        assert platform.proc.wait(timeout=120) == 0, platform.output()
    finally:
        if platform.proc.poll() is None:
            platform.proc.send_signal(signal.SIGTERM)
            platform.proc.wait(timeout=120)
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], [p.cmdline() for p in alive if p.is_running()]
    assert not (home / "platform.json").exists()
    after = platform.mlwp("status")
    assert after.returncode == 1
    assert "not running" in after.stdout


@pytest.mark.integration
def test_unreachable_database_is_a_one_line_cause_and_starts_nothing(tmp_path: Path) -> None:
    closed = free_port()
    home = tmp_path / "home"
    env = clean_environment(
        home, MLWP_DATABASE_URL=f"postgresql+psycopg2://airflow:hidden@127.0.0.1:{closed}/airflow"
    )
    result = subprocess.run(
        [str(VENV_BIN / "mlwp"), "up"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mlwp: Airflow (MLWP_DATABASE_URL) database ")
    assert f"127.0.0.1:{closed}/airflow is unreachable" in lines[0]
    assert "hidden" not in result.stderr
    assert not (home / "logs").exists()
