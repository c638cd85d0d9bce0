"""Four-eyes approval in a run, through Airflow's REST API (the UI's backend).

A DAG of the churn project runs with ``dag.test()``: a task hands a registration document
(model, version, metrics: what the register task returns) to mlwp's ApproveOperator naming
``approvers: [alice, bob, dag_test]`` with ``min_approvals: 2``, then a deploy stand-in runs
when approved. (The whole churn pipeline before approval is covered by
test_churn_approval.py; here only the answers matter, so nothing is trained.) ``dag.test()``
records its runs as triggered by the user ``dag_test``, so that user plays the author who
triggered the run. While the task waits, people answer with ``PATCH .../hitlDetails`` as the
UI does, each logged in with their own token, through the api-server built in process with
the repository's plugins (the four-eyes middleware among them):

- dana, a DataScientist member of churn but not an approver: 403 naming why;
- dag_test, an approver who triggered the run: 403, no self-approval;
- alice: 202, approval 1 of 2 recorded, the request stays open;
- alice again: 409, an approval counts once per person;
- bob: 200, the request is answered, deploy runs; both approvers are in the task's result
  and every answer (refusals included) is in the audit trail.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from churn_workflow import states, xcom

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = f"churn-four-eyes-{uuid.uuid4().hex[:8]}"
PASSWORD = "correct-horse-battery"
DAG_ID = "churn.four_eyes"
TRIGGERED_BY = "dag_test"  # the triggering user dag.test() records on its runs
PEOPLE = ("alice", "bob", "dana", TRIGGERED_BY)
APPROVE = {"approvers": ["alice", "bob", TRIGGERED_BY], "min_approvals": 2}


@pytest.fixture(scope="module")
def people(airflow_db: None) -> Iterator[dict[str, Any]]:
    """One REST client per person, each logged in with their own token."""
    from airflow.api_fastapi.app import create_app
    from starlette.testclient import TestClient

    from mlwp.security.roles import SecurityError
    from operators import rbac

    app = create_app("core")
    clients: dict[str, Any] = {}
    for name in PEOPLE:
        try:
            rbac.user_add(
                {
                    "username": name,
                    "email": f"{name}@example.org",
                    "role": "DataScientist",
                    "projects": ["churn"],
                    "password": PASSWORD,
                }
            )
        except SecurityError as exc:
            if exc.code != "user_exists":
                raise
        client = TestClient(app, base_url="http://localhost")
        login = client.post("/auth/token", json={"username": name, "password": PASSWORD})
        assert login.status_code == 201, login.text
        client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        clients[name] = client
    yield clients
    for client in clients.values():
        client.close()


class Answers(threading.Thread):
    """Plays the people answering the pending request, recording each status and message."""

    def __init__(self, people: dict[str, Any], timeout: float = 900.0) -> None:
        super().__init__(name="four-eyes", daemon=True)
        self.people, self.timeout = people, timeout
        self.answers: list[tuple[str, int, str]] = []
        self.pending_after_first: bool | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._answer()
        except BaseException as exc:
            self.error = exc
            _fail_waiting_task()

    def _answer(self) -> None:
        deadline = time.monotonic() + self.timeout
        path = None
        while path is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no pending approval of {DAG_ID} within {self.timeout}s")
            listed = self.people["alice"].get(
                f"/api/v2/dags/{DAG_ID}/dagRuns/~/hitlDetails",
                params={"response_received": False},
            )
            # FAB caches permissions 30 s: before the DAG's access_control is synced, 403.
            if listed.status_code == 200 and listed.json()["hitl_details"]:
                ti = listed.json()["hitl_details"][0]["task_instance"]
                path = (
                    f"/api/v2/dags/{DAG_ID}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                    f"{ti['task_id']}/{ti['map_index']}/hitlDetails"
                )
            else:
                time.sleep(0.5)
        for name in ("dana", TRIGGERED_BY, "alice", "alice", "bob"):
            response = self._patch(name, path, deadline)
            self.answers.append(
                (
                    name,
                    response.status_code,
                    response.json()["detail"] if response.status_code != 200 else "answered",
                )
            )
            if len(self.answers) == 3:
                state = self.people["bob"].get(path).json()
                self.pending_after_first = not state["response_received"]

    def _patch(self, name: str, path: str, deadline: float) -> Any:
        # A refusal for missing permissions (FAB's 30 s cache, see above) is retried; the
        # four-eyes refusals name the rule and are final.
        while True:
            response = self.people[name].patch(path, json={"chosen_options": ["Approve"]})
            detail = response.json().get("detail", "") if response.status_code != 200 else ""
            if response.status_code != 403 or "approv" in str(detail):
                return response
            if time.monotonic() > deadline:
                return response
            time.sleep(1)


def _fail_waiting_task() -> None:
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


def four_eyes_dag() -> Any:
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG, task

    from mlwp.security.roles import project_access_control
    from operators.approve import ApproveOperator

    with DAG(
        DAG_ID, schedule=None, access_control=project_access_control("churn"), tags=["mlwp"]
    ) as dag:

        @task(task_id="register")
        def register() -> dict[str, Any]:
            return {"model": MODEL, "version": "3", "metrics": {"roc_auc": 0.86}}

        approve = ApproveOperator(task_id="approve", project="churn", **APPROVE)
        register() >> approve >> EmptyOperator(task_id="deploy")
    return dag


def test_two_different_approvers_who_did_not_trigger_the_run(
    people: dict[str, Any], dag_runner: Any
) -> None:
    from mlwp.security.audit import list_events

    answers = Answers(people)
    answers.start()
    run = dag_runner(four_eyes_dag())
    answers.join(timeout=60)
    if answers.error is not None:
        raise AssertionError(f"the answers failed: {answers.error!r}") from answers.error

    assert answers.answers == [
        (
            "dana",
            403,
            "user 'dana' is not an approver of this promotion: the definition names alice, "
            "bob, dag_test",
        ),
        (
            TRIGGERED_BY,
            403,
            "user 'dag_test' triggered this run and may not approve it: four-eyes approval "
            "needs someone else (the definition does not allow self-approval)",
        ),
        ("alice", 202, "approval 1 of 2 recorded from 'alice'; waiting for another approver"),
        (
            "alice",
            409,
            "user 'alice' already approved this promotion; 2 different approvers are needed",
        ),
        ("bob", 200, "answered"),
    ]
    assert answers.pending_after_first is True
    assert states(run)["deploy"] == "success", states(run)
    approval = xcom(run, "approve", "return_value")
    assert approval["approved"] is True and approval["version"] == "3"
    assert approval["approvals"] == ["alice", "bob"]
    assert approval["approved_by"]["name"] == "bob"
    assert xcom(run, "approve", "approval_policy") == {
        "approvers": ["alice", "bob", TRIGGERED_BY],
        "min_approvals": 2,
        "allow_self_approval": False,
        "allow_admins": False,
    }
    trail = [
        (event.actor, event.action)
        for event in list_events(action="approval")
        if event.target.startswith(f"{DAG_ID}/{run.run_id}/approve/")
    ]
    assert trail == [
        ("dana", "approval.refuse"),
        (TRIGGERED_BY, "approval.refuse"),
        ("alice", "approval.approve"),
        ("alice", "approval.refuse"),
        ("bob", "approval.approve"),
    ]
