"""Faults under CeleryExecutor: a worker killed in the middle of training, and the broker
stopped for 10 s in the middle of a run. The platform is the production shape of
``test_real_path_celery.py`` (PostgreSQL, S3 on moto, workers apart from the scheduler's
home), with a PRIVATE ``redis-server`` on a free port as the broker, so that stopping it
touches nothing shared. It runs with append-only persistence, as a managed Redis does:
stopped and started again, it still holds the queued messages.

The workflow is the churn definition scaled down, and only for what these faults need to be
fast: manual only (no scheduled run), automatic approval, 2 tuning trials and 60 boosting
rounds instead of 8 and 200, and ``retry_delay: 5s`` instead of 5 minutes. Every task is the
real one. Airflow's own ``[scheduler] task_instance_heartbeat_timeout`` (default 300 s: how
long a task may stay silent before the scheduler declares it dead) is 30 s here; production
keeps the default or sets its own.

- Worker killed: the worker running ``train`` and its whole process tree get SIGKILL (a
  machine lost). The scheduler finds the task without heartbeat, fails that try, retries it,
  the other worker runs it, the run succeeds and MLflow holds exactly one version: the
  killed try never reached ``register``.
- Broker stopped: ``redis-server`` is shut down while ``train`` runs and started again 10 s
  later. The run succeeds, every task succeeded, and the model has exactly one more version.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from celery_platform import (
    Worker,
    aws_settings,
    celery_environment,
    celery_workers,
    create_database,
    drop_database,
    private_mounts_refused,
    ran_on,
    require,
)
from churn_workflow import CHURN
from platform_process import AirflowApi, RunningPlatform, running_platform, wait_until
from real_path import REAL_PATH_OPT_IN, model_versions, wait_for_run, xcom
from server_process import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow, REAL_PATH_OPT_IN]

DAG_ID = "churn.train"
LOADER = '''"""DAG loader (airflow dag) of the fault tests' projects, as dags/mlwp_projects.py."""
from pathlib import Path

from airflow.sdk import get_parsing_context

from operators.compiler import existing_project_roles, load_projects, report_import_errors

_HERE = Path(__file__).resolve().parent
_dag_id = get_parsing_context().dag_id
_result = load_projects(
    _HERE / "projects",
    dag_id=_dag_id,
    project_roles=existing_project_roles() if _dag_id is None else None,
)
globals().update(_result.dags)
report_import_errors(_result.problems, __file__)
'''


def scaled_down_churn(dags: Path) -> Path:
    """A DAG folder with the churn definition scaled down (see the module docstring)."""
    definition = yaml.safe_load((CHURN / "workflow.yaml").read_text())
    definition.pop("alerts", None)
    definition["defaults"]["retry_delay"] = "5s"
    train = definition["workflows"]["train"]
    train["schedule"] = None
    train["tasks"]["train"]["tuning"]["trials"] = 2
    train["tasks"]["train"]["num_boost_round"] = 60
    train["tasks"]["approve"] = {"type": "approve", "after": ["register"], "mode": "auto"}
    definition["workflows"] = {"train": train}
    project = dags / "projects" / "churn"
    project.mkdir(parents=True)
    (project / "workflow.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    # A copy, not a symlink: extract refuses a source that resolves outside the project folder.
    shutil.copytree(CHURN / "data", project / "data")
    (dags / "mlwp_projects.py").write_text(LOADER)
    return dags


class PrivateRedis:
    """``redis-server`` on a free port with append-only persistence in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.folder), "--appendonly", "yes", "--save", ""],
            stdout=(self.folder / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        import redis

        def answers() -> bool | None:
            try:
                return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping()) or None
            except redis.RedisError:
                return None

        wait_until(f"redis-server on {self.port}", answers, timeout=30, interval=0.2)

    def stop(self) -> None:
        """SIGTERM: Redis's own clean shutdown (it flushes its append-only file)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    from shutil import which

    require("redis-server", None if which("redis-server") else "not installed")
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def kill_tree(worker: Worker) -> None:
    """SIGKILL a worker and every process under it, at once: a machine lost."""
    root = psutil.Process(worker.proc.pid)
    victims = [root, *root.children(recursive=True)]
    for process in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=30)


def task_instance(api: AirflowApi, run_id: str, task_id: str) -> dict[str, Any]:
    ti: dict[str, Any] = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")
    return ti


def wait_for_state(api: AirflowApi, run_id: str, task_id: str, state: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        ti = task_instance(api, run_id, task_id)
        return ti if ti["state"] == state else None

    return wait_until(f"{task_id} {state} in {run_id}", reached, timeout=900, interval=0.5)


def trigger(api: AirflowApi) -> str:
    run_id: str = api.post(f"/dags/{DAG_ID}/dagRuns", {"logical_date": None})["dag_run_id"]
    return run_id


def training_started(worker: Worker) -> bool | None:
    """The train task's log on the worker shows its first tuning trial under way."""
    logs = list((worker.home / "logs").rglob("task_id=train/attempt=1.log"))
    return True if logs and "trial" in logs[0].read_text(errors="replace") else None


@pytest.mark.timeout(2700)
def test_worker_killed_in_training_then_broker_stopped(
    tmp_path: Path, postgres_admin_url: str, s3_bucket: str, private_redis: PrivateRedis
) -> None:
    require("a private mount namespace", private_mounts_refused())
    aws, bucket = aws_settings(), s3_bucket
    airflow_db = create_database(postgres_admin_url, "mlwp_faults_airflow")
    mlflow_db = create_database(postgres_admin_url, "mlwp_faults_mlflow")
    home = tmp_path / "scheduler-home"
    try:
        env = celery_environment(
            home,
            database_url=airflow_db,
            mlflow_database_url=mlflow_db,
            redis_url=private_redis.url,
            aws=aws,
            bucket=bucket,
            MLWP_DAGS_FOLDER=str(scaled_down_churn(tmp_path / "dags")),
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="30",
        )
        with (
            running_platform(env, home) as platform,
            celery_workers(env, [home], tmp_path / "workers") as workers,
        ):
            first, second = workers.start("worker-1", "worker-2")
            api = admin_api(platform)
            api.patch(f"/dags/{DAG_ID}", {"is_paused": False})

            # 1. The worker running train is lost mid-training.
            run_id = trigger(api)
            ti = wait_for_state(api, run_id, "train", "running")
            (victim_name,) = ran_on(workers, ti["id"])
            victim, survivor = (first, second) if victim_name == first.name else (second, first)
            wait_until("training under way", lambda: training_started(victim), timeout=600)
            kill_tree(victim)
            wait_for_run(api, DAG_ID, run_id)
            train = task_instance(api, run_id, "train")
            assert train["try_number"] == 2, train
            assert survivor.name in ran_on(workers, train["id"])
            assert task_instance(api, run_id, "register")["try_number"] == 1
            versions = model_versions(platform)
            assert [v["version"] for v in versions] == ["1"], versions
            assert xcom(api, DAG_ID, run_id, "register")["version"] == "1"

            # 2. The broker stops for 10 s while train runs on the remaining worker.
            run_id = trigger(api)
            wait_for_state(api, run_id, "train", "running")
            private_redis.stop()
            time.sleep(10)
            private_redis.start()
            wait_for_run(api, DAG_ID, run_id)
            states = api.task_states(DAG_ID, run_id)
            assert set(states.values()) == {"success"}, states
            versions = model_versions(platform)
            assert sorted(v["version"] for v in versions) == ["1", "2"], versions
            assert xcom(api, DAG_ID, run_id, "register")["version"] == "2"
            api.close()
    finally:
        drop_database(postgres_admin_url, airflow_db)
        drop_database(postgres_admin_url, mlflow_db)


def admin_api(platform: RunningPlatform) -> AirflowApi:
    api = AirflowApi(platform.url("airflow"), *platform.admin_login())

    def listed() -> bool | None:
        return True if api.client.get(f"/dags/{DAG_ID}").status_code == 200 else None

    wait_until(f"{DAG_ID} parsed", listed, timeout=300, interval=2)
    return api
