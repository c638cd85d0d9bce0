"""One benchmark mode in a fresh process: ``python -m bench.pipeline.worker MODE MODEL TRIALS``.

Prints one JSON line: wall seconds and, through Airflow, each task's queued-to-start latency.
Airflow and MLflow are configured by the environment the parent sets.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from bench.pipeline.workflow import CHURN, bench_dag, bench_project


def floor(model: str, trials: int) -> dict[str, Any]:
    """The same steps as the DAG's tasks, called directly in this process."""
    from mlwp import registry
    from mlwp.data import extract
    from mlwp.data.storage import default_storage
    from mlwp.data.transform import run_transform
    from mlwp.data.validation import validate_dataset
    from mlwp.model.preprocessing import Preprocessing
    from mlwp.training.pipeline import hyperparameters_of, train_model
    from operators import _registry

    project = bench_project(model, trials)
    tasks = project.workflows["train"].tasks
    steps: dict[str, float] = {}
    started = time.monotonic()

    def lap(name: str, since: float) -> float:
        now = time.monotonic()
        steps[name] = round(now - since, 3)
        return now

    storage = default_storage()
    ref = extract.extract(
        "data/telco_churn.csv", storage=storage, project="churn", name="extract", project_dir=CHURN
    )
    mark = lap("extract", started)
    report = validate_dataset(storage, ref.uri, tasks["validate"].suite)
    assert report.success, report.failure_message()
    mark = lap("validate", mark)
    result = run_transform(storage.read_dataset(ref.uri), tasks["features"].steps)
    split_refs = {
        name: storage.write_dataset(rows, project="churn", name=f"features-{name}", source=ref.uri)
        for name, rows in result.splits.items()
    }
    storage.write_bytes(
        split_refs["train"].uri[: -len(".parquet")] + ".preprocessing.json",
        result.preprocessing.to_json(),
    )
    mark = lap("features", mark)
    train = tasks["train"]
    splits = {name: storage.read_dataset(r.uri) for name, r in split_refs.items()}
    outcome = train_model(
        splits,
        Preprocessing.from_json(result.preprocessing.to_json()),
        hyperparameters_of(
            target=train.target,
            objective=train.objective,
            params=train.params,
            num_boost_round=train.num_boost_round,
            early_stopping_rounds=train.early_stopping_rounds,
            seed=train.seed,
        ),
        experiment="churn.train.floor",
        tuning=train.tuning.model_dump() if train.tuning else None,
    )
    mark = lap("train", mark)
    model_obj = _registry.load_model(outcome.model_uri)
    comparison = registry.compare_with_champion(model, model_obj, splits["test"])
    metrics = comparison.new
    mark = lap("evaluate", mark)
    gate = tasks["register"].gate
    decision = registry.gate(
        comparison,
        gate.metric if gate else "roc_auc",
        minimum=gate.min if gate else None,
        beat_champion=bool(gate and gate.beat == "champion"),
        margin=gate.margin if gate else 0.0,
    )
    registration = registry.register(
        model,
        outcome.model_uri,
        registry.Lineage(
            project="churn",
            mlflow_run_id=outcome.run_id,
            dataset_uri=ref.uri,
            dataset_sha256=ref.sha256,
            backend="local",
        ),
        test_metrics=metrics,
    )
    mark = lap("register", mark)
    # As the deploy task: the first version becomes the champion.
    registry.deploy(model, registration.version, "champion", {"champion": 100})
    lap("deploy", mark)
    return {
        "wall_seconds": round(time.monotonic() - started, 3),
        "steps": steps,
        "gate_passed": decision.passed,
        "roc_auc": metrics.get("roc_auc"),
    }


def task_latencies(dag_id: str, run_id: str) -> dict[str, Any]:
    """Per task: queued-to-start latency and run time, from the metadata database."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    out: dict[str, Any] = {}
    with create_session() as session:
        rows = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        ).all()
        previous_end = None
        for ti in sorted(rows, key=lambda t: t.start_date or t.queued_dttm):
            queued = ti.queued_dttm
            out[ti.task_id] = {
                "state": str(ti.state),
                # The scheduler's share before a task: the upstream task's end (the chain is
                # linear) to this one being queued, then queued to started by a worker.
                "upstream_end_to_queued": (
                    round((queued - previous_end).total_seconds(), 3)
                    if queued and previous_end
                    else None
                ),
                "queued_to_start": (
                    round((ti.start_date - queued).total_seconds(), 3)
                    if queued and ti.start_date
                    else None
                ),
                "duration": round(ti.duration, 3) if ti.duration is not None else None,
            }
            previous_end = ti.end_date or previous_end
    return out


def dag_test(model: str, trials: int) -> dict[str, Any]:
    from airflow.utils import db

    db.initdb()
    dag = bench_dag(model, trials)
    started = time.monotonic()
    run = dag.test()
    wall = time.monotonic() - started
    return {
        "wall_seconds": round(wall, 3),
        "state": str(run.state),
        "tasks": task_latencies(dag.dag_id, run.run_id),
    }


def main() -> None:
    mode, model, trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
    result = floor(model, trials) if mode == "floor" else dag_test(model, trials)
    print("BENCH-RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
