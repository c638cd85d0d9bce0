"""A guarded rollout end to end (issue #14): a definition's ``rollout`` task, compiled and run
with ``dag.test()`` (its waits deferred on real triggers, run inline), against the real MLflow
server and the real serving process, while a client thread sends prediction requests.

- a better challenger: the steps 10 -> 50 -> 100 % advance as the guardrails hold on
  serving's per-variant metrics, and it is promoted; every step is in the model's history;
- a challenger that starts failing (it needs a feature the clients stop sending once it has
  50 %): the error-rate guardrail breaks, all traffic goes back to the champion at once, the
  task fails with the breach (the project's alerts), and the history names the guardrail.

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

from mlwp import model_changes, registry
from mlwp.settings import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = f"churn-rollout-{uuid.uuid4().hex[:8]}"
SAMPLE = REPO_ROOT / "tests" / "fixtures" / "data" / "telco_churn_sample.csv"
DEFINITION = f"""
project: churn
owner: alice
workflows:
  release:
    tasks:
      rollout:
        type: rollout
        model: {MODEL}
        steps: [10, 50, 100]
        step_duration: 2s
        check_every: 0.5s
        guardrails: {{max_error_rate: 0.05, min_requests: 8}}
"""


def train(frame: pd.DataFrame, workdir: Path, rounds: int) -> str:
    """A real XGBoost model of the churn steps, logged to MLflow; returns its model URI."""
    import mlflow

    from mlwp.training import entrypoint
    from mlwp.training.local import prepare_workdir
    from mlwp.training.tracking import log_model_run
    from mlwp.transform import run_transform

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


def register(uri: str, key: str) -> str:
    lineage = registry.Lineage(project="churn", mlflow_run_id=f"rollout-e2e-{key}-{MODEL}")
    return registry.register(MODEL, uri, lineage).version


class Clients(threading.Thread):
    """Prediction requests with random routing keys until stopped; ``drop_signal`` makes
    the records lose the feature only the failing challenger needs."""

    def __init__(self, serving: Serving, records: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.serving, self.records = serving, records
        self.stop = threading.Event()
        self.drop_signal = threading.Event()
        self.answers: list[tuple[int, str | None]] = []

    def run(self) -> None:
        import httpx

        rng = random.Random(7)
        with httpx.Client(timeout=10, headers=self.serving.auth()) as http:
            while not self.stop.is_set():
                record = dict(rng.choice(self.records))
                if self.drop_signal.is_set():
                    record.pop("signal", None)
                try:
                    response = http.post(
                        f"{self.serving.url}/predict",
                        json={"data": [record]},
                        headers={"X-Routing-Key": f"user-{rng.randrange(10**9)}"},
                    )
                    variant = response.json().get("variant") if response.is_success else None
                    self.answers.append((response.status_code, variant))
                except httpx.HTTPError:
                    self.answers.append((0, None))
                time.sleep(0.01)


def rollout_dag(folder: Path) -> Any:
    """The definition compiled, stored as the dag-processor would (dag.test() runs only
    stored DAGs) from a folder holding only it."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    folder.mkdir()
    (folder / "release.py").write_text(
        "# the airflow dag of the rollout e2e test\n"
        "from pathlib import Path\n"
        "from mlwp.definitions import parse_definition\n"
        "from operators.compiler import build_dag\n"
        f"project, problems = parse_definition({DEFINITION!r}, file='workflow.yaml', "
        "check_references=False)\n"
        "assert project is not None, problems\n"
        "dag = build_dag(project, 'release', project_dir=Path('.'), grant_role=False)\n"
    )
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)
    return bag.dags["churn.release"]


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
            dag = rollout_dag(tmp_path / "dags")
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
