"""The real path production-shaped: CeleryExecutor on PostgreSQL and Redis, two Celery
workers that share nothing on disk with the scheduler, datasets, MLflow artifacts and task
logs on S3 (a moto server); then, on the same platform, the faults: a worker killed in the
middle of training and the broker stopped for 10 s in the middle of a run.

One platform for both tests (a module fixture, started once: a start and two workers cost
minutes on a two-core CI machine), in this order: the churn story needs both workers, the
worker-killed fault leaves one.

The platform: ``mlwp up`` with CeleryExecutor, Airflow's and MLflow's databases of their own
on the PostgreSQL server, a PRIVATE ``redis-server`` on a free port as the broker (so that
stopping it touches nothing shared; append-only persistence, as a managed Redis keeps its
messages), S3 on moto for datasets, MLflow artifacts (through the tracking server's proxy)
and task logs, and two workers started apart with ``mlwp worker`` (``celery_platform``). Its
DAG folder holds the loader, a copy of the real churn project and ``faults``, the churn
definition scaled down only where the faults need speed (manual only, automatic approval, 2
tuning trials and 60 boosting rounds instead of 8 and 200, ``retry_delay: 5s`` instead of 5
minutes; its register gate accepts a tie with the champion, since the second run retrains
the same data). Airflow's ``[scheduler] task_instance_heartbeat_timeout`` (default 300 s:
how long a task may stay silent before the scheduler declares it dead) is 30 s here, and
the scheduler looks for such tasks every 2 s instead of every 10 s
(``task_instance_heartbeat_timeout_detection_interval``: the killed worker's task is failed
on average 4 s sooner; the check is one query); production keeps the defaults or sets its own.

The churn story is the LocalExecutor test's (``real_path.py``), plus what this shape must
prove:

- the workers run with another ``MLWP_HOME`` and working directory, and the scheduler's home
  is an empty read-only mount in their namespace (``celery_platform.hiding``): the run
  succeeds, so nothing was read from it;
- both workers ran tasks (each worker's log names the task instances it executed);
- the datasets, the model artifacts (through MLflow's artifact proxy: versions' sources are
  ``mlflow-artifacts:`` URIs) and the task logs are objects in the bucket, and the task log
  read through the REST API came from there (no worker serves logs, and the api-server
  cannot see the workers' homes).

The faults, on ``faults.train``:

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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from aws_endpoint import aws_environment
from celery_platform import (
    Worker,
    Workers,
    bucket_keys,
    celery_environment,
    celery_workers,
    create_database,
    drop_database,
    private_mounts_refused,
    ran_on,
    require,
)
from churn_workflow import CHURN
from platform_process import (
    REPO_ROOT,
    AirflowApi,
    RunningPlatform,
    running_platform,
    wait_until,
)
from real_path import TRAIN, create_client_key, model_versions, run_churn, wait_for_run, xcom
from server_process import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

FAULTS = "faults"
FAULTS_DAG = f"{FAULTS}.train"


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


def dag_folder(root: Path) -> Path:
    """The loader, a copy of the churn project and ``faults`` (see the module docstring).
    Copies, not symlinks: extract refuses a source that resolves outside its project folder."""
    dags = root / "dags"
    (dags / "projects").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "dags" / "mlwp_projects.py", dags)
    shutil.copytree(CHURN, dags / "projects" / "churn")
    definition = yaml.safe_load((CHURN / "workflow.yaml").read_text())
    definition["project"] = FAULTS
    definition.pop("alerts", None)
    definition["defaults"]["retry_delay"] = "5s"
    train = definition["workflows"]["train"]
    train["schedule"] = None
    tasks = train["tasks"]
    tasks["train"]["tuning"]["trials"] = 2
    tasks["train"]["num_boost_round"] = 60
    tasks["register"]["model"] = tasks["deploy"]["model"] = FAULTS
    # The second run retrains the same data with the same seed, so it ties the champion; the
    # definition's strict `beat` (an identical retrain is not promoted) would skip the
    # registration the broker fault is about.
    tasks["register"]["gate"].update(margin=-1e-6, allow_worse=True)
    tasks["approve"] = {"type": "approve", "after": ["register"], "mode": "auto"}
    definition["workflows"] = {"train": train}
    project = dags / "projects" / FAULTS
    project.mkdir()
    (project / "workflow.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    shutil.copytree(CHURN / "data", project / "data")
    return dags


@dataclass
class CeleryPlatform:
    platform: RunningPlatform
    workers: Workers
    redis: PrivateRedis
    client_key: str
    aws: dict[str, str]
    bucket: str


@pytest.fixture(scope="module")
def celery_platform(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str, moto_endpoint: str
) -> Iterator[CeleryPlatform]:
    require("a private mount namespace", private_mounts_refused())
    require("redis-server", None if shutil.which("redis-server") else "not installed")
    import boto3

    root = tmp_path_factory.mktemp("real-path-celery")
    aws = aws_environment(moto_endpoint)
    bucket = f"mlwp-test-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        region_name=aws["AWS_DEFAULT_REGION"],
    ).create_bucket(Bucket=bucket)
    broker = PrivateRedis(root / "redis")
    broker.start()
    airflow_db = create_database(postgres_admin_url, "mlwp_realpath_airflow")
    mlflow_db = create_database(postgres_admin_url, "mlwp_realpath_mlflow")
    home = root / "scheduler-home"
    try:
        env = celery_environment(
            home,
            database_url=airflow_db,
            mlflow_database_url=mlflow_db,
            redis_url=broker.url,
            aws=aws,
            bucket=bucket,
            MLWP_DAGS_FOLDER=str(dag_folder(root)),
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="30",
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="2",
        )
        # The deploy task's serving key, given to the scheduler and to every worker alike
        # (a worker with its own home would otherwise make a key serving does not know).
        env["MLWP_SERVING_ADMIN_KEY"] = create_client_key(env, name="deploy", scope="admin")
        client_key = create_client_key(env)
        with (
            running_platform(env, home) as platform,
            celery_workers(env, [home], root / "workers") as workers,
        ):
            workers.start("worker-1", "worker-2")
            yield CeleryPlatform(platform, workers, broker, client_key, aws, bucket)
        assert platform.proc.returncode == 0, platform.output()[-5000:]
    finally:
        broker.stop()
        drop_database(postgres_admin_url, airflow_db)
        drop_database(postgres_admin_url, mlflow_db)


def experiment_locations(platform: RunningPlatform) -> dict[str, str]:
    response = httpx.post(
        f"{platform.url('mlflow')}/api/2.0/mlflow/experiments/search",
        json={"max_results": 100},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return {e["name"]: e["artifact_location"] for e in response.json()["experiments"]}


def test_churn_through_the_scheduler_with_two_celery_workers(
    celery_platform: CeleryPlatform,
) -> None:
    platform, workers = celery_platform.platform, celery_platform.workers
    aws, bucket, home = celery_platform.aws, celery_platform.bucket, platform.home
    outcome = run_churn(platform, celery_platform.client_key)
    api = outcome.api

    # Both workers ran tasks (a task retried may have run on both).
    used: set[str] = set()
    for run_id in (outcome.scheduled_run, outcome.triggered_run):
        listed = api.get(f"/dags/{TRAIN}/dagRuns/{run_id}/taskInstances")
        for ti in listed["task_instances"]:
            # The triggered run is not waited for; a skipped task (the rollout of a first
            # version, which has no champion to roll out against) runs nowhere.
            if ti["start_date"] is None or ti["state"] == "skipped":
                continue
            where = ran_on(workers, ti["id"])
            assert where, (run_id, ti["task_id"], "ran on no worker")
            used.update(where)
    assert used == {"worker-1", "worker-2"}, used

    # State on S3: datasets; model artifacts written through MLflow's proxy (the experiments'
    # artifact locations are mlflow-artifacts: URIs, so clients send artifacts to the
    # tracking server, which stores them in the bucket); task logs.
    assert bucket_keys(aws, bucket, "storage/"), "no dataset in the bucket"
    locations = experiment_locations(platform)
    assert locations and all(loc.startswith("mlflow-artifacts:") for loc in locations.values()), (
        locations
    )
    assert bucket_keys(aws, bucket, "mlflow/"), "no MLflow artifact in the bucket"
    logs = bucket_keys(aws, bucket, "logs/")
    assert any("task_id=train" in key for key in logs), logs
    # The scheduler's home holds no task log: they were written in the workers' homes and
    # shipped to S3.
    assert not list((home / "logs").rglob("attempt=*")), "a task log in the scheduler home"

    api.close()
    # The triggered run is not waited for (real_path.py): the admin stops it, as from the UI,
    # so that it leaves the workers to the faults test.
    admin = AirflowApi(platform.url("airflow"), *platform.admin_login())
    stopped = admin.patch(f"/dags/{TRAIN}/dagRuns/{outcome.triggered_run}", {"state": "failed"})
    assert stopped["state"] == "failed", stopped
    admin.close()


def kill_tree(worker: Worker) -> None:
    """SIGKILL a worker and every process under it, at once: a machine lost."""
    root = psutil.Process(worker.proc.pid)
    victims = [root, *root.children(recursive=True)]
    for process in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=30)


def task_instance(api: AirflowApi, run_id: str, task_id: str) -> dict[str, Any]:
    ti: dict[str, Any] = api.get(f"/dags/{FAULTS_DAG}/dagRuns/{run_id}/taskInstances/{task_id}")
    return ti


def wait_for_state(api: AirflowApi, run_id: str, task_id: str, state: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        ti = task_instance(api, run_id, task_id)
        if ti["state"] in ("failed", "upstream_failed"):
            pytest.fail(f"{FAULTS_DAG} {run_id}: {task_id} {ti['state']}")
        return ti if ti["state"] == state else None

    return wait_until(f"{task_id} {state} in {run_id}", reached, timeout=900, interval=0.5)


def trigger(api: AirflowApi) -> str:
    run_id: str = api.post(f"/dags/{FAULTS_DAG}/dagRuns", {"logical_date": None})["dag_run_id"]
    return run_id


def training_started(worker: Worker, run_id: str) -> bool | None:
    """The train task's log on the worker shows its first tuning trial under way."""
    pattern = f"dag_id={FAULTS_DAG}/run_id={run_id}/task_id=train/attempt=1.log"
    logs = list((worker.home / "logs").rglob(pattern))
    return True if logs and "trial" in logs[0].read_text(errors="replace") else None


def admin_api(platform: RunningPlatform) -> AirflowApi:
    api = AirflowApi(platform.url("airflow"), *platform.admin_login())

    def listed() -> bool | None:
        return True if api.client.get(f"/dags/{FAULTS_DAG}").status_code == 200 else None

    wait_until(f"{FAULTS_DAG} parsed", listed, timeout=300, interval=2)
    return api


def test_worker_killed_in_training_then_broker_stopped(celery_platform: CeleryPlatform) -> None:
    platform, workers, broker = (
        celery_platform.platform,
        celery_platform.workers,
        celery_platform.redis,
    )
    first, second = workers.started[:2]
    api = admin_api(platform)
    api.patch(f"/dags/{FAULTS_DAG}", {"is_paused": False})

    # 1. The worker running train is lost mid-training.
    run_id = trigger(api)
    ti = wait_for_state(api, run_id, "train", "running")
    (victim_name,) = ran_on(workers, ti["id"])
    victim, survivor = (first, second) if victim_name == first.name else (second, first)
    wait_until("training under way", lambda: training_started(victim, run_id), timeout=600)
    kill_tree(victim)
    wait_for_run(api, FAULTS_DAG, run_id)
    train = task_instance(api, run_id, "train")
    assert train["try_number"] == 2, train
    assert survivor.name in ran_on(workers, train["id"])
    assert task_instance(api, run_id, "register")["try_number"] == 1
    versions = model_versions(platform, FAULTS)
    assert [v["version"] for v in versions] == ["1"], versions
    assert xcom(api, FAULTS_DAG, run_id, "register")["version"] == "1"

    # 2. The broker stops for 10 s while train runs on the remaining worker.
    run_id = trigger(api)
    wait_for_state(api, run_id, "train", "running")
    broker.stop()
    time.sleep(10)
    broker.start()
    wait_for_run(api, FAULTS_DAG, run_id)
    states = api.task_states(FAULTS_DAG, run_id)
    # The guarded rollout after deploy may be skipped (no better challenger to roll out);
    # every other task succeeded.
    assert {s for t, s in states.items() if not t.startswith("rollout")} == {"success"}, states
    assert {s for t, s in states.items() if t.startswith("rollout")} <= {"success", "skipped"}
    versions = model_versions(platform, FAULTS)
    assert sorted(v["version"] for v in versions) == ["1", "2"], versions
    assert xcom(api, FAULTS_DAG, run_id, "register")["version"] == "2"
    api.close()
