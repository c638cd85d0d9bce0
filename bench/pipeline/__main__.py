"""Pipeline benchmark: the churn training workflow's wall time through Airflow vs directly.

    python -m bench.pipeline                      # floor, dag.test, scheduler; 3 trials
    python -m bench.pipeline --modes floor,dag_test --trials 2

Modes, each in a fresh process against one real MLflow server and its own storage:

- ``floor``: the same steps (extract, validate, transform, train with tuning, evaluate,
  register, deploy) called directly in one Python process;
- ``dag_test``: the churn YAML's train workflow compiled to a DAG and run with ``dag.test()``;
- ``scheduler``: the same DAG under a real api-server, scheduler (LocalExecutor) and
  dag-processor on free ports, triggered with the CLI; wall time is the run's ``queued_at``
  (the trigger recorded) to its ``end_date``, read from the metadata database. The platform's
  own configuration (mlwp.platform.airflow_config) is used, so ``MLWP_PRELOAD=false`` measures
  the scheduler without the preloaded forkserver.

Prints each wall time, the overhead ratio against the floor and each task's queued-to-start
latency. Goal (issue #4): scheduler overhead <= 1.5x the floor. Never a CI gate.
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
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.pipeline.workflow import REPO_ROOT

# the tests' way to run an MLflow server, find a port and wait for HTTP
sys.path.insert(0, str(REPO_ROOT / "tests"))
from server_process import free_port, run_mlflow_server, wait_for_http

VENV_BIN = Path(sys.executable).parent
DAG_FILE = '''"""Benchmark loader (airflow dag): the churn train workflow for bench.pipeline."""
from bench.pipeline.workflow import bench_dag

dag = bench_dag({model!r}, {trials})
'''


def environment(home: Path, mlflow_url: str, port: int, dags: Path | None = None) -> dict[str, str]:
    from mlwp.platform.airflow_config import airflow_environment
    from mlwp.settings import Settings

    settings = Settings(
        home=home,
        airflow_port=port,
        dags_folder=dags or home / "dags",
        mlflow_tracking_uri=mlflow_url,
        storage_root=(home / "storage").as_uri(),
    )
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


def write_dag_folder(home: Path, model: str, trials: int) -> Path:
    """A DAG folder holding only the benchmark DAG (dag.test stores the folder's DAGs too)."""
    dags = home / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    (dags / "bench_churn.py").write_text(DAG_FILE.format(model=model, trials=trials))
    return dags


def wait_for_run(database_url: str, dag_id: str, timeout: float) -> dict[str, Any]:
    """Wait for the DAG's manual run to end; its state, run_id and queued-to-end seconds."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    query = text(
        "SELECT run_id, state, queued_at, end_date FROM dag_run "
        "WHERE dag_id = :dag_id AND run_type = 'manual' ORDER BY queued_at DESC LIMIT 1"
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                row = connection.execute(query, {"dag_id": dag_id}).first()
            if row is not None and row.state in ("success", "failed") and row.end_date:
                queued, ended = (
                    value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
                    for value in (row.queued_at, row.end_date)
                )
                return {
                    "run_id": row.run_id,
                    "state": row.state,
                    "wall_seconds": round((ended - queued).total_seconds(), 3),
                }
            time.sleep(0.5)
    finally:
        engine.dispose()
    raise TimeoutError(f"the triggered run of {dag_id} did not finish within {timeout:.0f} s")


def run_scheduler(home: Path, mlflow_url: str, model: str, trials: int) -> dict[str, Any]:
    dags = write_dag_folder(home, model, trials)
    port = free_port()
    env = environment(home, mlflow_url, port, dags)
    env["AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL"] = "5"
    env["AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL"] = "5"
    airflow = str(VENV_BIN / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    procs = []
    try:
        for name, argv in (
            ("api-server", [airflow, "api-server", "--port", str(port), "--workers", "1"]),
            ("scheduler", [airflow, "scheduler", "--skip-serve-logs"]),
            ("dag-processor", [airflow, "dag-processor"]),
        ):
            handle = (logs / f"{name}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    argv,
                    env=env,
                    cwd=REPO_ROOT,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        wait_for_http(f"http://127.0.0.1:{port}/api/v2/monitor/health", 300)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            listed = subprocess.run(
                [airflow, "dags", "list", "-o", "json"],
                check=False,
                env=env,
                capture_output=True,
                text=True,
            )
            if "churn.train" in listed.stdout:
                break
            time.sleep(2)
        else:
            raise TimeoutError("the dag-processor never parsed churn.train")
        subprocess.run(
            [airflow, "dags", "unpause", "churn.train"], env=env, check=True, capture_output=True
        )
        subprocess.run(
            [airflow, "dags", "trigger", "churn.train"], env=env, check=True, capture_output=True
        )
        # Polled with one SQL query on the metadata database: a Python process importing
        # Airflow every second would take a core from the run on a two-core machine.
        run = wait_for_run(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], "churn.train", 1800)
        query = (
            "import json,sys\n"
            "from bench.pipeline.worker import task_latencies\n"
            f"print('TASKS', json.dumps(task_latencies('churn.train', {run['run_id']!r})))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", query],
            check=True,
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout
        tasks_line = next(x for x in out.splitlines() if x.startswith("TASKS "))
        return {
            "wall_seconds": run["wall_seconds"],
            "state": run["state"],
            "tasks": json.loads(tasks_line[6:]),
            "note": "wall is the run's queued_at to end_date in the metadata database",
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="floor,dag_test,scheduler")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder.")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - {"floor", "dag_test", "scheduler"})
    if unknown:
        parser.error(f"unknown modes {unknown}; modes are floor, dag_test, scheduler")
    root = Path(tempfile.mkdtemp(prefix="mlwp-bench-pipeline-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        with run_mlflow_server(root / "mlflow", timeout=300) as (mlflow_url, _):
            for mode in modes:
                home = root / mode
                home.mkdir()
                print(f"running {mode} ...", flush=True)
                model = f"churn-bench-{mode}"
                if mode == "scheduler":
                    results[mode] = run_scheduler(home, mlflow_url, model, args.trials)
                else:
                    dags = write_dag_folder(home, model, args.trials)
                    env = environment(home, mlflow_url, free_port(), dags)
                    results[mode] = run_worker(mode, env, model, args.trials)
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
    if floor and "scheduler" in results:
        ratio = results["scheduler"]["wall_seconds"] / floor
        verdict = "meets" if ratio <= 1.5 else "misses"
        print(f"\nscheduler overhead {ratio:.2f}x the floor: {verdict} the 1.5x goal")


if __name__ == "__main__":
    main()
