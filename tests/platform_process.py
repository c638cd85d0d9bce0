"""``mlwp up`` as a user runs it, for the tests that need the whole platform.

The command runs in a subprocess with a fresh ``MLWP_HOME``, free ports and the environment
of a new user's shell (none of the test session's Airflow/MLWP/MLflow variables). Its output
is collected line by line; :func:`start_platform` returns once it prints "mlwp is ready".
:class:`AirflowApi` is the REST API as a user reaches it: ``POST /auth/token``, then a JWT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from server_process import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# Generous: these tests check behaviour, not speed, on machines shared with other test runs.
READY_TIMEOUT = 600.0

T = TypeVar("T")


def clean_environment(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a new user's shell: none of this test session's Airflow/MLWP setup."""
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
        MLWP_START_TIMEOUT_SECONDS="600",
        # A 500 from Airflow's API carries the database's own error (a user's shell would
        # read it in the API server's log, which the test's temporary home loses).
        AIRFLOW__API__EXPOSE_STACKTRACE="True",
        **extra,
    )
    return env


def mlwp(
    env: Mapping[str, str], *args: str, timeout: float = 120, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    """Run an ``mlwp`` command in ``env`` (another terminal of the same user)."""
    return subprocess.run(
        [str(VENV_BIN / "mlwp"), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class RunningPlatform:
    proc: subprocess.Popen[str]
    env: dict[str, str]
    home: Path
    lines: list[str] = field(default_factory=list)

    def url(self, part: str) -> str:
        return f"http://127.0.0.1:{self.env[f'MLWP_{part.upper()}_PORT']}"

    def output(self) -> str:
        return "\n".join(self.lines)

    def log_tails(self, lines: int = 40) -> str:
        """The last ``lines`` of each process's log under ``MLWP_HOME/logs``."""
        tails = []
        for log in sorted((self.home / "logs").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"----- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(tails)

    def mlwp(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return mlwp(self.env, *args, timeout=timeout)

    def admin_login(self) -> tuple[str, str]:
        """The admin's username and password, from the credentials file ``up`` wrote."""
        credentials = orjson.loads((self.home / "credentials").read_bytes())
        return credentials["username"], credentials["password"]

    def stop(self, timeout: float = 180) -> int:
        """Ctrl-C, as in the terminal that runs ``mlwp up``; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout=60)


def start_platform(env: dict[str, str], home: Path, cwd: Path = REPO_ROOT) -> RunningPlatform:
    """``mlwp up`` in the background, returned once it printed that it is ready."""
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlwp"), "up"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    platform = RunningPlatform(proc, env, home)
    assert proc.stdout is not None
    stream = proc.stdout

    def read() -> None:
        for line in stream:
            platform.lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while not any("mlwp is ready" in line for line in platform.lines):
            if proc.poll() is not None:
                time.sleep(0.5)
                pytest.fail(f"mlwp up exited with {proc.returncode}:\n{platform.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"mlwp up not ready after {READY_TIMEOUT}s:\n{platform.output()}")
            time.sleep(0.5)
    except BaseException:  # a failure or an interrupt while starting: stop what started
        platform.stop(timeout=120)
        raise
    return platform


@contextmanager
def running_platform(
    env: dict[str, str], home: Path, cwd: Path = REPO_ROOT
) -> Iterator[RunningPlatform]:
    """:func:`start_platform`, stopped with Ctrl-C however the block ends."""
    platform = start_platform(env, home, cwd)
    try:
        yield platform
    except BaseException:
        # The processes' logs live in the test's temporary home: show them with the failure.
        print(platform.log_tails())
        raise
    finally:
        platform.stop()


def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float, interval: float = 1.0
) -> T:
    """Call ``probe`` until it returns something other than None; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class AirflowApi:
    """Airflow's REST API (``/api/v2``) as a user reaches it: a JWT from ``POST /auth/token``."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url, self.username = base_url, username
        login = httpx.post(
            f"{base_url}/auth/token",
            json={"username": username, "password": password},
            timeout=60,
        )
        assert login.status_code == 201, (username, login.text)
        self.client = httpx.Client(
            base_url=f"{base_url}/api/v2",
            headers={"Authorization": f"Bearer {login.json()['access_token']}"},
            timeout=60,
        )

    def close(self) -> None:
        self.client.close()

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        assert response.status_code == 200, (self.username, path, response.text)
        return response.json()

    def patch(self, path: str, body: Mapping[str, Any], **params: Any) -> Any:
        response = self.client.patch(path, json=dict(body), params=params)
        assert response.status_code == 200, (self.username, path, response.text)
        return response.json()

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        response = self.client.post(path, json=dict(body))
        assert response.status_code in (200, 201), (self.username, path, response.text)
        return response.json()

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.get(f"/dags/{dag_id}/dagRuns", limit=100)["dag_runs"]
        return runs

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.get(f"/dags/{dag_id}/dagRuns/{run_id}")
        return run

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        listed = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=100)
        return {ti["task_id"]: ti["state"] for ti in listed["task_instances"]}
