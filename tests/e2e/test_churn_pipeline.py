"""The churn training workflow end to end: the YAML definition compiled to a DAG, run with
``dag.test()`` against a real MLflow tracking server, real GX, real XGBoost, storage in a
temporary folder.

- good data: a registered version with the lineage tags, the alias and traffic set, the
  artifacts present, ROC AUC >= 0.80 on the telco test split; the dataset is an asset event;
- re-running the same DAG run registers nothing new (idempotent registration);
- corrupted data (nulls, out-of-range values, an unknown category) fails at validation,
  names those expectations, and registers nothing; the failure is delivered as an email (to
  an aiosmtpd server), a Slack webhook post and a PagerDuty event (to a local receiver),
  each naming project, workflow, task and run, linking the log and listing the failed
  expectations (issue #17). The run is dag.test()'s: the task's on_failure_callback is the
  same notifier a scheduler-run task calls, in the task's process either way.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import pytest
from alert_receivers import RECIPIENT, alert_receivers, alerts_to_receivers
from churn_workflow import CHURN, MODEL, assert_lineage, churn_dag, states, versions, xcom

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_churn_pipeline_end_to_end(
    pipeline_env: Path,
    mlflow_tracking: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    dag_runner: Any,
) -> None:
    import mlflow

    from mlwp.data.storage import Storage
    from mlwp.model import load
    from mlwp.training.core import dataset, predict_raw
    from mlwp.training.metrics import compute_metrics

    client = mlflow.MlflowClient(mlflow_tracking)
    # Links are built for a browser: the public address, not the tracking URI the tasks use.
    monkeypatch.setenv("MLWP_MLFLOW_PUBLIC_URL", "https://mlflow.example.org/")
    dag = churn_dag(CHURN)
    run = dag.test()
    assert states(run) == {
        task: "success"
        for task in (
            "extract",
            "validate",
            "features",
            "train",
            "evaluate",
            "register",
            "approve",
            "deploy",
        )
    }, states(run)

    # One registered version, carrying the lineage of contract 4.
    (version,) = versions(client)
    tags = version.tags
    storage = Storage(pipeline_env.as_uri())
    (extracted,) = storage.versions("churn", "extract")
    assert_lineage(
        tags,
        project="churn",
        run=run,
        version=version,
        extracted=extracted,
        metric="roc_auc",
    )

    # The definition deploys a challenger at 10 %, but there is no champion yet: the first
    # version becomes the champion with all the traffic.
    model = client.get_registered_model(MODEL)
    assert model.aliases == {"champion": version.version}
    assert model.tags["mlwp.traffic"] == '{"champion":100}'

    # Extra links: each task points at what it produced (operators.links, docs/ui.md).
    experiment = client.get_run(version.run_id).info.experiment_id
    links = {
        (task, name): xcom(run, task, f"_link_{name}")
        for task, name in (
            ("extract", "DatasetLink"),
            ("validate", "DataDocsLink"),
            ("features", "DatasetLink"),
            ("train", "MLflowRunLink"),
            ("register", "MLflowModelVersionLink"),
            ("approve", "MLflowModelVersionLink"),
            ("deploy", "MLflowModelVersionLink"),
        )
    }
    version_url = f"https://mlflow.example.org/#/models/{MODEL}/versions/{version.version}"
    assert links[("train", "MLflowRunLink")] == (
        f"https://mlflow.example.org/#/experiments/{experiment}/runs/{version.run_id}"
    )
    for task in ("register", "approve", "deploy"):
        assert links[(task, "MLflowModelVersionLink")] == version_url, task
    assert links[("extract", "DatasetLink")] == (
        f"/mlwp/datasets?path=churn%2Fdatasets%2Fextract%2F{extracted['sha256']}.parquet"
    )
    assert links[("features", "DatasetLink")].count("path=churn%2Fdatasets%2Ffeatures-") == 3
    assert links[("validate", "DataDocsLink")] == (
        "/mlwp/storage/"
        + extracted["validation"]["telco_churn_raw"]["docs_uri"][len(storage.root) + 1 :]
    )

    # The validation result and data docs sit beside the raw dataset, recorded in its sidecar.
    validation = extracted["validation"]["telco_churn_raw"]
    assert validation["success"] is True
    assert storage.exists(validation["result_uri"]) and storage.exists(validation["docs_uri"])

    # Artifacts: plots on the run, the two-flavour model with the mlwp files.
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "plots")}
    assert "plots/feature_importance.png" in artifacts
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{version.version}"))
    for name in ("MLmodel", "model.ubj", "mlwp.json", "preprocessing.json"):
        assert (local / name).is_file(), name
    mlmodel = (local / "MLmodel").read_text()
    assert "xgboost" in mlmodel and "mlwp.model" in mlmodel

    # ROC AUC on the held-out telco test split, recomputed from the registered model.
    (test_split,) = storage.versions("churn", "features-test")
    test = storage.read_dataset(test_split["uri"])
    served = load(local)
    data = dataset(served.preprocessing, test, served.objective, served.classes, "test")
    auc = compute_metrics("binary", data.labels, predict_raw(served.booster, data.matrix))[
        "roc_auc"
    ]
    assert auc >= 0.80, auc
    # ... and the served path (raw records) agrees with the matrix path.
    records = test.drop(columns=["churn"]).head(50).to_dict(orient="records")
    assert served.predict(records).predictions[:5] == served.predict(records[:5]).predictions

    # The extracted dataset is an Airflow asset event carrying the sidecar metadata.
    events = asset_events("churn.train.extract")
    assert events and events[-1]["sha256"] == extracted["sha256"]
    assert events[-1]["rows"] == 7043

    # Re-running the same DAG run (a retry of everything) registers nothing new.
    again = dag.test(run_after=run.run_after, logical_date=run.logical_date)
    assert again.run_id == run.run_id
    assert set(states(again).values()) == {"success"}, states(again)
    assert [v.version for v in versions(client)] == [version.version]
    # This time a champion exists, so the deploy task sets the challenger and the 90/10 split.
    model = client.get_registered_model(MODEL)
    assert model.aliases == {"champion": version.version, "challenger": version.version}
    assert model.tags["mlwp.traffic"] == '{"champion":90,"challenger":10}'
    gate = xcom(again, "register", "gate")
    assert gate["passed"] is True and "champion" in gate["summary"]

    # The score workflow scores the raw extract with the champion into storage.
    from mlwp.definitions.loading import load_project
    from operators.compiler import build_dag

    score = build_dag(load_project(CHURN / "workflow.yaml"), "score", project_dir=CHURN)
    scored = score.test()
    assert states(scored) == {"extract": "success", "predict": "success"}, states(scored)
    (predictions,) = storage.versions("churn", "predict")
    assert predictions["rows"] == 7043
    assert predictions["metadata"]["version"] == version.version
    frame = storage.read_dataset(predictions["uri"])
    # keys: [customer_id]: each customer's id and scores, not the input's other columns
    assert list(frame.columns) == ["customer_id", "prediction", "probability_No", "probability_Yes"]
    assert set(frame["prediction"]) <= {"Yes", "No"}
    assert frame["probability_Yes"].between(0, 1).all()

    # At scale (#16): the extract streams into partitions of 3,000 rows and batch prediction
    # maps one Airflow task over each, scoring in chunks; same answers as the single task.
    run = dag_runner(scaled_score_dag(tmp_path))  # a DAG outside the folder: serialized first
    assert states(run) == {
        "extract": "success",
        "predict_plan": "success",
        "predict_score": "success",
        "predict": "success",
    }, states(run)
    mapped = xcom(run, "predict", "return_value")
    assert mapped["layout"] == "partitioned" and mapped["partitions"] == 3
    sidecar = storage.read_sidecar(mapped["uri"])
    assert sidecar["metadata"]["version"] == version.version
    assert sidecar["metadata"]["mapped_tasks"] == 3
    assert sidecar["produced_by"]["dag_id"] == "churn.score_at_scale"
    at_scale = storage.read_dataset(mapped["uri"])
    assert list(at_scale.columns) == list(frame.columns)
    assert at_scale["customer_id"].tolist() == frame["customer_id"].tolist()
    assert at_scale["prediction"].tolist() == frame["prediction"].tolist()
    assert (at_scale["probability_Yes"] - frame["probability_Yes"]).abs().max() < 1e-6


def scaled_score_dag(tmp_path: Path) -> Any:
    """The churn score workflow as a project at scale writes it: streamed, mapped."""
    import yaml

    from mlwp.definitions.loading import load_project
    from operators.compiler import build_dag

    project_dir = tmp_path / "churn-at-scale"
    shutil.copytree(CHURN, project_dir)
    definition = yaml.safe_load((project_dir / "workflow.yaml").read_text())
    workflow = definition["workflows"]["score"]
    workflow["tasks"]["extract"]["rows_per_partition"] = 3000
    workflow["tasks"]["predict"].update(map_partitions=True, chunk_rows=1000)
    workflow["schedule"] = None
    definition["workflows"] = {"score_at_scale": workflow}
    (project_dir / "workflow.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    return build_dag(load_project(project_dir / "workflow.yaml"), "score_at_scale",
                     project_dir=project_dir)  # fmt: skip


def asset_events(name: str) -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == name)
            .order_by(AssetEvent.id)
        ).all()
        return [dict(row.extra or {}) for row in rows]


def test_corrupted_data_fails_at_validation_and_registers_nothing(
    pipeline_env: Path, mlflow_tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from mlwp.data.storage import Storage

    project_dir = tmp_path / "churn"
    shutil.copytree(CHURN, project_dir)
    csv = project_dir / "data" / "telco_churn.csv"
    frame = pd.read_csv(csv)
    frame.loc[0:29, "monthly_charges"] = None  # nulls
    frame.loc[30:34, "tenure"] = 999  # out of range
    frame.loc[35:36, "contract"] = "Three year"  # unknown category
    frame.to_csv(csv, index=False)
    before = {v.version for v in versions(mlflow.MlflowClient(mlflow_tracking))}

    with alert_receivers() as received:
        for name, value in received.environment.items():
            monkeypatch.setenv(name, value)
        run = churn_dag(project_dir, alerts=alerts_to_receivers()).test()
    result = states(run)
    assert result["extract"] == "success"
    assert result["validate"] == "failed"
    assert all(
        result[t] == "upstream_failed" for t in ("features", "train", "register", "deploy")
    ), result
    assert {v.version for v in versions(mlflow.MlflowClient(mlflow_tracking))} == before

    # The failure names each broken expectation, with a few unexpected values (XCom
    # "validation" is pushed before the task fails with the same summary).
    summary = xcom(run, "validate", "validation")
    assert summary["success"] is False
    failed = {(f["expectation"], f["column"]): f for f in summary["failures"]}
    assert (
        failed[("expect_column_values_to_not_be_null", "monthly_charges")]["unexpected_count"] == 30
    )
    assert failed[("expect_column_values_to_be_between", "tenure")]["unexpected_values"][:1] == [
        999
    ]
    assert failed[("expect_column_values_to_be_in_set", "contract")]["unexpected_values"][:1] == [
        "Three year"
    ]
    # The sidecar of the stored (corrupted) dataset records the failed validation too.
    storage = Storage(pipeline_env.as_uri())
    (sidecar,) = [
        s for s in storage.versions("churn", "extract") if s["uri"] == summary["dataset_uri"]
    ]
    assert sidecar["validation"]["telco_churn_raw"]["success"] is False

    # The failure alert, delivered three ways, each naming where it failed and why.
    log_url = f"/dags/churn.train/runs/{quote(run.run_id)}/tasks/validate"
    where = f"project churn, workflow train, task validate, run {run.run_id}"
    broken = ("expect_column_values_to_not_be_null", "expect_column_values_to_be_between")
    (mail,) = received.mails
    assert mail["To"] == RECIPIENT
    assert mail["Subject"].startswith("mlwp: task failed: ") and where in mail["Subject"]
    body = mail.get_body(("html", "plain")).get_content()  # type: ignore[union-attr]
    assert log_url in body and all(name in body for name in broken), body
    (slack,) = received.slack
    assert slack["path"] == "/services/T000/B000/XXXX"
    assert where in slack["text"] and log_url in slack["text"], slack
    assert all(name in slack["text"] for name in broken), slack["text"]
    (page,) = received.pagerduty
    assert page["routing_key"] == "integration-key-0" and page["event_action"] == "trigger"
    assert where in page["payload"]["summary"] and page["payload"]["severity"] == "critical"
    details = page["payload"]["custom_details"]
    assert (details["project"], details["workflow"], details["task"]) == (
        "churn",
        "train",
        "validate",
    )
    assert details["run_id"] == run.run_id and log_url in details["log_url"]
    assert all(name in details["error"] for name in broken), details
    assert page["links"][0]["href"] == details["log_url"]
