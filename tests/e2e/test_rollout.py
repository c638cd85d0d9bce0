"""A guarded rollout end to end (issue #14): a definition's ``rollout`` task, compiled and run
with ``dag.test()`` (its waits deferred on real triggers, run inline), against the real MLflow
server and the real serving process, while a client thread sends prediction requests.

- a better challenger: the steps 10 -> 50 -> 100 % advance as the guardrails hold on
  serving's per-variant metrics, and it is promoted; every step is in the model's history;
- a challenger that starts failing (it needs a feature the clients stop sending once it has
  50 %): the error-rate guardrail breaks, all traffic goes back to the champion at once, the
  task fails with the breach (the project's alerts), and the history names the guardrail.

And with ``approve`` in the definition, the promotion waits for a person
(``approvals.py``: alice answers through Airflow's REST API, four-eyes rules applied):

- the request carries the evidence: each step's guardrail checks and the monitor's analysis
  of the two versions (a real look, ``run_monitor``, at what serving captured and the labels
  of those predictions: metrics with intervals per variant, SRM, the comparison, drift and
  the MLflow monitoring run); approved, the challenger is promoted;
- rejected, all traffic goes back to the champion at once, recorded as alice's rollback.

Step waits are seconds here (``step_duration: 2s``, ``check_every: 0.5s``).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from churn_workflow import states, xcom
from serving_service import Serving, run_serving

from mlwp import registry
from mlwp.registry import model_changes, rollout
from mlwp.settings import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = f"churn-rollout-{uuid.uuid4().hex[:8]}"
SAMPLE = REPO_ROOT / "tests" / "fixtures" / "data" / "telco_churn_sample.csv"
APPROVER = "alice"


def definition(
    model: str, workflow: str, approve: str = "", steps: str = "[10, 50, 100]", step: str = "2s"
) -> str:
    return f"""
project: churn
owner: alice
workflows:
  {workflow}:
    tasks:
      rollout:
        type: rollout
        model: {model}
        steps: {steps}
        step_duration: {step}
        check_every: 0.5s
        guardrails: {{max_error_rate: 0.05, min_requests: 8}}
        {approve}
"""


def train(frame: pd.DataFrame, workdir: Path, rounds: int) -> str:
    """A real XGBoost model of the churn steps, logged to MLflow; returns its model URI."""
    import mlflow

    from mlwp.data.transform import run_transform
    from mlwp.training import entrypoint
    from mlwp.training.local import prepare_workdir
    from mlwp.training.tracking import log_model_run

    steps = yaml.safe_load((REPO_ROOT / "dags/projects/churn/workflow.yaml").read_text())
    result = run_transform(frame, steps["workflows"]["train"]["tasks"]["features"]["steps"])
    environ = prepare_workdir(
        workdir,
        result.splits,
        result.preprocessing,
        {"target": "churn", "nthread": 1, "num_boost_round": rounds, "max_depth": 3},
    )
    entrypoint.run(environ)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("rollout-e2e")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("rollout-e2e")
    )
    run = client.create_run(experiment_id)
    tracked = log_model_run(
        run.info.run_id,
        workdir / "model",
        splits=result.splits,
        metrics={"validation:roc_auc": 0.5},
        params={"rounds": rounds},
    )
    client.set_terminated(run.info.run_id)
    return tracked.model_uri


def register(uri: str, key: str, model: str = MODEL) -> str:
    lineage = registry.Lineage(project="churn", mlflow_run_id=f"rollout-e2e-{key}-{model}")
    return registry.register(model, uri, lineage).version


class Clients(threading.Thread):
    """Prediction requests with random routing keys until stopped; ``drop_signal`` makes
    the records lose the feature only the failing challenger needs. ``outcomes`` collects
    (request id, the record's true label) of the answered requests."""

    def __init__(
        self, serving: Serving, records: list[dict[str, Any]], labels: list[str] | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.serving, self.records, self.labels = serving, records, labels
        self.stop = threading.Event()
        self.drop_signal = threading.Event()
        self.answers: list[tuple[int, str | None]] = []
        self.outcomes: list[tuple[str, str]] = []

    def run(self) -> None:
        import httpx

        rng = random.Random(7)
        with httpx.Client(timeout=10, headers=self.serving.auth()) as http:
            while not self.stop.is_set():
                index = rng.randrange(len(self.records))
                record = dict(self.records[index])
                if self.drop_signal.is_set():
                    record.pop("signal", None)
                try:
                    response = http.post(
                        f"{self.serving.url}/predict",
                        json={"data": [record]},
                        headers={"X-Routing-Key": f"user-{rng.randrange(10**9)}"},
                    )
                    body = response.json() if response.is_success else {}
                    self.answers.append((response.status_code, body.get("variant")))
                    if body and self.labels is not None:
                        self.outcomes.append((body["request_id"], self.labels[index]))
                except httpx.HTTPError:
                    self.answers.append((0, None))
                time.sleep(0.01)


def rollout_dag(folder: Path, text: str, workflow: str) -> Any:
    """The definition compiled, stored as the dag-processor would (dag.test() runs only
    stored DAGs) from a folder holding only it; the churn project's role may edit it."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    folder.mkdir()
    (folder / f"{workflow}.py").write_text(
        "# the airflow dag of the rollout e2e test\n"
        "from pathlib import Path\n"
        "from mlwp.definitions import parse_definition\n"
        "from operators.compiler import build_dag\n"
        f"project, problems = parse_definition({text!r}, file='workflow.yaml', "
        "check_references=False)\n"
        "assert project is not None, problems\n"
        f"dag = build_dag(project, {workflow!r}, project_dir=Path('.'))\n"
    )
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)
    return bag.dags[f"churn.{workflow}"]


def test_a_better_challenger_is_promoted_through_the_steps_and_a_failing_one_rolled_back(
    mlflow_tracking: str, pipeline_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = pd.read_csv(SAMPLE)
    with_signal = frame.assign(signal=frame["tenure"] * 0.5)
    champion = register(train(frame, tmp_path / "weak", rounds=2), "weak")
    better = register(train(frame, tmp_path / "strong", rounds=30), "strong")
    fragile = register(train(with_signal, tmp_path / "fragile", rounds=30), "fragile")
    model_changes.deploy("workflow:churn.train", MODEL, champion, "champion")
    model_changes.deploy(
        "workflow:churn.train", MODEL, better, "challenger", {"champion": 90, "challenger": 10}
    )
    records = with_signal.drop(columns=["customer_id", "churn"]).head(200).to_dict("records")

    with run_serving(MODEL, mlflow_tracking, tmp_path / "serving", monkeypatch) as serving:
        clients = Clients(serving, records)
        clients.start()
        try:
            # 1. The better challenger: 10 % -> 50 % -> promoted.
            dag = rollout_dag(tmp_path / "dags", definition(MODEL, "release"), "release")
            run = dag.test()
            assert states(run) == {"rollout": "success"}, serving.output()
            document = xcom(run, "rollout", "return_value")
            assert document["outcome"] == "promoted"
            assert registry.snapshot(MODEL) == {
                "aliases": {"champion": better},
                "traffic": {"champion": 100},
            }
            checks = document["rollout"]["checks"]
            advanced = [c["step"] for c in checks if c["action"] == "advance"]
            assert advanced == [1, 2], checks
            assert all(c["breaches"] == [] for c in checks)
            served = serving.predict(records[:1]).json()
            assert (served["variant"], served["model_version"]) == ("champion", better)

            # 2. A challenger that starts failing once it has half of the traffic.
            model_changes.deploy(
                "workflow:churn.train",
                MODEL,
                fragile,
                "challenger",
                {"champion": 90, "challenger": 10},
            )

            def drop_at_half() -> None:
                while not clients.stop.is_set():
                    if registry.get_traffic(MODEL).get("challenger") == 50:
                        clients.drop_signal.set()
                        return
                    time.sleep(0.2)

            threading.Thread(target=drop_at_half, daemon=True).start()
            failed = dag.test()
        finally:
            clients.stop.set()
            clients.join(timeout=10)
        assert states(failed) == {"rollout": "failed"}, serving.output()
        assert clients.drop_signal.is_set()
        # All traffic is back on the champion at once; the challenger alias stays, at 0 %.
        assert registry.snapshot(MODEL) == {
            "aliases": {"champion": better, "challenger": fragile},
            "traffic": {"champion": 100},
        }
        for key in range(20):
            answer = serving.predict(records[:1], **{"X-Routing-Key": f"k{key}"}).json()
            assert (answer["variant"], answer["model_version"]) == ("champion", better), answer
        evidence = xcom(failed, "rollout", "rollout")
        assert evidence["outcome"] == "rolled_back"
        breach = evidence["rollout"]["checks"][-1]
        assert breach["action"] == "rollback" and breach["step"] == 2, breach
        assert breach["breaches"][0].startswith("challenger error rate"), breach

    # The model's history tells the whole story, newest first.
    history = model_changes.history(MODEL)
    dag_id = "churn.release"
    assert [(h["actor"], h["action"]) for h in history] == [
        (f"guardrail:{dag_id}", "model.rollback"),
        (f"workflow:{dag_id}", "traffic.set"),  # fragile: 50 %
        (f"workflow:{dag_id}", "traffic.set"),  # fragile: 10 %
        ("workflow:churn.train", "model.deploy"),  # fragile as the challenger
        (f"workflow:{dag_id}", "model.promote"),
        (f"workflow:{dag_id}", "traffic.set"),  # better: 50 %
        (f"workflow:{dag_id}", "traffic.set"),  # better: 10 %
        ("workflow:churn.train", "model.deploy"),
        ("workflow:churn.train", "model.deploy"),
    ]
    rollback = history[0]["details"]
    assert rollback["kind"] == "guardrail"
    assert rollback["reason"].startswith("challenger error rate")
    assert rollback["from"]["traffic"] == {"champion": 50, "challenger": 50}
    assert rollback["to"]["traffic"] == {"champion": 100}
    assert rollback["run"]["dag_id"] == dag_id
    assert history[4]["details"]["to"]["aliases"] == {"champion": better}


def look_at_what_serving_captured(model: str, clients: Clients, root: str) -> dict[str, Any]:
    """The monitor's real look once serving has written both variants' rows and the labels
    of those predictions are stored (as a labels task stores them); its MonitorResult."""
    from datetime import UTC, datetime, timedelta

    from mlwp.monitoring.capture import read_capture
    from mlwp.monitoring.labels import ingest_labels
    from mlwp.monitoring.monitor import MonitorSettings, run_monitor

    deadline = time.monotonic() + 120
    while True:
        now = datetime.now(UTC)
        captured = read_capture(root, model, now - timedelta(hours=1), now + timedelta(hours=1))
        counts = captured["variant"].value_counts() if len(captured) else {}
        if min(counts.get("champion", 0), counts.get("challenger", 0)) >= 20:
            break
        assert time.monotonic() < deadline, f"serving captured only {dict(counts)}"
        time.sleep(1)
    outcomes = pd.DataFrame(list(clients.outcomes), columns=["inference_id", "label"])
    ingest_labels(outcomes, root=root, model=model, source="e2e", classes=["No", "Yes"])
    settings = MonitorSettings(model=model, metric="accuracy", min_samples=10)
    return run_monitor(root, settings, experiment=f"{model}.monitor").result


def test_the_promotion_waits_for_a_person_who_sees_the_evidence(
    mlflow_tracking: str, pipeline_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from approvals import airflow_api_as, run_with_approver

    model = f"churn-guarded-{uuid.uuid4().hex[:8]}"
    frame = pd.read_csv(SAMPLE)
    champion = register(train(frame, tmp_path / "weak", rounds=2), "weak", model)
    better = register(train(frame, tmp_path / "strong", rounds=30), "strong", model)
    model_changes.deploy("workflow:churn.train", model, champion, "champion")
    split = {"champion": 90, "challenger": 10}
    model_changes.deploy("workflow:churn.train", model, better, "challenger", split)
    records = frame.drop(columns=["customer_id", "churn"]).head(200).to_dict("records")
    labels = frame["churn"].head(200).tolist()
    approve = f"approve: {{mode: human, approvers: [{APPROVER}]}}"
    dag = rollout_dag(tmp_path / "dags", definition(model, "guarded", approve), "guarded")
    assert type(dag.task_dict["rollout_approval"]).__name__ == "RolloutApprovalOperator"

    settings = {"MLWP_SERVING_CAPTURE_FLUSH_SECONDS": "1"}
    with (
        run_serving(model, mlflow_tracking, tmp_path / "serving", monkeypatch, settings) as serving,
        airflow_api_as(APPROVER, ["churn"]) as api,
    ):
        clients = Clients(serving, records, labels)
        clients.start()
        try:
            monitor = look_at_what_serving_captured(model, clients, pipeline_env.as_uri())
            # 1. Approved: the request shows the steps' checks and the monitor's analysis.
            run, approver = run_with_approver(dag, api, APPROVER, "Approve")
            assert states(run) == dict.fromkeys(
                ("rollout_steps", "rollout_approval", "rollout"), "success"
            ), serving.output()
            assert registry.snapshot(model) == {
                "aliases": {"champion": better},
                "traffic": {"champion": 100},
            }
            assert approver.request is not None
            body = approver.request["body"]
            assert f"### Promote `{model}` version {better} to champion?" in body, body
            assert "| 1 | 10 |" in body and "| 2 | 50 |" in body, body
            assert f"MLflow monitoring run: [{monitor['mlflow_run_id']}](" in body, body
            assert f"| | champion v{champion} | challenger v{better} |" in body, body
            accuracy = monitor["metrics"]["challenger"]["accuracy"]
            assert f"{accuracy['value']:.4f} [{accuracy['low']:.4f}, {accuracy['high']:.4f}]" in (
                body
            ), body
            assert "- Sample-ratio mismatch: no (chi-square p = " in body, body
            decision = monitor["comparison"]["decision"]
            assert "- Challenger against champion on accuracy (" in body, body
            assert f"**{decision}**" in body, body
            assert f"- Drift of challenger v{better}: " in body, body
            assert f"Approvers: {APPROVER}" in body
            decision_doc = xcom(run, "rollout_approval", "return_value")
            assert decision_doc["approved"] is True and decision_doc["approvals"] == [APPROVER]

            # 2. Rejected: all traffic back on the champion at once, by the person.
            model_changes.deploy("workflow:churn.train", model, champion, "challenger", split)
            run, approver = run_with_approver(dag, api, APPROVER, "Reject")
        finally:
            clients.stop.set()
            clients.join(timeout=10)
        assert states(run) == {
            "rollout_steps": "success",
            "rollout_approval": "success",
            "rollout": "skipped",
        }, serving.output()
        assert approver.request is not None
        # These two versions have no monitor result yet: said, not hidden.
        assert "None for these two versions yet" in approver.request["body"]
        assert registry.snapshot(model) == {
            "aliases": {"champion": better, "challenger": champion},
            "traffic": {"champion": 100},
        }
        for key in range(10):
            answer = serving.predict(records[:1], **{"X-Routing-Key": f"k{key}"}).json()
            assert (answer["variant"], answer["model_version"]) == ("champion", better), answer
    rejected = model_changes.history(model, limit=1)[0]
    assert (rejected["actor"], rejected["action"]) == (APPROVER, "model.rollback")
    assert rejected["details"]["kind"] == "person"
    assert rejected["details"]["from"]["traffic"] == {"champion": 50, "challenger": 50}
    assert rejected["details"]["reason"].startswith(f"{APPROVER} rejected the promotion")


def test_the_guardrails_read_a_real_prometheus_scraping_serving(
    mlflow_tracking: str, pipeline_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``MLWP_PROMETHEUS_URL`` the rollout asks Prometheus (every replica), not serving:
    a real server scrapes serving's /metrics and the error-rate guardrail breaks on what it
    reads (Debian's ``prometheus``, the package that also gives promtool)."""
    from checkers import checker
    from server_process import run_prometheus

    prometheus = checker("prometheus")
    model = f"churn-prometheus-{uuid.uuid4().hex[:8]}"
    frame = pd.read_csv(SAMPLE)
    champion = register(train(frame, tmp_path / "weak", rounds=2), "weak", model)
    fragile = register(
        train(frame.assign(signal=frame["tenure"] * 0.5), tmp_path / "fragile", rounds=5),
        "fragile",
        model,
    )
    model_changes.deploy("workflow:churn.train", model, champion, "champion")
    split = {"champion": 50, "challenger": 50}
    model_changes.deploy("workflow:churn.train", model, fragile, "challenger", split)
    # The clients never send the feature the challenger needs: each of its answers fails.
    records = frame.drop(columns=["customer_id", "churn"]).head(200).to_dict("records")
    # Steps of 5 s: Prometheus needs two scrapes of a series inside the window it is asked.
    text = definition(model, "watched", steps="[50, 100]", step="5s")
    dag = rollout_dag(tmp_path / "dags", text, "watched")

    with run_serving(model, mlflow_tracking, tmp_path / "serving", monkeypatch) as serving:
        target = serving.url.removeprefix("http://")
        with run_prometheus(prometheus, tmp_path / "prometheus", [target]) as url:
            monkeypatch.setenv("MLWP_PROMETHEUS_URL", url)
            clients = Clients(serving, records)
            clients.start()
            try:
                run = dag.test()
            finally:
                clients.stop.set()
                clients.join(timeout=10)
            # What the guardrail read is what Prometheus holds, for both variants.
            seen = rollout.query_prometheus(url, model, 60)
        assert states(run) == {"rollout": "failed"}, serving.output()
    assert seen["champion"].requests > 0 and seen["champion"].errors == 0, seen
    assert seen["challenger"].requests == 0 and seen["challenger"].errors > 0, seen
    assert seen["champion"].quantile_ms() is not None
    evidence = xcom(run, "rollout", "rollout")
    breach = evidence["rollout"]["checks"][-1]
    assert breach["action"] == "rollback", breach
    assert breach["breaches"][0].startswith("challenger error rate 100.00%"), breach
    assert registry.snapshot(model)["traffic"] == {"champion": 100}
