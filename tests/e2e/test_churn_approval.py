"""Human approval inside a pipeline run: the churn train DAG with ``approve: {mode: human}``
run with ``dag.test()`` (real GX, XGBoost, MLflow server), answered the way the Airflow UI
answers it.

On Airflow 3.3 the standard provider's ApprovalOperator parks the approve task in
``awaiting_input`` (no trigger, no triggerer) and ``dag.test()`` keeps the run alive until a
response is recorded from outside. A background thread plays the approver: it logs in to
Airflow's REST API (the one behind the UI, built in process on the session's metadata DB) as
the DataScientist ``alice``, a member of the churn project, finds the pending request in
"Required Actions" (``GET .../hitlDetails?response_received=false``), reads it and answers
with ``PATCH .../taskInstances/approve/-1/hitlDetails``, as the UI does.

- run 1, approved: deploy runs; the first version becomes the champion with all the traffic;
- run 2, rejected: a second version is registered, the request shows its metrics beside the
  champion's; deploy is skipped and the aliases and traffic stay as they were.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from approvals import airflow_api_as, run_with_approver
from churn_workflow import CHURN, churn_dag, states, versions, xcom

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# A model of this test's own: the session's MLflow server is shared with the other e2e tests.
MODEL = f"churn-approval-{uuid.uuid4().hex[:8]}"
APPROVER = "alice"  # the churn definition's owner and its approve task's approver
UPSTREAM = ("extract", "validate", "features", "train", "evaluate", "register", "approve")
METRICS = ("accuracy", "f1", "logloss", "roc_auc")


@pytest.fixture(scope="module")
def airflow_api(airflow_db: None) -> Iterator[Any]:
    """Airflow's REST API (the UI's backend) in process, logged in as the approver."""
    with airflow_api_as(APPROVER, ["churn"]) as client:
        yield client


def test_human_approval_approve_then_reject(
    pipeline_env: Path, mlflow_tracking: str, airflow_api: Any
) -> None:
    import mlflow

    client = mlflow.MlflowClient(mlflow_tracking)
    dag = churn_dag(CHURN, model=MODEL, trials=2, num_boost_round=100, approval="human")
    assert type(dag.task_dict["approve"]).__name__ == "ApproveOperator"

    # Run 1, approved: the first version is deployed (as champion: there is none yet).
    run, approver = run_with_approver(dag, airflow_api, APPROVER, "Approve")
    assert states(run) == {**dict.fromkeys(UPSTREAM, "success"), "deploy": "success"}, states(run)
    request = approver.request
    assert request is not None
    assert request["task_instance"]["dag_run_id"] == run.run_id
    assert request["subject"] == "Promote the new churn model?"
    assert request["options"] == ["Approve", "Reject"]
    assert request["multiple"] is False
    (first,) = versions(client, MODEL)
    registration = xcom(run, "register", "return_value")
    body = request["body"]
    assert f"### Promote `{MODEL}` version {first.version}?" in body
    assert "There is no champion yet" in body
    for metric in METRICS:
        assert f"| {metric} | {registration['metrics'][metric]:.4f} | - |" in body, body
    assert f"Approvers: {APPROVER}" in body
    assert approver.response is not None
    assert approver.response["responded_by"]["name"] == APPROVER
    approval = xcom(run, "approve", "return_value")
    assert approval["approved"] is True
    assert approval["approved_by"]["name"] == APPROVER
    assert approval["version"] == first.version
    model = client.get_registered_model(MODEL)
    assert model.aliases == {"champion": first.version}
    assert model.tags["mlwp.traffic"] == '{"champion":100}'

    # Run 2, rejected: a new version is registered and shown against the champion, but
    # nothing is deployed.
    run, approver = run_with_approver(dag, airflow_api, APPROVER, "Reject")
    assert states(run) == {**dict.fromkeys(UPSTREAM, "success"), "deploy": "skipped"}, states(run)
    request = approver.request
    assert request is not None and request["task_instance"]["dag_run_id"] == run.run_id
    second = next(v for v in versions(client, MODEL) if v.version != first.version)
    assert second.tags["mlwp.airflow_run_id"] == run.run_id
    registration = xcom(run, "register", "return_value")
    assert registration["version"] == second.version
    assert registration["champion"]["version"] == first.version
    body = request["body"]
    assert f"### Promote `{MODEL}` version {second.version}?" in body
    assert f"Current champion: version {first.version}" in body
    assert "| metric | new | champion | change |" in body
    for metric in METRICS:
        new = registration["metrics"][metric]
        old = registration["champion"]["metrics"][metric]
        assert f"| {metric} | {new:.4f} | {old:.4f} | {new - old:+.4f} |" in body, body
    # The gate's reasons are in the request too (the new version matches the champion).
    assert "beats champion" in body, body
    approval = xcom(run, "approve", "return_value")
    assert approval["approved"] is False
    assert approval["approved_by"]["name"] == APPROVER
    # The version stays registered; no alias moved and the traffic split is unchanged.
    assert {v.version for v in versions(client, MODEL)} == {first.version, second.version}
    model = client.get_registered_model(MODEL)
    assert model.aliases == {"champion": first.version}
    assert model.tags["mlwp.traffic"] == '{"champion":100}'
    assert xcom(run, "deploy", "return_value") is None
