"""The data half of the churn workflow with its storage root on S3 (a moto server): extract,
GX validation (result and data docs) and features, run by ``dag.test()`` through the real
operators, every object written through s3fs and read back from the bucket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from churn_workflow import CHURN, states

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DATA_TASKS = ("extract", "validate", "features")


def data_dag(project_dir: Path) -> Any:
    """The churn train DAG cut after ``features``: the part that only touches storage."""
    from mlwp.definitions import Alerts
    from mlwp.definitions.loading import load_project
    from operators.compiler import build_dag

    project = load_project(CHURN / "workflow.yaml")
    workflow = project.workflows["train"]
    tasks = {name: task for name, task in workflow.tasks.items() if name in DATA_TASKS}
    project = project.model_copy(
        update={
            "alerts": Alerts(),
            "workflows": {"train": workflow.model_copy(update={"tasks": tasks})},
        }
    )
    return build_dag(project, "train", project_dir=project_dir)


def test_datasets_results_and_data_docs_live_in_the_bucket(
    s3_bucket: str, project_roles: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    from mlwp.data.storage import Storage

    root = f"s3://{s3_bucket}/storage"
    monkeypatch.setenv("MLWP_STORAGE_ROOT", root)
    run = data_dag(CHURN).test()
    assert states(run) == dict.fromkeys(DATA_TASKS, "success"), states(run)

    storage = Storage(root)
    (extracted,) = storage.versions("churn", "extract")
    assert extracted["uri"].startswith(f"{root}/churn/datasets/extract/")
    validation = extracted["validation"]["telco_churn_raw"]
    assert validation["success"] is True
    docs_uri = validation["docs_uri"]
    assert docs_uri.startswith(root) and docs_uri.endswith("/docs/index.html")
    assert b"<html" in storage.read_bytes(docs_uri).lower()
    frame = storage.read_dataset(extracted["uri"])  # sha256 checked on the way back
    assert len(frame) == extracted["rows"]

    keys = [
        item["Key"]
        for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for item in page.get("Contents", [])
    ]
    prefix = "storage/churn/datasets/"
    assert any(k.startswith(f"{prefix}extract/") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith(f"{prefix}features") for k in keys), keys
    assert any("/docs/" in k and k.endswith("index.html") for k in keys)
