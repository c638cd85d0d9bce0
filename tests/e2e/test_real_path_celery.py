"""The real path production-shaped: CeleryExecutor on PostgreSQL and Redis, two Celery
workers that share nothing on disk with the scheduler, datasets, MLflow artifacts and task
logs on S3 (a moto server).

The same story as the LocalExecutor test (``real_path.py``), plus what this shape must prove:

- the workers run with another ``MLWP_HOME`` and working directory, and the scheduler's home
  is an empty read-only mount in their namespace (``celery_platform.hiding``): the run
  succeeds, so nothing was read from it;
- both workers ran tasks (each worker's log names the task instances it executed);
- the datasets, the model artifacts (through MLflow's artifact proxy: versions' sources are
  ``mlflow-artifacts:`` URIs) and the task logs are objects in the bucket, and the task log
  read through the REST API came from there (no worker serves logs, and the api-server
  cannot see the workers' homes).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from celery_platform import (
    aws_settings,
    bucket_keys,
    celery_environment,
    celery_workers,
    create_database,
    drop_database,
    empty_redis_database,
    private_mounts_refused,
    ran_on,
    require,
)
from platform_process import RunningPlatform, running_platform
from real_path import TRAIN, create_client_key, run_churn

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


def experiment_locations(platform: RunningPlatform) -> dict[str, str]:
    response = httpx.post(
        f"{platform.url('mlflow')}/api/2.0/mlflow/experiments/search",
        json={"max_results": 100},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return {e["name"]: e["artifact_location"] for e in response.json()["experiments"]}


@pytest.mark.timeout(2700)
def test_churn_through_the_scheduler_with_two_celery_workers(
    tmp_path: Path,
    postgres_admin_url: str,
    redis_url: str,
    s3_bucket: str,
) -> None:
    require("a private mount namespace", private_mounts_refused())
    aws, bucket = aws_settings(), s3_bucket
    airflow_db = create_database(postgres_admin_url, "mlwp_realpath_airflow")
    mlflow_db = create_database(postgres_admin_url, "mlwp_realpath_mlflow")
    broker = empty_redis_database(redis_url)
    home = tmp_path / "scheduler-home"
    try:
        env = celery_environment(
            home,
            database_url=airflow_db,
            mlflow_database_url=mlflow_db,
            redis_url=broker,
            aws=aws,
            bucket=bucket,
        )
        # The deploy task's serving key, given to the scheduler and to every worker alike
        # (a worker with its own home would otherwise make a key serving does not know).
        env["MLWP_SERVING_ADMIN_KEY"] = create_client_key(env, name="deploy", scope="admin")
        client_key = create_client_key(env)
        with (
            running_platform(env, home) as platform,
            celery_workers(env, [home], tmp_path / "workers") as workers,
        ):
            workers.start("worker-1", "worker-2")
            outcome = run_churn(platform, client_key)
            api = outcome.api

            # Both workers ran tasks (a task retried may have run on both).
            used: set[str] = set()
            for run_id in (outcome.scheduled_run, outcome.triggered_run):
                listed = api.get(f"/dags/{TRAIN}/dagRuns/{run_id}/taskInstances")
                for ti in listed["task_instances"]:
                    if ti["start_date"] is None:  # the triggered run is not waited for
                        continue
                    where = ran_on(workers, ti["id"])
                    assert where, (run_id, ti["task_id"], "ran on no worker")
                    used.update(where)
            assert used == {"worker-1", "worker-2"}, used

            # State on S3: datasets; model artifacts written through MLflow's proxy (the
            # experiments' artifact locations are mlflow-artifacts: URIs, so clients send
            # artifacts to the tracking server, which stores them in the bucket); task logs.
            assert bucket_keys(aws, bucket, "storage/"), "no dataset in the bucket"
            locations = experiment_locations(platform)
            assert locations and all(
                loc.startswith("mlflow-artifacts:") for loc in locations.values()
            ), locations
            assert bucket_keys(aws, bucket, "mlflow/"), "no MLflow artifact in the bucket"
            logs = bucket_keys(aws, bucket, "logs/")
            assert any("task_id=train" in key for key in logs), logs
            # The scheduler's home holds no task log: they were written in the workers'
            # homes and shipped to S3.
            assert not list((home / "logs").rglob("attempt=*")), "a task log in the scheduler home"
            api.close()
        assert platform.proc.returncode == 0, platform.output()[-5000:]
    finally:
        drop_database(postgres_admin_url, airflow_db)
        drop_database(postgres_admin_url, mlflow_db)
        import redis

        redis.Redis.from_url(broker).flushdb()
