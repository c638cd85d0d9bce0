"""The monitor task type (issue #14): definition fields and checks, the compiled DAG (the
drift signal task and its asset), the operator's arguments, settings and alert selection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTATIONS = REPO_ROOT / "expectations"

DEFINITION = """\
project: shop
owner: alice
workflows:
  watch:
    schedule: "@daily"
    tasks:
      monitor:
        type: monitor
        model: shop
        window: 12h
        drift: {method: ks, threshold: 0.01, columns: {price: {method: psi, threshold: 0.2}}}
        retrain_on_drift: true
  retrain:
    schedule: {assets: [shop.watch.monitor]}
    tasks:
      approve: {type: approve, mode: auto}
"""


def _load(tmp_path: Path, text: str):
    from mlwp.definitions.loading import load_project

    path = tmp_path / "shop" / "workflow.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return load_project(path)


def test_definition_and_compiled_dag(tmp_path: Path) -> None:
    from mlwp.definitions import MonitorTask
    from operators.compiler import build_dag
    from operators.monitor import DriftSignalOperator, MonitorOperator

    project = _load(tmp_path, DEFINITION)
    task = project.workflows["watch"].tasks["monitor"]
    assert isinstance(task, MonitorTask)
    assert task.window == timedelta(hours=12) and task.lookback == timedelta(days=30)
    assert task.alert_on == ["srm", "drift", "challenger_worse", "capture"]

    dag = build_dag(project, "watch", project_dir=tmp_path / "shop", grant_role=False)
    monitor = dag.get_task("monitor")
    signal = dag.get_task("monitor.retrain")
    assert isinstance(monitor, MonitorOperator) and isinstance(signal, DriftSignalOperator)
    assert monitor.window == timedelta(hours=12)
    assert signal.upstream_task_ids == {"monitor"}
    assert [o.name for o in signal.outlets] == ["shop.watch.monitor"]
    assert not monitor.outlets
    settings = monitor.settings()
    assert settings.drift.for_column("price", "numerical") == ("psi", 0.2)
    assert settings.drift.for_column("city", "categorical") == (None, None)  # ks: numerical only
    assert settings.drift.for_column("age", "numerical") == ("ks", 0.01)


def test_asset_of_a_monitor_needs_retrain_on_drift(tmp_path: Path) -> None:
    from mlwp.definitions import DefinitionError

    text = DEFINITION.replace("        retrain_on_drift: true\n", "")
    with pytest.raises(DefinitionError) as info:
        _load(tmp_path, text)
    assert "only with retrain_on_drift: true" in str(info.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lookback": "1h"}, "'lookback' must be at least 'window'"),
        ({"metric": "auc"}, "metric"),
        ({"drift": {"method": "kss"}}, "drift.method"),
        ({"alpha": 2}, "alpha"),
        ({"alert_on": ["typo"]}, "alert_on"),
        # a p-value method's threshold is a level in (0, 1): 5 (meant as 5 %) flagged every
        # column in every window, and was accepted
        ({"drift": {"method": "ks", "threshold": 5}}, "drift.threshold: 'ks' scores a p-value"),
        (
            {"drift": {"columns": {"price": {"method": "chisquare", "threshold": 1}}}},
            "drift.columns.price.threshold: 'chisquare' scores a p-value",
        ),
    ],
)
def test_bad_fields_are_refused(tmp_path: Path, fields: dict, message: str) -> None:
    import yaml

    from mlwp.definitions import DefinitionError

    data = yaml.safe_load(DEFINITION)
    data["workflows"]["watch"]["tasks"]["monitor"].update(fields)
    with pytest.raises(DefinitionError) as info:
        _load(tmp_path, yaml.safe_dump(data))
    assert message in str(info.value)


def test_drift_thresholds_fit_their_methods_at_run_time_too() -> None:
    """A distance method's threshold may exceed 1 (PSI, Wasserstein); a p-value method's may
    not, also when the monitor's settings come from elsewhere than a definition."""
    from mlwp.monitoring.drift import DriftError, DriftSettings

    settings = DriftSettings(method="psi", threshold=1.5, columns={"age": {"threshold": 2}})
    assert settings.for_column("price", "numerical") == ("psi", 1.5)
    assert settings.for_column("age", "numerical") == ("psi", 2)
    with pytest.raises(DriftError, match=r"column 'age': 'ks' scores a p-value.*got 2"):
        DriftSettings(method="ks", columns={"age": {"threshold": 2}}).for_column("age", "numerical")
    with pytest.raises(DriftError, match="'z' scores a p-value"):
        DriftSettings(method="z", threshold=1.0).for_column("city", "categorical")


def test_a_columns_own_method_does_not_take_another_methods_threshold() -> None:
    """`drift: {method: psi, threshold: 0.25, columns: {tenure: {method: ks}}}` tested tenure
    with K-S at p < 0.25: the PSI distance's threshold read as a significance level, a column
    flagged in a quarter of the windows without drift. A column's own method takes the
    shared threshold only when it is the shared method, else its own or Evidently's default."""
    from mlwp.monitoring.drift import DriftSettings

    settings = DriftSettings(
        method="psi",
        threshold=0.25,
        columns={
            "tenure": {"method": "ks"},
            "city": {"method": "psi"},
            "age": {"method": "ks", "threshold": 0.01},
        },
    )
    assert settings.for_column("tenure", "numerical") == ("ks", None)  # Evidently's 0.05
    assert settings.for_column("city", "categorical") == ("psi", 0.25)
    assert settings.for_column("age", "numerical") == ("ks", 0.01)


def test_operator_arguments_and_findings() -> None:
    from airflow.sdk import DAG

    from operators.monitor import MonitorOperator

    with DAG("shop.watch", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC)):
        op = MonitorOperator(task_id="m", model="shop", project="shop", alert_on=["drift"])
        with pytest.raises(ValueError, match="window must be a duration"):
            MonitorOperator(task_id="w", model="shop", project="shop", window="soon")
        with pytest.raises(ValueError, match="metric must be one of"):
            MonitorOperator(task_id="x", model="shop", project="shop", metric="auc")
    assert op.window == timedelta(days=1) and op.lookback == timedelta(days=30)
    result = {
        "comparison": {"decision": "challenger_worse"},
        "alerts": [
            "sample-ratio mismatch: ...",
            "challenger worse on accuracy: ...",
            "drift in tenure (share 20%)",
        ],
    }
    assert op.findings(result) == ["drift in tenure (share 20%)"]
    op.alert_on = ("srm", "challenger_worse")
    assert op.findings(result) == [
        "sample-ratio mismatch: ...",
        "challenger worse on accuracy: ...",
    ]


def test_unreadable_capture_parts_are_sent_by_default() -> None:
    """The finding compaction's refused spool parts give (mlwp.monitoring.report.alerts) had
    no alert_on kind, so findings() dropped it: in the result and the report page, never
    sent, though docs/monitoring.md says the monitor's alerts announce it. Now `capture`,
    on by default."""
    from airflow.sdk import DAG

    from mlwp.monitoring.report import alerts
    from operators.monitor import MonitorOperator

    refused = {"part": "/c/x.spool", "reason": "/c/x.spool: not a capture spool part"}
    result = {"comparison": {}, "capture_compaction": {"parts_refused": [refused]}}
    result["alerts"] = alerts(result)
    with DAG("shop.watch", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC)):
        default = MonitorOperator(task_id="m", model="shop", project="shop")
        drift_only = MonitorOperator(task_id="d", model="shop", project="shop", alert_on=["drift"])
    assert default.findings(result) == result["alerts"] != []
    assert "capture spool part(s) unreadable" in default.findings(result)[0]
    assert drift_only.findings(result) == []


def test_schema_methods_match_the_drift_module() -> None:
    from typing import get_args

    from mlwp.definitions.schema import DriftMethod
    from mlwp.monitoring.drift import METHODS
    from mlwp.monitoring.drift_methods import P_VALUE_METHODS

    assert set(get_args(DriftMethod)) == set(METHODS)
    assert P_VALUE_METHODS.issubset(METHODS)


def test_churn_example_shows_the_whole_loop() -> None:
    """What a user copies: outcomes ingested before the daily look, findings through the
    project's notifiers, retraining on drift, and the guarded rollout after deploy."""
    from mlwp.definitions.loading import load_project

    project = load_project(REPO_ROOT / "dags" / "projects" / "churn" / "workflow.yaml")
    workflow = project.workflows["monitor"]
    assert workflow.schedule == "@daily"
    labels, monitor = workflow.tasks["labels"], workflow.tasks["monitor"]
    assert (labels.type, labels.source, monitor.type) == ("labels", "data/outcomes.csv", "monitor")
    assert monitor.after == ["labels"] and monitor.retrain_on_drift
    assert "drift" in monitor.alert_on and project.alerts.on_failure
    train = project.workflows["train"].tasks
    rollout = train["rollout"]
    assert rollout.type == "rollout" and rollout.after == ["deploy"]
    assert train["deploy"].traffic == {"champion": 90, "challenger": 10}
    assert rollout.steps == [10, 50, 100]
    assert rollout.approve is not None and rollout.approve.mode == "human"


def test_findings_are_mailed_through_the_project_notifiers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real SMTP server (aiosmtpd) receives one mail per selected finding; a notifier whose
    connection does not exist is logged and does not fail the look."""
    import json
    from types import SimpleNamespace

    from aiosmtpd.controller import Controller
    from airflow.sdk import DAG
    from server_process import free_port

    from operators.monitor import MonitorOperator
    from operators.notifiers import AlertNotifier

    received: list[tuple[str, str]] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            import email
            from email.header import decode_header, make_header

            mail = email.message_from_bytes(envelope.content)
            received.append((str(make_header(decode_header(mail["Subject"]))), mail["To"]))
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        monkeypatch.setenv(
            "AIRFLOW_CONN_MONITOR_SMTP",
            json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": port,
                    "login": "",
                    "extra": {
                        "disable_tls": True,
                        "disable_ssl": True,
                        "from_email": "mlwp@example.com",
                    },
                }
            ),
        )
        notifiers = [
            AlertNotifier(kind="connection", conn_id="no_such_connection"),
            AlertNotifier(kind="email", conn_id="monitor_smtp", to=["ml-team@example.com"]),
        ]
        with DAG("shop.watch", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC)):
            op = MonitorOperator(
                task_id="monitor", model="shop", project="shop", notifiers=notifiers
            )
        result = {
            "comparison": {"decision": "no_difference_yet"},
            "alerts": [
                "sample-ratio mismatch: requests champion 9200, challenger 800 do not "
                "fit the split {'champion': 90, 'challenger': 10}",
                "drift in tenure (share 20%)",
            ],
        }
        ti = SimpleNamespace(
            dag_id="shop.watch",
            run_id="r1",
            task_id="monitor",
            try_number=1,
            log_url="http://airflow/log",
        )
        op._alert({"ti": ti, "run_id": "r1"}, result)
    finally:
        controller.stop()
    assert len(received) == 2
    subjects = sorted(subject for subject, _ in received)
    assert subjects[0].startswith("mlwp monitor of shop (shop.watch, run r1): drift in tenure")
    assert "sample-ratio mismatch" in subjects[1] and "split ('champion': 90" in subjects[1]
    assert all(to == "ml-team@example.com" for _, to in received)


def test_a_monitored_model_no_workflow_registers_is_warned(tmp_path: Path) -> None:
    from mlwp.definitions.loading import check_file

    text = DEFINITION.replace(
        "      approve: {type: approve, mode: auto}\n",
        "      approve: {type: approve, mode: auto}\n"
        "      register: {type: register, model: shops, after: [approve]}\n",
    )
    path = tmp_path / "shop" / "workflow.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    project, problems = check_file(path)
    assert project is not None  # a warning: the model may be registered by another project
    [problem] = problems
    assert problem.severity == "warning" and problem.path[-1] == "model"
    assert "no workflow of this project registers model 'shop' (did you mean 'shops'?)" in (
        problem.message
    )
