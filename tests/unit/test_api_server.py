"""operators/api_server.py: Airflow's action-logging dependency run off the event loop.

The platform test (tests/integration/test_first_run.py) shows the api-server answering while a
change waits for SQLite's lock; these check the wrapper itself and that Airflow's routes take
it when it is installed first.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from platform_process import REPO_ROOT

from operators.api_server import ActionLoggingChanged, _run_to_end, off_the_loop


def recording_action_logging(seen: dict[str, Any]) -> Any:
    """An ``action_logging`` shaped like Airflow's: awaits the body, then works synchronously."""

    def action_logging(event: str | None = None) -> Any:
        async def log_action(request: Request, user: str = Depends(lambda: "alice")) -> None:
            body = await request.body()
            parsed = await request.json() if body else None
            seen.update(event=event, user=user, body=parsed, thread=threading.current_thread().name)

        return log_action

    return action_logging


def test_the_dependency_runs_in_a_worker_thread_with_its_own_parameters() -> None:
    seen: dict[str, Any] = {}
    loop_thread: dict[str, str] = {}
    action_logging = off_the_loop(recording_action_logging(seen))
    app = FastAPI()

    @app.post("/dags/{dag_id}/dagRuns", dependencies=[Depends(action_logging("trigger"))])
    async def trigger(dag_id: str) -> dict[str, str]:
        loop_thread["name"] = threading.current_thread().name
        return {"dag_id": dag_id}

    with TestClient(app) as client:
        response = client.post("/dags/churn.train/dagRuns", json={"note": "x"})
    assert response.status_code == 200, response.text
    # FastAPI resolved the wrapped dependency's own parameters (request, a sub-dependency)
    assert seen["event"] == "trigger"
    assert seen["user"] == "alice"
    assert seen["body"] == {"note": "x"}
    # and it ran outside the event loop's thread
    assert seen["thread"] != loop_thread["name"]


def test_a_dependency_that_suspends_is_refused_as_a_stale_wrapper() -> None:
    class Pending:
        def __await__(self) -> Any:
            yield  # suspends, as an await of real I/O would

    async def waits_for_more() -> None:
        await Pending()

    with pytest.raises(ActionLoggingChanged, match=r"operators/api_server\.py"):
        _run_to_end(waits_for_more())


def test_installed_first_airflows_routes_take_the_wrapper() -> None:
    """Airflow's routes bind action_logging when imported: the trigger route's dependency is
    the wrapper when ``install()`` ran before (as ``python -m operators.api_server`` does)."""
    script = """
from operators.api_server import install
install()
from airflow.api_fastapi.core_api.routes.public.dag_run import dag_run_router
route = next(r for r in dag_run_router.routes if r.name == "trigger_dag_run")
calls = [d.call for d in route.dependant.dependencies]
print(sum(c.__code__.co_name == "log_action_in_a_thread" for c in calls))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "1", done.stdout + done.stderr[-3000:]
