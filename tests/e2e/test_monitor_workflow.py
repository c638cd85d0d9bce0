"""The churn example's monitor workflow end to end (issue #14): two real churn models logged
to the real MLflow server over HTTP (each training run gets its drift baseline), registered as
champion and challenger, a day of captured predictions and labels in the platform's storage
(the capture contract's Parquet), then ``dag.test()`` of the monitor DAG. Checked: the
MonitorResult in XCom, the monitoring run in MLflow (tags with both versions, metrics, the
HTML report and Evidently's drift reports), the versions tagged back, and the retrain asset
updated because the challenger's inputs drifted.

The DAG is the example's, with its model renamed: its ``labels`` task ingests the example's
outcomes file first. The project's notifiers are real ones pointed at local receivers (SMTP,
a Slack webhook, PagerDuty's Events API): the drift finding arrives there. The example's
training workflow (weekly or on the retrain asset), stored as the dag-processor stores it,
gets a run queued by the asset event, which the scheduler's own query then finds due."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from alert_receivers import alert_receivers, alerts_to_receivers
from churn_workflow import CHURN, states, xcom
from stored_dags import store_dag

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = "churn-monitor-e2e"
SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "telco_churn_sample.csv"


def _train_and_register(tmp_path: Path) -> tuple[dict[str, str], dict[str, Any], pd.DataFrame]:
    import mlflow

    from mlwp import model as mlwp_model
    from mlwp import registry
    from mlwp.data.transform import run_transform
    from mlwp.training import entrypoint
    from mlwp.training.local import prepare_workdir
    from mlwp.training.tracking import log_model_run

    definition = yaml.safe_load((CHURN / "workflow.yaml").read_text())
    steps = definition["workflows"]["train"]["tasks"]["features"]["steps"]
    data = run_transform(pd.read_csv(SAMPLE), steps)
    client = mlflow.MlflowClient()
    experiment = client.create_experiment(f"{MODEL}-training")
    versions, models = {}, {}
    for alias, rounds in (("champion", 5), ("challenger", 15)):
        workdir = tmp_path / alias
        environ = prepare_workdir(
            workdir,
            data.splits,
            data.preprocessing,
            {"target": "churn", "num_boost_round": rounds, "max_depth": 3, "nthread": 1},
        )
        entrypoint.run(environ)
        run = client.create_run(experiment, run_name=alias)
        tracked = log_model_run(
            run.info.run_id, workdir / "model", splits=data.splits, metrics={}, params={}
        )
        client.set_terminated(run.info.run_id)
        version = mlflow.register_model(tracked.model_uri, MODEL)
        registry.set_alias(MODEL, alias, version.version)
        versions[alias] = str(version.version)
        models[alias] = mlwp_model.load(workdir / "model")
    registry.set_traffic(MODEL, {"champion": 50, "challenger": 50})
    return versions, models, pd.concat([data.splits["train"], data.splits["test"]])


def _capture(storage_root: str, versions: dict, models: dict, frame: pd.DataFrame) -> None:
    """Each row of ``frame`` answered once by one variant in the last hours; the challenger's
    customers have three times the tenure (input drift); every row is labelled."""
    from monitoring_data import write

    from mlwp.monitoring.drift import model_outputs

    rng = np.random.default_rng(50)
    features = [f.name for f in models["champion"].features]
    now = datetime.now(UTC)
    rows, labels = [], []
    variant = np.where(rng.random(len(frame)) < 0.5, "champion", "challenger")
    for alias in ("champion", "challenger"):
        mine = frame[variant == alias][features].reset_index(drop=True)
        if alias == "challenger":
            mine["tenure"] = mine["tenure"] * 3
        outputs = model_outputs(models[alias], mine)
        truth = frame[variant == alias]["churn"].map({"No": 0.0, "Yes": 1.0}).to_numpy()
        for i, record in enumerate(mine.to_dict(orient="records")):
            inference_id = f"{alias}-{i}"
            time = now - timedelta(hours=3) + timedelta(seconds=i)
            prediction, probability = outputs["prediction"][i], outputs["probability"][i]
            rows.append(
                {
                    "inference_id": inference_id,
                    "row": 0,
                    "time": time,
                    "model": MODEL,
                    "version": versions[alias],
                    "variant": alias,
                    "served": True,
                    "routing_key": None,
                    "entity_key": None,
                    "inputs": json.dumps(record, default=str),
                    "prediction": prediction,
                    "probability": probability,
                    "outputs": json.dumps({"prediction": prediction}),
                    "latency_ms": 2.0,
                }
            )
            labels.append({"inference_id": inference_id, "label": truth[i], "label_time": time})
    capture = pd.DataFrame(rows)
    capture["time"] = pd.to_datetime(capture["time"], utc=True).astype("datetime64[ms, UTC]")
    write(storage_root, MODEL, capture, labels)


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


def flat(text: Any) -> str:
    """``text`` with its whitespace runs made single spaces (mail headers fold long lines)."""
    return " ".join(str(text).split())


def queued_runs(dag_id: str) -> list[str]:
    """Asset names for which a run of ``dag_id`` is queued (the scheduler starts it next)."""
    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return list(
            session.scalars(
                select(AssetModel.name)
                .join(AssetDagRunQueue, AssetDagRunQueue.asset_id == AssetModel.id)
                .where(AssetDagRunQueue.target_dag_id == dag_id)
            )
        )


def due_by_asset_events() -> set[str]:
    """DAGs the scheduler would start an asset-triggered run of now (its own query)."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return set(DagModel.dags_needing_dagruns(session)[1])


def retrain_dag() -> None:
    """Store (unpaused) the example's train workflow, scheduled weekly or on the monitor's
    retrain asset, as ``churn.retrain`` (churn.train is the pipeline test's)."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    from mlwp.definitions.loading import load_project
    from operators.compiler import build_dag

    project = load_project(CHURN / "workflow.yaml")
    train = project.workflows["train"]
    project = project.model_copy(update={"workflows": {"retrain": train}})
    store_dag(build_dag(project, "retrain", project_dir=CHURN, grant_role=False))
    with create_session() as session:
        stored = session.get(DagModel, "churn.retrain")
        stored.is_paused = False
        # the time half: the scheduler's next weekly run (Sunday 00:00 UTC) is set as well
        assert stored.timetable_summary == "Asset or 0 0 * * 0"
        assert stored.next_dagrun_create_after.weekday() == 6


def test_monitor_workflow_reports_to_mlflow_and_signals_drift(
    pipeline_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from mlwp.definitions.loading import load_project
    from operators.compiler import build_dag

    versions, models, frame = _train_and_register(tmp_path)
    _capture(pipeline_env.as_uri(), versions, models, frame)
    retrain_dag()

    project = load_project(CHURN / "workflow.yaml")
    workflow = project.workflows["monitor"]
    tasks = {
        "labels": workflow.tasks["labels"].model_copy(update={"model": MODEL}),
        "monitor": workflow.tasks["monitor"].model_copy(update={"model": MODEL, "min_samples": 50}),
    }
    project = project.model_copy(
        update={
            "alerts": alerts_to_receivers(),
            "workflows": {"monitor": workflow.model_copy(update={"tasks": tasks})},
        }
    )
    dag = build_dag(project, "monitor", project_dir=CHURN)
    before = len(asset_events("churn.monitor.monitor"))
    with alert_receivers() as received:
        for name, value in received.environment.items():
            monkeypatch.setenv(name, value)
        run = dag.test()
    assert states(run) == {
        "labels": "success",
        "monitor": "success",
        "monitor.retrain": "success",
    }
    # The example's outcomes file: every row stored as an entity label on the first run.
    ingested = xcom(run, "labels", "return_value")
    assert (ingested["rows"], ingested["written"]) == (500, 500), ingested

    result = xcom(run, "monitor", "return_value")
    assert result["model"] == MODEL and result["versions"] == versions
    assert result["srm"]["mismatch"] is False
    assert result["metric"] == "accuracy" and result["labelled_rows"] == len(frame)
    assert set(result["metrics"]) == {"champion", "challenger"}
    assert result["comparison"]["decision"] in (
        "challenger_better",
        "challenger_worse",
        "no_difference_yet",
    )
    assert result["label_coverage"]["champion"]["coverage"] == 1.0
    drift = result["drift"]
    assert drift["variants"]["challenger"]["columns"]["tenure"]["drifted"] is True
    assert drift["variants"]["champion"]["columns"]["tenure"]["drifted"] is False
    assert drift["drifted"] is True
    # the definition's per-column method reached Evidently
    assert drift["variants"]["champion"]["columns"]["monthly_charges"]["method"] == "ks"

    client = mlflow.MlflowClient()
    monitoring = client.get_run(result["mlflow_run_id"])
    assert monitoring.data.tags["mlwp.champion_version"] == versions["champion"]
    assert monitoring.data.tags["mlwp.challenger_version"] == versions["challenger"]
    assert monitoring.data.tags["mlwp.dag_id"] == "churn.monitor"
    assert "challenger.accuracy" in monitoring.data.metrics
    assert "srm.p_value" in monitoring.data.metrics
    artifacts = {a.path for a in client.list_artifacts(monitoring.info.run_id, "monitor")}
    assert artifacts == {"monitor/result.json", "monitor/report.html"}
    drift_files = {
        a.path for a in client.list_artifacts(monitoring.info.run_id, "drift/challenger")
    }
    assert drift_files == {"drift/challenger/report.html", "drift/challenger/report.json"}
    for version in versions.values():
        tags = client.get_model_version(MODEL, version).tags
        assert tags["mlwp.monitoring_run"] == monitoring.info.run_id

    events = asset_events("churn.monitor.monitor")
    assert len(events) == before + 1
    assert "tenure" in events[-1]["drifted_columns"]
    # ... which queues a run of the training workflow scheduled (weekly or) on it, and the
    # scheduler finds that run due: retraining on drift.
    assert queued_runs("churn.retrain") == ["churn.monitor.monitor"]
    assert "churn.retrain" in due_by_asset_events()
    # The drift finding went out through each of the project's notifiers.
    drift_alerts = [a for a in result["alerts"] if a.startswith("drift")]
    assert drift_alerts, result["alerts"]
    assert drift_alerts[0].startswith(f"drift in challenger v{versions['challenger']}: tenure")
    expected = flat(f"mlwp monitor of {MODEL} (churn.monitor, run {run.run_id}): {drift_alerts[0]}")
    for sent in ([m["Subject"] for m in received.mails], received.slack, received.pagerduty):
        assert any(expected in flat(message) for message in sent), (expected, sent)

    # a model nobody registered: a clear error, not a registry stack trace
    from mlwp.monitoring.capture import MonitoringError
    from mlwp.monitoring.monitor import MonitorSettings, run_monitor

    with pytest.raises(MonitoringError, match="'no-such-model' is not registered"):
        run_monitor(pipeline_env.as_uri(), MonitorSettings(model="no-such-model"), experiment="x")
