"""Batch prediction across Celery workers: the mapped batch_predict on one worker, then on two.

    python -m bench.scale.workers                          # 4M rows, partitions of 250k
    python -m bench.scale.workers --rows 2000000 --repeat 2

One platform as production runs it: a real api-server, scheduler and dag-processor,
CeleryExecutor on PostgreSQL (a database of its own on MLWP_TEST_POSTGRES_URL's server, dropped
after) and a private ``redis-server`` on a free port, MLflow a real tracking server, and two
Celery workers of concurrency 1 each: ``w1`` consumes the queues ``default`` and ``solo``,
``w2`` only ``default``. Two DAGs compiled from one definition score the same partitioned
dataset with the same registered model: ``bench.one`` places its tasks on ``solo`` (only w1
takes them), ``bench.two`` on ``default`` (both workers do). Runs alternate one, two, two, one
... so that drift in the machine's load falls on both.

Printed per run, from the metadata database: the mapped scoring phase (first scoring task's
start to the last one's end, the part that scales out), the whole run (queued to end) and
which worker ran how many scoring tasks; then the ratio of the phases. Goal (issue 16): faster
with two workers than with one. Never a CI gate; on a shared machine read the ratio together
with the load printed beside it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.pipeline.__main__ import (
    celery_services,
    environment,
    finished,
    platform_processes,
    started_platform,
    trigger_all,
    wait_for_dags,
)
from bench.scale.__main__ import run_task
from bench.scale.tasks import PROJECT, ROWS_PER_PARTITION
from bench.scale.workflow import MODEL, definition

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "serving"))
from redis_server import PrivateRedis  # noqa: E402
from server_process import free_port, run_mlflow_server  # noqa: E402

WORKERS = {"w1": ["default", "solo"], "w2": ["default"]}
DAG_FILE = '''"""Benchmark loader (airflow dag): bench.one and bench.two of bench.scale.workers."""
from bench.scale.workflow import bench_dags

globals().update(bench_dags({definition!r}))
'''


def register_model(model_dir: Path, data_dir: Path, mlflow_url: str) -> str:
    """Log the trained model to MLflow and make it ``MODEL``'s champion; its version."""
    import mlflow

    from mlwp import registry
    from mlwp.data.storage import Storage
    from mlwp.training.tracking import log_model_run

    storage = Storage(str(data_dir / "storage"))
    splits = {
        split: storage.read_dataset(storage.versions(PROJECT, f"features-{split}")[0]["uri"])
        for split in ("train", "validation", "test")
    }
    mlflow.set_tracking_uri(mlflow_url)
    client = mlflow.MlflowClient()
    run = client.create_run(client.create_experiment("bench-scale-workers"))
    tracked = log_model_run(run.info.run_id, model_dir, splits=splits, metrics={}, params={})
    client.set_terminated(run.info.run_id)
    lineage = registry.Lineage(project=PROJECT, mlflow_run_id=run.info.run_id, backend="local")
    version = registry.register(MODEL, tracked.model_uri, lineage).version
    registry.deploy(MODEL, version, "champion", {"champion": 100})
    return str(version)


def scoring_phase(database_url: str, dag_id: str, run_id: str, logs: Path) -> dict[str, Any]:
    """The mapped scoring tasks of one run: first start to last end, and which worker ran
    each (both workers share this host's name, so a task is found by its id in their logs)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT id, start_date, end_date, state FROM task_instance "
                    "WHERE dag_id = :dag_id AND run_id = :run_id AND task_id = 'predict_score'"
                ),
                {"dag_id": dag_id, "run_id": run_id},
            ).all()
    finally:
        engine.dispose()
    outputs = {name: (logs / f"{name}.log").read_text(errors="replace") for name in WORKERS}
    per_worker = {
        name: sum(str(row.id) in output for row in rows) for name, output in outputs.items()
    }
    started = min(row.start_date for row in rows)
    ended = max(row.end_date for row in rows)
    return {
        "tasks": len(rows),
        "failed": sum(row.state != "success" for row in rows),
        "seconds": round((ended - started).total_seconds(), 3),
        "task_seconds": round(sum((r.end_date - r.start_date).total_seconds() for r in rows), 3),
        "per_worker": per_worker,
    }


def worker_processes(settings: Any) -> list[tuple[str, list[str]]]:
    """Two Celery workers of concurrency 1: w1 on default and solo, w2 on default."""
    from mlwp.platform.processes import celery_node_name, celery_worker_argv

    return [
        (name, celery_worker_argv(settings, celery_node_name(name), queues=queues, concurrency=1))
        for name, queues in WORKERS.items()
    ]


def wait_for_workers(settings: Any) -> None:
    from mlwp.platform.processes import celery_node_name, celery_ping

    deadline = time.monotonic() + 900
    for name in WORKERS:
        ready = celery_ping(settings.celery_broker_url, celery_node_name(name))
        while (reason := ready()) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {name} not ready: {reason}")
            time.sleep(1)


def run_platform(root: Path, mlflow_url: str, platform: Any, order: list[str]) -> list[dict]:
    """Start the platform, trigger the runs in ``order`` one after the other, measure each."""
    from mlwp.settings import Settings

    home = root / "platform"
    settings = Settings(
        home=home,
        airflow_port=free_port(),
        dags_folder=home / "dags",
        mlflow_tracking_uri=mlflow_url,
        storage_root=(home / "storage").as_uri(),
        executor="CeleryExecutor",
        database_url=platform.database_url,
        redis_url=platform.redis_url,
        celery_workers=0,
        celery_queues=["default", "solo"],
    )
    env = environment(settings)
    logs = home / "logs"
    # api-server, scheduler and dag-processor as bench.pipeline starts them (celery_workers=0),
    # then this benchmark's two workers
    processes = platform_processes(settings, env) + worker_processes(settings)
    results = []
    with started_platform(settings, env, processes, logs) as database:
        wait_for_workers(settings)
        wait_for_dags(database, [f"{PROJECT}.one", f"{PROJECT}.two"], 300)
        for workflow in order:
            dag_id = f"{PROJECT}.{workflow}"
            load = os.getloadavg()[0]
            before = run_ids(database, dag_id)
            trigger_all(env, [dag_id])
            run = wait_for_new_run(database, dag_id, before, 1800)
            phase = scoring_phase(database, dag_id, run["run_id"], logs)
            results.append({"workflow": workflow, "run": run, "phase": phase, "load": load})
            print(
                f"  {dag_id}: {run['state']}, scoring {phase['seconds']:.1f} s "
                f"({phase['tasks']} tasks: {phase['per_worker']}), run {run['wall_seconds']:.1f} s",
                flush=True,
            )
    return results


def run_ids(database_url: str, dag_id: str) -> set[str]:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            query = text("SELECT run_id FROM dag_run WHERE dag_id = :dag_id")
            return {row.run_id for row in connection.execute(query, {"dag_id": dag_id})}
    finally:
        engine.dispose()


def wait_for_new_run(
    database_url: str, dag_id: str, before: set[str], timeout: float
) -> dict[str, Any]:
    """Wait for the run of ``dag_id`` that is not in ``before`` to end (one SQL query a
    second: an Airflow import every second would take a core from the run)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    query = text(
        "SELECT dag_id, run_id, state, queued_at, end_date FROM dag_run WHERE dag_id = :dag_id"
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                for row in connection.execute(query, {"dag_id": dag_id}):
                    done = row.state in ("success", "failed") and row.end_date is not None
                    if row.run_id not in before and done:
                        return finished(row)
            time.sleep(1)
    finally:
        engine.dispose()
    raise TimeoutError(f"the run of {dag_id} did not finish within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--rows-per-partition", type=int, default=ROWS_PER_PARTITION)
    parser.add_argument("--chunk-rows", type=int, default=65_536)
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs (one, two)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    # A timeout's SIGTERM unwinds like Ctrl-C: the platform, redis and the database are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="mlwp-bench-workers-"))
    order = [w for pair in range(args.repeat) for w in (("one", "two"), ("two", "one"))[pair % 2]]
    redis = PrivateRedis(root)
    try:
        # A model trained on 100k rows of the same distribution (as bench.scale does).
        model = root / "model"
        for task in ("generate", "extract", "transform", "train"):
            run_task(task, model, 100_000)
        data = root / "data"
        generated = run_task("generate", data, args.rows)
        print(f"generated {args.rows:,} rows ({generated.get('bytes', 0) / 1e6:.0f} MB CSV)")
        home = root / "platform"
        (home / "dags").mkdir(parents=True)
        import yaml

        path = home / "bench" / "workflow.yaml"
        path.parent.mkdir()
        path.write_text(
            yaml.safe_dump(definition(data / "churn.csv", args.rows_per_partition, args.chunk_rows))
        )
        (home / "dags" / "bench_workers.py").write_text(DAG_FILE.format(definition=str(path)))
        redis.start()
        os.environ["MLWP_TEST_REDIS_URL"] = redis.url
        with (
            run_mlflow_server(root / "mlflow", timeout=300) as (mlflow_url, _),
            celery_services(root) as platform,
        ):
            version = register_model(model / "train" / "model", model, mlflow_url)
            print(f"registered {MODEL} version {version}; 2 Celery workers, concurrency 1 each")
            results = run_platform(root, mlflow_url, platform, order)
    finally:
        redis.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(results, args, os.cpu_count() or 0)
    return 0


def report(results: list[dict[str, Any]], args: Any, cores: int) -> None:
    partitions = -(-args.rows // args.rows_per_partition)
    print(
        f"\nmapped batch_predict of {args.rows:,} rows ({partitions} partitions of "
        f"{args.rows_per_partition:,}) on {cores} cores; CeleryExecutor, concurrency 1 per worker"
    )
    print("| workers | scoring phase s | run s | scoring tasks per worker | load at start |")
    print("| --- | --- | --- | --- | --- |")
    phases: dict[str, list[float]] = {"one": [], "two": []}
    for result in results:
        phase, workers = result["phase"], 1 if result["workflow"] == "one" else 2
        phases[result["workflow"]].append(phase["seconds"])
        print(
            f"| {workers} | {phase['seconds']:.1f} | {result['run']['wall_seconds']:.1f} | "
            f"{phase['per_worker']} | {result['load']:.1f} |"
        )
    if phases["one"] and phases["two"]:
        one = sum(phases["one"]) / len(phases["one"])
        two = sum(phases["two"]) / len(phases["two"])
        verdict = "meets" if two < one else "misses"
        print(
            f"\nscoring phase: 1 worker {one:.1f} s, 2 workers {two:.1f} s: "
            f"{one / two:.2f}x faster with two ({verdict} the goal: faster than one)"
        )


if __name__ == "__main__":
    raise SystemExit(main())
