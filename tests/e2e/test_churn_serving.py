"""After the churn training DAG deploys, the serving service answers from the new version
with its variant.

The churn train DAG runs with ``dag.test()`` against the real MLflow server fixture; the real
serving service runs as a uvicorn process on the same registry, with registry polling off,
so the only thing that can make it load a deployed version is the deploy task's
``POST /admin/reload`` (found through ``MLWP_SERVING_PORT`` and ``MLWP_SERVING_ADMIN_KEY``).

- first run: the version becomes the champion; ``POST /predict`` with raw telco records
  answers 200 from it, variant ``champion``;
- second run: a new version becomes the challenger with the 90/10 split; ``GET /v1/models``
  lists both, and sticky routing keys send some requests to the challenger, whose answers
  name variant ``challenger`` and the new version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from churn_workflow import CHURN, churn_dag, states, xcom
from server_process import free_port, stop_process_group, wait_for_http

from mlwp.settings import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# A model of this test's own: the session's MLflow server is shared with the other e2e tests.
MODEL = f"churn-serving-{uuid.uuid4().hex[:8]}"
TASKS = ("extract", "validate", "features", "train", "evaluate", "register", "approve", "deploy")
ROUTING_KEYS = [f"customer-{i}" for i in range(200)]


@dataclass
class Serving:
    """The serving process: its URL, a prediction key for MODEL, and its log."""

    url: str
    key: str
    log: Path

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=self.auth(), timeout=30)

    def predict(self, records: list[dict[str, Any]], **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/predict",
            json={"data": records},
            headers={**self.auth(), **headers},
            timeout=30,
        )

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


@pytest.fixture
def serving(
    pipeline_env: Path, mlflow_tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Serving]:
    """``python -m serving`` on a free port, reading MODEL from the MLflow server.

    Its key database is made here: an admin key for the deploy task, and a key limited to
    MODEL for the client. The deploy task finds the service through the platform settings
    (``MLWP_SERVING_PORT``) and authenticates with ``MLWP_SERVING_ADMIN_KEY``.
    """
    from serving.keys.store import KeyStore, migrate

    home = tmp_path / "serving"
    home.mkdir()
    database = f"sqlite:///{home / 'serving.db'}"
    migrate(database)
    store = KeyStore(database, cache_seconds=0)
    _, admin = store.create("airflow-deploy", ["admin"])
    _, client = store.create("e2e-client", [f"model:{MODEL}"])
    store.close()

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWP_SERVING_")}
    env.update(
        MLWP_SERVING_HOME=str(home),
        MLWP_SERVING_DATABASE_URL=database,
        MLWP_SERVING_MLFLOW_TRACKING_URI=mlflow_tracking,
        MLWP_SERVING_MODELS=json.dumps([MODEL]),
        MLWP_SERVING_DEFAULT_MODEL=MODEL,
        # Only the deploy's reload request may bring a new version in.
        MLWP_SERVING_POLL_INTERVAL_SECONDS="0",
        MLWP_SERVING_PREDICTION_LOG_SAMPLE_RATE="0",
        MLWP_SERVING_LOG_LEVEL="INFO",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p),
    )
    log = home / "serving.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = Serving(f"http://127.0.0.1:{port}", client, log)
    try:
        try:
            wait_for_http(f"{service.url}/health/live", timeout=180, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"serving did not start: {exc}\n{service.output()}")
        monkeypatch.setenv("MLWP_SERVING_PORT", str(port))
        monkeypatch.setenv("MLWP_SERVING_ADMIN_KEY", admin)
        yield service
    finally:
        stop_process_group(proc)


def raw_records(count: int) -> list[dict[str, Any]]:
    """Telco rows as a client sends them: raw features, no id, no label."""
    frame = pd.read_csv(CHURN / "data" / "telco_churn.csv").sample(count, random_state=7)
    records: list[dict[str, Any]] = json.loads(
        frame.drop(columns=["customer_id", "churn"]).to_json(orient="records")
    )
    return records


def deployed(dag: Any) -> dict[str, Any]:
    """Run the DAG; every task must succeed. Returns the deploy task's document."""
    run = dag.test()
    assert states(run) == dict.fromkeys(TASKS, "success"), states(run)
    document: dict[str, Any] = xcom(run, "deploy", "return_value")
    return document


def test_deployed_versions_answer_predict_with_their_variant(
    pipeline_env: Path, serving: Serving
) -> None:
    records = raw_records(5)
    # The service is up but has nothing to serve yet.
    assert serving.predict(records).status_code == 503

    # Tuning and boosting rounds cut down: this test is about deploy and serving.
    dag = churn_dag(CHURN, model=MODEL, trials=1, num_boost_round=60)

    # First run: no champion yet, so the version is deployed as the champion with all traffic,
    # and the deploy task's reload request reached the service.
    first = deployed(dag)
    assert first["alias"] == "champion", first
    assert first["traffic"] == {"champion": 100}, first
    assert first["serving_reloaded"] is True, serving.output()
    champion = first["version"]

    response = serving.predict(records)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == MODEL
    assert body["variant"] == "champion"
    assert body["model_version"] == champion
    assert len(body["predictions"]) == len(records)
    assert set(body["predictions"]) <= {"Yes", "No"}
    assert all(abs(sum(row) - 1) < 1e-6 for row in body["probabilities"])
    assert body["request_id"] and body["timestamp"]

    # Second run: another version passes the gate against the champion (same data and seed:
    # it ties) and is deployed as the challenger with the definition's 90/10 split.
    second = deployed(dag)
    assert second["alias"] == "challenger", second
    assert second["traffic"] == {"champion": 90, "challenger": 10}, second
    assert second["serving_reloaded"] is True, serving.output()
    challenger = second["version"]
    assert challenger != champion

    # Both deploys are in the model's history, by the workflow, with from -> to (issue #14).
    from mlwp import model_changes

    history = model_changes.history(MODEL)
    assert [(h["action"], h["details"]["kind"]) for h in history] == [
        ("model.deploy", "workflow"),
        ("model.deploy", "workflow"),
    ], history
    assert history[0]["actor"] == "workflow:churn.train"
    assert history[0]["details"]["from"]["aliases"] == {"champion": champion}
    assert history[0]["details"]["to"]["aliases"] == {
        "champion": champion,
        "challenger": challenger,
    }
    assert history[0]["details"]["approved_by"] == "auto"

    listed = serving.get("/v1/models")
    assert listed.status_code == 200, listed.text
    (entry,) = listed.json()["models"]
    assert entry["name"] == MODEL
    assert {v["alias"]: v["version"] for v in entry["variants"]} == {
        "champion": champion,
        "challenger": challenger,
    }
    assert entry["traffic"] == {"champion": 90, "challenger": 10}
    assert entry["load_errors"] == []

    # Sticky routing keys: about one in ten reaches the challenger, which names itself.
    one = records[:1]
    answers = {}
    for key in ROUTING_KEYS:
        response = serving.predict(one, **{"X-Routing-Key": key})
        assert response.status_code == 200, response.text
        answers[key] = response.json()
    by_variant: dict[str, list[str]] = {"champion": [], "challenger": []}
    for key, answer in answers.items():
        by_variant[answer["variant"]].append(key)
        expected = challenger if answer["variant"] == "challenger" else champion
        assert answer["model_version"] == expected, answer
    assert 5 <= len(by_variant["challenger"]) <= 45, {k: len(v) for k, v in by_variant.items()}
    # The same key keeps its variant (and the body field works like the header).
    key = by_variant["challenger"][0]
    again = httpx.post(
        f"{serving.url}/predict",
        json={"data": records, "routing_key": key},
        headers=serving.auth(),
        timeout=30,
    ).json()
    assert (again["variant"], again["model_version"]) == ("challenger", challenger)
    assert len(again["predictions"]) == len(records)
