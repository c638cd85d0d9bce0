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
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from churn_workflow import CHURN, churn_dag, states, xcom
from serving_service import Serving, run_serving

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# A model of this test's own: the session's MLflow server is shared with the other e2e tests.
MODEL = f"churn-serving-{uuid.uuid4().hex[:8]}"
TASKS = ("extract", "validate", "features", "train", "evaluate", "register", "approve", "deploy")
ROUTING_KEYS = [f"customer-{i}" for i in range(200)]


@pytest.fixture
def serving(
    pipeline_env: Path, mlflow_tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Serving]:
    """``python -m serving`` reading MODEL from the MLflow server; the deploy task reaches it
    through MLWP_SERVING_PORT with MLWP_SERVING_ADMIN_KEY (tests/e2e/serving_service.py)."""
    with run_serving(MODEL, mlflow_tracking, tmp_path / "serving", monkeypatch) as service:
        yield service


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
    from mlwp.registry import model_changes

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
