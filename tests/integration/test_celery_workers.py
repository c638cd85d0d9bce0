"""`mlwp up` with CeleryExecutor: real Celery workers under the supervisor, ready when they
answer a ping through the broker, seen by `mlwp status` and stopped by `mlwp down`. Tasks
going through the broker to workers, and the whole churn workflow run by them, are the Celery
real-path test's (tests/e2e/test_real_path_celery.py), so none is run here.

PostgreSQL (a fresh database of this test) holds Airflow's metadata and Celery's results;
the shared Redis is the broker, in a database number this test claims for itself (an empty
one, marked with a claim key), so parallel runs never consume each other's tasks. MLflow and
serving keep their embedded defaults: this test is about the workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import pytest
from server_process import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
MLWP = str(Path(sys.executable).parent / "mlwp")
# Each worker imports the ML stack before it answers a ping: about a minute on a quiet
# two-core machine. Bounded well inside pytest's 900 s (pyproject.toml says why).
READY_TIMEOUT = 600.0
CLAIM_KEY = "mlwp:test:claimed-by"


@pytest.fixture
def broker_url(redis_url: str) -> Iterator[str]:
    """A Redis database of its own (empty when claimed); its keys are deleted afterwards."""
    import redis

    token = uuid.uuid4().hex
    from urllib.parse import urlsplit

    base = urlsplit(redis_url)._replace(path="").geturl()
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base}/{db}")
        if client.set(CLAIM_KEY, token, nx=True, ex=3600) and client.dbsize() == 1:
            break
        if client.get(CLAIM_KEY) == token.encode():
            client.delete(CLAIM_KEY)
        client.close()
    else:
        # Every database holds keys (other runs' claims or data): with services required
        # (CI), that is a failure to report, not a reason to skip.
        reason = f"no empty Redis database to claim on {base}"
        if os.environ.get("MLWP_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield f"{base}/{db}"
    finally:
        # Only this test wrote here (the database was empty when claimed).
        for key in client.scan_iter(count=500):
            client.delete(key)
        client.close()


def environment(home: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW", "MLWP_", "MLFLOW_"))
    }
    env.update(
        MLWP_HOME=str(home),
        MLWP_AIRFLOW_PORT=str(free_port()),
        MLWP_MLFLOW_PORT=str(free_port()),
        MLWP_SERVING_PORT=str(free_port()),
        MLWP_START_TIMEOUT_SECONDS=str(int(READY_TIMEOUT - 60)),
        **extra,
    )
    return env


def run_mlwp(
    env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MLWP, *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.integration
@pytest.mark.slow
def test_up_supervises_celery_workers_that_status_shows_and_down_stops(
    tmp_path: Path, postgres_database: str, broker_url: str
) -> None:
    home = tmp_path / "home"
    env = environment(
        home,
        MLWP_EXECUTOR="CeleryExecutor",
        MLWP_DATABASE_URL=postgres_database,
        MLWP_REDIS_URL=broker_url,
        MLWP_CELERY_WORKERS="2",
        MLWP_CELERY_WORKER_CONCURRENCY="2",
        # Shared state stays on this one host: the test is about the workers, not S3.
        MLWP_PRODUCTION="false",
    )
    proc = subprocess.Popen(
        [MLWP, "up"], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    assert proc.stdout is not None
    stream = proc.stdout
    threading.Thread(
        target=lambda: lines.extend(line.rstrip() for line in stream), daemon=True
    ).start()
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not any("mlwp is ready" in line for line in lines):
            assert proc.poll() is None, "mlwp up exited:\n" + "\n".join(lines)
            assert time.monotonic() < deadline, "not ready:\n" + "\n".join(lines)
            time.sleep(1)
        children = psutil.Process(proc.pid).children(recursive=True)

        status = run_mlwp(env, "status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        report = {p["name"]: p for p in orjson.loads(status.stdout)["processes"]}
        for name in ("celery-worker-1", "celery-worker-2"):
            assert report[name]["alive"], report
            # Healthy means the worker answered a ping through the broker just now.
            assert report[name]["health"] == "healthy", report[name]
        table = run_mlwp(env, "status")
        assert "celery-worker-2" in table.stdout

        # Each worker is `airflow celery worker` with its own node name, consuming this broker.
        workers = {
            name: psutil.Process(report[name]["pid"])
            for name in ("celery-worker-1", "celery-worker-2")
        }
        for name, worker in workers.items():
            command = " ".join(worker.cmdline())
            assert "celery worker" in command and f"--celery-hostname {name}@" in command
            log = (home / "logs" / f"{name}.log").read_text(errors="replace")
            assert f"{name}@" in log and " ready." in log, log[-2000:]
            # The ML stack was imported once by the worker's main process, before its pool
            # forked: the pool processes (and the task processes they fork) inherit it.
            pool = worker.children(recursive=True)
            assert pool, f"{name} has no pool processes"
            assert any("xgboost" in m.path for m in worker.memory_maps()), name

        down = run_mlwp(env, "down", timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr
        assert proc.wait(timeout=300) == 0, "\n".join(lines)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=300)
    stopping = next(line for line in lines if line.startswith("mlwp: stopping "))
    assert "celery-worker-1" in stopping and "celery-worker-2" in stopping
    _, alive = psutil.wait_procs(children, timeout=20)
    assert alive == [], [p.cmdline() for p in alive if p.is_running()]
    after = run_mlwp(env, "status")
    assert after.returncode == 1 and "not running" in after.stdout
