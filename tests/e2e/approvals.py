"""A person answering a pending approval the way the Airflow UI does, for the e2e tests.

Airflow's REST API (the one behind the UI) is built in process on the session's metadata DB,
with the repository's plugins (the four-eyes middleware among them); a user logs in and a
background thread plays them: it finds the pending request in "Required Actions" (``GET
.../hitlDetails?response_received=false``), reads it and answers with ``PATCH
.../taskInstances/<task>/-1/hitlDetails``, while ``dag.test()`` keeps the run alive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PASSWORD = "correct-horse-battery"


@contextmanager
def airflow_api_as(username: str, projects: list[str]) -> Iterator[Any]:
    """Airflow's REST API in process, logged in as the DataScientist ``username``."""
    from airflow.api_fastapi.app import create_app
    from starlette.testclient import TestClient

    from mlwp.security.roles import SecurityError
    from operators import rbac

    try:
        rbac.user_add(
            {
                "username": username,
                "email": f"{username}@example.org",
                "role": "DataScientist",
                "projects": projects,
                "password": PASSWORD,
            }
        )
    except SecurityError as exc:
        if exc.code != "user_exists":
            raise
    client = TestClient(create_app("core"), base_url="http://localhost")
    login = client.post("/auth/token", json={"username": username, "password": PASSWORD})
    assert login.status_code == 201, login.text
    client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
    try:
        yield client
    finally:
        client.close()


class Approver(threading.Thread):
    """Answers the first pending approval of ``dag_id`` with ``answer``, as ``user`` in the UI.

    Should it fail, it fails the waiting task instance so that ``dag.test()`` ends instead of
    waiting for ever; the test then reports the thread's error.
    """

    def __init__(
        self, api: Any, dag_id: str, user: str, answer: str, timeout: float = 300.0
    ) -> None:
        super().__init__(name=f"approver-{answer}", daemon=True)
        self.api, self.dag_id, self.user, self.answer = api, dag_id, user, answer
        self.timeout = timeout
        self.request: dict[str, Any] | None = None  # the pending request as the UI lists it
        self.response: dict[str, Any] | None = None  # the PATCH answer
        self.error: BaseException | None = None
        self.parked = threading.Event()  # set by run_with_approver's _Parked

    def run(self) -> None:
        try:
            self._answer()
        except BaseException as exc:
            self.error = exc
            # Until the task is failed, dag.test() waits for ever (a CI run hung here until
            # pytest-timeout ended its worker, with no report): keep trying, SQLite may be
            # busy with dag.test()'s own writes.
            deadline = time.monotonic() + 120
            while True:
                try:
                    self._unblock()
                    return
                except Exception as unblock_error:
                    if time.monotonic() > deadline:
                        exc.add_note(f"and failing the waiting task failed: {unblock_error!r}")
                        return
                    time.sleep(1)

    def _answer(self) -> None:
        deadline = time.monotonic() + self.timeout
        # FAB's auth manager caches a user with its permissions for [fab] cache_ttl (30 s). A
        # request made before dag.test() has synced the DAG's access_control would cache
        # "no rights on this DAG" and the answer would be refused until the entry expires. A
        # person only ever sees the DAG after its sync, so the approver waits for it too.
        while not any(p.endswith(f"can_edit on DAG:{self.dag_id}") for p in permissions(self.user)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.user} never got can_edit on DAG:{self.dag_id}")
            time.sleep(0.5)
        while time.monotonic() < deadline:
            listed = self.api.get(
                f"/api/v2/dags/{self.dag_id}/dagRuns/~/hitlDetails",
                params={"response_received": False},
            )
            assert listed.status_code == 200, listed.text
            pending = listed.json()["hitl_details"]
            if pending and self.parked.wait(timeout=max(0.0, deadline - time.monotonic())):
                (self.request,) = pending
                ti = self.request["task_instance"]
                path = (
                    f"/api/v2/dags/{self.dag_id}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                    f"{ti['task_id']}/{ti['map_index']}/hitlDetails"
                )
                answered = self.api.patch(path, json={"chosen_options": [self.answer]})
                assert answered.status_code == 200, (answered.text, permissions(self.user))
                self.response = answered.json()
                return
            time.sleep(0.5)
        raise TimeoutError(f"no pending approval of {self.dag_id} within {self.timeout}s")

    def _unblock(self) -> None:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select

        with create_session() as session:
            for ti in session.scalars(
                select(TaskInstance).where(
                    TaskInstance.dag_id == self.dag_id,
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                )
            ):
                ti.state = TaskInstanceState.FAILED


def permissions(username: str) -> list[str]:
    """The user's roles and DAG/HITL permissions, to explain a refusal."""
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


class _Parked(logging.Handler):
    """Sets ``event`` once ``dag.test()`` has taken in the parked approval task.

    The task process parks itself (AWAITING_INPUT, the request listed) a moment before
    ``dag.test()`` copies the finished process's state onto the task instance. An answer in
    between flips the task to SCHEDULED and is then overwritten with AWAITING_INPUT:
    ``dag.test()`` waits for ever for an answer already given (a CI run hung so under load).
    A person reads longer than that moment; the test waits for dag.test()'s own log line.
    """

    def __init__(self, event: threading.Event) -> None:
        super().__init__(logging.INFO)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Waiting for Human-in-the-loop input"):
            self.event.set()


def run_with_approver(dag: Any, api: Any, user: str, answer: str) -> tuple[Any, Approver]:
    """``dag.test()`` while ``user`` answers its approval with ``answer``."""
    approver = Approver(api, dag.dag_id, user, answer)
    dag_log = logging.getLogger("airflow.sdk.definitions.dag")
    parked = _Parked(approver.parked)
    dag_log.addHandler(parked)
    approver.start()
    try:
        run = dag.test()
    finally:
        dag_log.removeHandler(parked)
    approver.join(timeout=60)
    if approver.error is not None:
        raise AssertionError(f"the approver failed: {approver.error!r}") from approver.error
    assert approver.request is not None and approver.response is not None
    return run, approver
