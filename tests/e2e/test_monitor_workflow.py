"""The churn example's monitor workflow end to end (issue #14): two real churn models logged
to the real MLflow server over HTTP (each training run gets its drift baseline), registered as
champion and challenger, a day of captured predictions and labels in the platform's storage
(the capture contract's Parquet), then ``dag.test()`` of the monitor DAG. Checked: the
MonitorResult in XCom, the monitoring run in MLflow (tags with both versions, metrics, the
HTML report and Evidently's drift reports), the versions tagged back, and the retrain asset
updated because the challenger's inputs drifted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from churn_workflow import CHURN, states, xcom

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = "churn-monitor-e2e"
SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "telco_churn_sample.csv"


def _train_and_register(tmp_path: Path) -> tuple[dict[str, str], dict[str, Any], pd.DataFrame]:
    import mlflow

    from mlwp import model as mlwp_model
    from mlwp import registry
    from mlwp.training import entrypoint
    from mlwp.training.local import prepare_workdir
    from mlwp.training.tracking import log_model_run
    from mlwp.transform import run_transform

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


def test_monitor_workflow_reports_to_mlflow_and_signals_drift(
    pipeline_env: Path, tmp_path: Path
) -> None:
    import mlflow

    from mlwp.definitions import Alerts
    from mlwp.definitions.loading import load_project
    from operators.compiler import build_dag

    versions, models, frame = _train_and_register(tmp_path)
    _capture(pipeline_env.as_uri(), versions, models, frame)

    project = load_project(CHURN / "workflow.yaml")
    workflow = project.workflows["monitor"]
    task = workflow.tasks["monitor"].model_copy(update={"model": MODEL, "min_samples": 50})
    project = project.model_copy(
        update={
            "alerts": Alerts(),  # no SMTP or Slack here; the compiler's tests cover notifiers
            "workflows": {"monitor": workflow.model_copy(update={"tasks": {"monitor": task}})},
        }
    )
    dag = build_dag(project, "monitor", project_dir=CHURN)
    before = len(asset_events("churn.monitor.monitor"))
    run = dag.test()
    assert states(run) == {"monitor": "success", "monitor.retrain": "success"}

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

    # a model nobody registered: a clear error, not a registry stack trace
    from mlwp.monitoring.capture import MonitoringError
    from mlwp.monitoring.monitor import MonitorSettings, run_monitor

    with pytest.raises(MonitoringError, match="'no-such-model' is not registered"):
        run_monitor(pipeline_env.as_uri(), MonitorSettings(model="no-such-model"), experiment="x")
