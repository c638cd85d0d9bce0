"""The workers benchmark's workflow, kept light: the DAG file imports only this module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.scale.tasks import PROJECT

MODEL = "bench-churn"


def definition(csv: Path, rows_per_partition: int, chunk_rows: int) -> dict[str, Any]:
    """The benchmark project: the same extract and mapped batch prediction, on two queues."""

    def workflow(queue: str) -> dict[str, Any]:
        place = {"queue": queue}
        return {
            "schedule": None,
            "tasks": {
                "extract": {
                    "type": "extract",
                    "source": csv.as_uri(),
                    "rows_per_partition": rows_per_partition,
                    **place,
                },
                "predict": {
                    "type": "batch_predict",
                    "after": ["extract"],
                    "model": MODEL,
                    "map_partitions": True,
                    "chunk_rows": chunk_rows,
                    **place,
                },
            },
        }

    return {
        "project": PROJECT,
        "owner": "admin",
        "defaults": {"retries": 0},
        "workflows": {"one": workflow("solo"), "two": workflow("default")},
    }


def bench_dags(path: str) -> dict[str, Any]:
    """The DAGs of the definition at ``path`` (the DAG file's loader)."""
    from mlwp.definitions.loading import load_project
    from operators.compiler import build_dags

    dags = build_dags(load_project(path), project_dir=Path(path).parent)
    for dag in dags:
        # The benchmark's throwaway Airflow has no project roles (`mlwp roles sync`).
        dag.access_control = None
    return {dag.dag_id.replace(".", "_"): dag for dag in dags}
