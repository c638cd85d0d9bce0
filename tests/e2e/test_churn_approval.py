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

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from churn_workflow import CHURN, churn_dag, states, versions, xcom

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# A model of this test's own: the session's MLflow server is shared with the other e2e tests.
MODEL = f"churn-approval-{uuid.uuid4().hex[:8]}"
APPROVER = "alice"  # the churn definition's owner and its approve task's approver
PASSWORD = "correct-horse-battery"
DAG_ID = "churn.train"
UPSTREAM = ("extract", "validate", "features", "train", "evaluate", "register", "approve")
METRICS = ("accuracy", "f1", "logloss", "roc_auc")


@pytest.fixture(scope="module")
def airflow_api(airflow_db: None) -> Iterator[Any]:
    """Airflow's REST API (the UI's backend) in process, logged in as the approver."""
    from airflow.api_fastapi.app import create_app
    from starlette.testclient import TestClient

    from mlwp.security.roles import SecurityError
    from operators import rbac

    try:
        rbac.user_add(
            {
                "username": APPROVER,
                "email": f"{APPROVER}@example.org",
                "role": "DataScientist",
                "projects": ["churn"],
                "password": PASSWORD,
            }
        )
    except SecurityError as exc:
        if exc.code != "user_exists":
            raise
    client = TestClient(create_app("core"), base_url="http://localhost")
    login = client.post("/auth/token", json={"username": APPROVER, "password": PASSWORD})
    assert login.status_code == 201, login.text
    client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
    yield client
    client.close()


class Approver(threading.Thread):
    """Answers the first pending approval of DAG_ID with ``answer``, as a person in the UI.

    Should it fail, it fails the waiting task instance so that ``dag.test()`` ends instead of
    waiting for ever; the test then reports the thread's error.
    """

    def __init__(self, api: Any, answer: str, timeout: float = 600.0) -> None:
        super().__init__(name=f"approver-{answer}", daemon=True)
        self.api, self.answer, self.timeout = api, answer, timeout
        self.request: dict[str, Any] | None = None  # the pending request as the UI lists it
        self.response: dict[str, Any] | None = None  # the PATCH answer
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._answer()
        except BaseException as exc:
            self.error = exc
            self._unblock()

    def _answer(self) -> None:
        deadline = time.monotonic() + self.timeout
        # FAB's auth manager caches a user with its permissions for [fab] cache_ttl (30 s). A
        # request made before dag.test() has synced the DAG's access_control would cache
        # "no rights on this DAG" and the answer would be refused until the entry expires. A
        # person only ever sees the DAG after its sync, so the approver waits for it too.
        while not any(p.endswith(f"can_edit on DAG:{DAG_ID}") for p in _permissions(APPROVER)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{APPROVER} never got can_edit on DAG:{DAG_ID}")
            time.sleep(0.5)
        while time.monotonic() < deadline:
            listed = self.api.get(
                f"/api/v2/dags/{DAG_ID}/dagRuns/~/hitlDetails",
                params={"response_received": False},
            )
            assert listed.status_code == 200, listed.text
            pending = listed.json()["hitl_details"]
            if pending:
                (self.request,) = pending
                ti = self.request["task_instance"]
                path = (
                    f"/api/v2/dags/{DAG_ID}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                    f"{ti['task_id']}/{ti['map_index']}/hitlDetails"
                )
                answered = self.api.patch(path, json={"chosen_options": [self.answer]})
                assert answered.status_code == 200, (answered.text, _permissions(APPROVER))
                self.response = answered.json()
                return
            time.sleep(0.5)
        raise TimeoutError(f"no pending approval of {DAG_ID} within {self.timeout}s")

    def _unblock(self) -> None:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select

        with create_session() as session:
            for ti in session.scalars(
                select(TaskInstance).where(
                    TaskInstance.dag_id == DAG_ID,
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                )
            ):
                ti.state = TaskInstanceState.FAILED


def _permissions(username: str) -> list[str]:
    """The approver's roles and DAG/HITL permissions, to explain a refusal."""
    from airflow.providers.fab.auth_manager.models import User
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            return [f"no user {username!r}"]
        return sorted(
            f"{role.name}: {perm.action.name} on {perm.resource.name}"
            for role in user.roles
            for perm in role.permissions
            if "DAG" in perm.resource.name or "HITL" in perm.resource.name
        )


def run_with_approver(dag: Any, api: Any, answer: str) -> tuple[Any, Approver]:
    approver = Approver(api, answer)
    approver.start()
    run = dag.test()
    approver.join(timeout=60)
    if approver.error is not None:
        raise AssertionError(f"the approver failed: {approver.error!r}") from approver.error
    assert approver.request is not None and approver.response is not None
    return run, approver


def test_human_approval_approve_then_reject(
    pipeline_env: Path, mlflow_tracking: str, airflow_api: Any
) -> None:
    import mlflow

    client = mlflow.MlflowClient(mlflow_tracking)
    dag = churn_dag(CHURN, model=MODEL, trials=2, num_boost_round=100, approval="human")
    assert type(dag.task_dict["approve"]).__name__ == "ApproveOperator"

    # Run 1, approved: the first version is deployed (as champion: there is none yet).
    run, approver = run_with_approver(dag, airflow_api, "Approve")
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
    run, approver = run_with_approver(dag, airflow_api, "Reject")
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
