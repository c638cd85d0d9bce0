"""Pipeline benchmark: the churn training workflow's wall time through Airflow vs directly.

    python -m bench.pipeline                      # floor, dag.test, scheduler; 3 trials
    python -m bench.pipeline --modes floor,scheduler,celery --trials 2 --concurrent 8

Modes, each in a fresh process against one real MLflow server and its own storage:

- ``floor``: the same steps (extract, validate, transform, train with tuning, evaluate,
  register, deploy) called directly in one Python process;
- ``dag_test``: the churn YAML's train workflow compiled to a DAG and run with ``dag.test()``;
- ``scheduler``: the same DAG under a real api-server, scheduler (LocalExecutor, SQLite) and
  dag-processor on free ports, triggered once; wall time is the run's ``queued_at`` (the
  trigger recorded) to its ``end_date``, read from the metadata database. The platform's
  own configuration (mlwp.platform.airflow_config) is used, so ``MLWP_PRELOAD=false`` measures
  the scheduler without the preloaded forkserver;
- ``celery``: the same with CeleryExecutor, as production runs it: a PostgreSQL database and
  an empty Redis database of its own (servers from MLWP_TEST_POSTGRES_URL and
  MLWP_TEST_REDIS_URL, localhost by default) and two Celery workers started as ``mlwp up``
  starts them.

After the single run, the scheduler and celery modes trigger ``--concurrent`` copies of the
workflow (one project each, ``bench0.train`` ...) together and report the time from the first
queued to the last end (the throughput of N concurrent workflow runs).

Prints each wall time, the overhead ratio against the floor and each task's queued-to-start
latency. Goals (issue 12): <= 1.3x the floor with LocalExecutor, <= 1.5x with Celery. Never
a CI gate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.pipeline.workflow import REPO_ROOT

# the tests' way to run an MLflow server, find a port and wait for HTTP
sys.path.insert(0, str(REPO_ROOT / "tests"))
from server_process import free_port, run_mlflow_server, wait_for_http

VENV_BIN = Path(sys.executable).parent
# Like dags/mlwp_projects.py, a task process builds only its own DAG (the parsing context).
DAG_FILE = '''"""Benchmark loader (airflow dag): the churn train workflow for bench.pipeline."""
from airflow.sdk import get_parsing_context

from bench.pipeline.workflow import bench_dag

_wanted = get_parsing_context().dag_id
for _project in ["churn", *{projects!r}]:
    if _wanted in (None, _project + ".train"):
        _model = {model!r} if _project == "churn" else {model!r} + "-" + _project
        globals()[_project] = bench_dag(_model, {trials}, _project)
'''


def environment(settings: Any) -> dict[str, str]:
    from mlwp.platform.airflow_config import airflow_environment

    env = {**os.environ, **airflow_environment(settings)}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["GX_ANALYTICS_ENABLED"] = "false"
    env["MLWP_SERVING_PORT"] = str(free_port())  # nothing listens: deploy logs and goes on
    return env


def run_worker(mode: str, env: dict[str, str], model: str, trials: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.pipeline.worker", mode, model, str(trials)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line.removeprefix("BENCH-RESULT "))  # type: ignore[no-any-return]
    raise RuntimeError(f"{mode} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def write_dag_folder(home: Path, model: str, trials: int, projects: list[str]) -> Path:
    """A DAG folder holding only the benchmark DAGs (dag.test stores the folder's DAGs too):
    ``churn.train`` and one ``<project>.train`` per concurrent project."""
    dags = home / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    (dags / "bench_churn.py").write_text(
        DAG_FILE.format(model=model, trials=trials, projects=projects)
    )
    return dags


def wait_for_runs(database_url: str, dag_ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Wait for the latest manual run of each DAG to end; state, run_id, times."""
    from sqlalchemy import bindparam, create_engine, text

    engine = create_engine(database_url)
    query = text(
        "SELECT dag_id, run_id, state, queued_at, end_date FROM dag_run "
        "WHERE dag_id IN :dag_ids AND run_type = 'manual' ORDER BY queued_at"
    ).bindparams(bindparam("dag_ids", expanding=True))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                rows = {row.dag_id: row for row in connection.execute(query, {"dag_ids": dag_ids})}
            done = [
                row
                for row in rows.values()
                if row.state in ("success", "failed") and row.end_date is not None
            ]
            if len(done) == len(dag_ids):
                return [finished(row) for row in done]
            time.sleep(0.5)
    finally:
        engine.dispose()
    raise TimeoutError(f"the triggered runs of {dag_ids} did not finish within {timeout:.0f} s")


def finished(row: Any) -> dict[str, Any]:
    queued, ended = (
        value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        for value in (row.queued_at, row.end_date)
    )
    return {
        "dag_id": row.dag_id,
        "run_id": row.run_id,
        "state": row.state,
        "queued_at": queued,
        "end_date": ended,
        "wall_seconds": round((ended - queued).total_seconds(), 3),
    }


@dataclass
class Platform:
    """What a scheduler mode runs on: the executor and, for Celery, the shared services."""

    executor: str = "LocalExecutor"
    database_url: str | None = None  # PostgreSQL for Celery; SQLite under the home otherwise
    redis_url: str | None = None
    workers: int = 0


def platform_settings(home: Path, mlflow_url: str, port: int, platform: Platform) -> Any:
    from mlwp.settings import Settings

    return Settings(
        home=home,
        airflow_port=port,
        dags_folder=home / "dags",
        mlflow_tracking_uri=mlflow_url,
        storage_root=(home / "storage").as_uri(),
        executor=platform.executor,
        database_url=platform.database_url,
        redis_url=platform.redis_url,
        celery_workers=platform.workers,
    )


def platform_processes(settings: Any, env: dict[str, str]) -> list[tuple[str, list[str]]]:
    """api-server, scheduler, dag-processor and, for Celery, the workers (as ``mlwp up``)."""
    from mlwp.platform.processes import api_server_command

    airflow = str(VENV_BIN / "airflow")
    port = str(settings.airflow_port)
    api_server = api_server_command(settings, airflow)
    commands = [
        ("api-server", [*api_server, "--port", port, "--workers", "1"]),
        ("scheduler", [airflow, "scheduler", "--skip-serve-logs"]),
        ("dag-processor", [airflow, "dag-processor"]),
    ]
    if settings.celery_workers:
        from mlwp.platform.processes import celery_worker_processes

        commands += [(spec.name, spec.argv) for spec in celery_worker_processes(settings, env)]
    return commands


def wait_for_workers(settings: Any, env: dict[str, str], timeout: float) -> None:
    """Wait until every Celery worker answers a ping through the broker (``mlwp up``'s own
    readiness probe): a run triggered before would wait for the workers' start (their
    preload imports the ML stack), which is start-up time, not the executor's overhead."""
    from mlwp.platform.processes import celery_worker_processes

    deadline = time.monotonic() + timeout
    for spec in celery_worker_processes(settings, env):
        assert spec.ready is not None
        while (reason := spec.ready()) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{spec.name} not ready after {timeout:.0f} s: {reason}")
            time.sleep(1)


def trigger_all(env: dict[str, str], dag_ids: list[str]) -> None:
    """Trigger each DAG once from one Python process (one Airflow import, not one per run)."""
    script = (
        "import sys\n"
        "from airflow.api.common.trigger_dag import trigger_dag\n"
        "from airflow.utils.types import DagRunTriggeredByType\n"
        "for dag_id in sys.argv[1:]:\n"
        "    trigger_dag(dag_id, triggered_by=DagRunTriggeredByType.CLI)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, *dag_ids], env=env, cwd=REPO_ROOT, check=True,
        capture_output=True,
    )  # fmt: skip


@contextmanager
def started_platform(
    settings: Any, env: dict[str, str], processes: list[tuple[str, list[str]]], logs: Path
) -> Iterator[str]:
    """Migrate the metadata database, start ``processes`` (each logging to ``logs/<name>.log``)
    and wait for the api-server's health; stop them all on the way out. Yields the metadata
    database's URL. The benchmarks' DAGs are manual only: they run unpaused (one CLI call
    less each), and the DAG folder is looked at every 5 s."""
    env["AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL"] = "5"
    env["AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL"] = "5"
    env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = "False"
    env["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"] = "16"
    airflow = str(VENV_BIN / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for name, argv in processes:
            handle = (logs / f"{name}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    argv, env=env, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )  # fmt: skip
        wait_for_http(f"{settings.airflow_url}/api/v2/monitor/health", 300)
        yield env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


def run_platform(
    home: Path, mlflow_url: str, trials: int, platform: Platform, concurrent: int
) -> dict[str, Any]:
    """One churn.train run through the scheduler, then ``concurrent`` projects' runs at once."""
    projects = [f"bench{number}" for number in range(concurrent)]
    write_dag_folder(home, f"churn-bench-{home.name}", trials, projects)
    settings = platform_settings(home, mlflow_url, free_port(), platform)
    env = environment(settings)
    processes = platform_processes(settings, env)
    with started_platform(settings, env, processes, home / "logs") as database:
        wanted = ["churn.train", *(f"{project}.train" for project in projects)]
        wait_for_dags(database, wanted, 300)
        wait_for_workers(settings, env, 900)
        trigger_all(env, ["churn.train"])
        # Polled with one SQL query on the metadata database: a Python process importing
        # Airflow every second would take a core from the run on a two-core machine.
        (run,) = wait_for_runs(database, ["churn.train"], 1800)
        result: dict[str, Any] = {
            "wall_seconds": run["wall_seconds"],
            "state": run["state"],
            "tasks": task_latencies(env, "churn.train", run["run_id"]),
            "note": "wall is the run's queued_at to end_date in the metadata database",
        }
        if projects:
            batch = [f"{project}.train" for project in projects]
            trigger_all(env, batch)
            runs = wait_for_runs(database, batch, 3600)
            result["concurrent"] = summarize_concurrent(runs)
        return result


def wait_for_dags(database_url: str, dag_ids: list[str], timeout: float) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                found = {
                    row.dag_id
                    for row in connection.execute(
                        text("SELECT dag_id FROM dag WHERE is_stale = false")
                    )
                }
            if set(dag_ids) <= found:
                return
            time.sleep(2)
    finally:
        engine.dispose()
    raise TimeoutError(f"the dag-processor never stored {sorted(set(dag_ids) - found)}")


def task_latencies(env: dict[str, str], dag_id: str, run_id: str) -> dict[str, Any]:
    query = (
        "import json,sys\n"
        "from bench.pipeline.worker import task_latencies\n"
        f"print('TASKS', json.dumps(task_latencies({dag_id!r}, {run_id!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", query], check=True, env=env, cwd=REPO_ROOT,
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    tasks_line = next(x for x in out.splitlines() if x.startswith("TASKS "))
    return json.loads(tasks_line[6:])  # type: ignore[no-any-return]


def summarize_concurrent(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """N runs started together: first queued to last end, and runs per minute."""
    first = min(run["queued_at"] for run in runs)
    last = max(run["end_date"] for run in runs)
    makespan = (last - first).total_seconds()
    return {
        "runs": len(runs),
        "succeeded": sum(run["state"] == "success" for run in runs),
        "makespan_seconds": round(makespan, 3),
        "runs_per_minute": round(60 * len(runs) / makespan, 3),
        "run_seconds": sorted(run["wall_seconds"] for run in runs),
    }


# Goals of issue 12: the scheduler's wall time over the floor, per executor.
GOALS = {"scheduler": 1.3, "celery": 1.5}
MODES = ("floor", "dag_test", "scheduler", "celery")


@contextmanager
def celery_services(root: Path) -> Iterator[Platform]:
    """PostgreSQL (a database of its own, dropped after) and Redis (a DB number of its own,
    emptied after) for the celery mode; their servers come from MLWP_TEST_POSTGRES_URL and
    MLWP_TEST_REDIS_URL (localhost by default), as for the tests."""
    import redis
    from sqlalchemy import create_engine, text

    admin_url = os.environ.get(
        "MLWP_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    )
    redis_base = os.environ.get("MLWP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    name = f"mlwp_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    # An empty Redis database of its own: never one that holds someone else's keys.
    broker = None
    for number in range(15, 0, -1):
        candidate = urlsplit(redis_base)._replace(path=f"/{number}").geturl()
        client = redis.Redis.from_url(candidate)
        if client.dbsize() == 0 and client.set("mlwp-bench-pipeline", "1", nx=True):
            broker = candidate
            break
    if broker is None:
        raise RuntimeError(f"no empty Redis database on {redis_base} for the celery mode")
    try:
        yield Platform(
            executor="CeleryExecutor",
            database_url=urlsplit(admin_url)._replace(path=f"/{name}").geturl(),
            redis_url=broker,
            workers=2,
        )
    finally:
        redis.Redis.from_url(broker).flushdb()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="floor,dag_test,scheduler")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument(
        "--concurrent",
        type=int,
        default=8,
        help="Projects whose runs start together after the single run, in the scheduler and "
        "celery modes (0: none).",
    )
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder.")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; modes are {', '.join(MODES)}")
    root = Path(tempfile.mkdtemp(prefix="mlwp-bench-pipeline-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        with run_mlflow_server(root / "mlflow", timeout=300) as (mlflow_url, _):
            for mode in modes:
                home = root / mode
                home.mkdir()
                print(f"running {mode} ...", flush=True)
                if mode == "scheduler":
                    results[mode] = run_platform(
                        home, mlflow_url, args.trials, Platform(), args.concurrent
                    )
                elif mode == "celery":
                    with celery_services(root) as platform:
                        results[mode] = run_platform(
                            home, mlflow_url, args.trials, platform, args.concurrent
                        )
                else:
                    model = f"churn-bench-{mode}"
                    write_dag_folder(home, model, args.trials, [])
                    settings = platform_settings(home, mlflow_url, free_port(), Platform())
                    results[mode] = run_worker(mode, environment(settings), model, args.trials)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(results, args.trials)


def report(results: dict[str, dict[str, Any]], trials: int) -> None:
    print(f"\nchurn training workflow, {trials} tuning trials")
    floor = results.get("floor", {}).get("wall_seconds")
    for mode, result in results.items():
        wall = result["wall_seconds"]
        ratio = f"  {wall / floor:.2f}x floor" if floor and mode != "floor" else ""
        print(f"  {mode:<10} {wall:8.1f} s{ratio}  {result.get('state', '')}")
        if "steps" in result:
            print("    steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in result["steps"].items()))
        for task, info in result.get("tasks", {}).items():
            print(
                f"    {task:<10} upstream end->queued {info.get('upstream_end_to_queued')} s, "
                f"queued->start {info['queued_to_start']} s, "
                f"ran {info['duration']} s ({info['state']})"
            )
    for mode, goal in GOALS.items():
        if floor and mode in results:
            ratio = results[mode]["wall_seconds"] / floor
            verdict = "meets" if ratio <= goal else "misses"
            print(f"\n{mode}: {ratio:.2f}x the floor, {verdict} the {goal}x goal")
    concurrent = {mode: r["concurrent"] for mode, r in results.items() if "concurrent" in r}
    if concurrent:
        print("\nconcurrent runs (one per project, started together):")
        for mode, info in concurrent.items():
            print(
                f"  {mode:<10} {info['succeeded']}/{info['runs']} succeeded, "
                f"first queued -> last end {info['makespan_seconds']:.1f} s, "
                f"{info['runs_per_minute']:.2f} runs/min; each run "
                f"{info['run_seconds'][0]:.0f}-{info['run_seconds'][-1]:.0f} s"
            )


if __name__ == "__main__":
    main()
