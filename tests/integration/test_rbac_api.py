"""Users, roles and sessions proven against a real Airflow api-server with the FAB auth manager.

One api-server per module, on a free port, with its own SQLite metadata DB: ``airflow db
migrate``, ``mlwp``'s role sync and user creation (FAB, through ``operators.rbac``), two
projects' DAGs serialized with ``access_control`` by ``airflow dags reserialize``. The
role-by-action matrix asserted here is the one computed from ``mlwp.security.roles`` (and
published in docs/security.md): every cell is a real HTTP request with an exact status code.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from ui_platform import add_roles_and_users

from mlwp.platform.airflow_config import airflow_environment
from mlwp.platform.processes import SQLITE_API_SERVER, without_fab_sync
from mlwp.platform.webserver_config import write_webserver_config
from mlwp.security.roles import (
    ACTIONS,
    OTHER_DAG,
    OTHER_PROJECT,
    OWN_DAG,
    OWN_PROJECT,
    ActorKind,
    expected_matrix,
)
from mlwp.settings import REPO_ROOT, Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_http(url: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"api-server exited with {proc.returncode} before {url} answered")
        try:
            if HTTP.get(url, timeout=5.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


PASSWORD = "correct-horse-battery"
# Generous timeouts: CI machines are shared and password hashing is slow on purpose.
HTTP = httpx.Client(timeout=120)
CLI_TOKEN_SECONDS = 3
JWT_LEEWAY = 1
DAG_FILE = f'''\
"""RBAC test DAGs of two projects (airflow dag file)."""
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

from mlwp.security.roles import project_access_control

for _project in ({OWN_PROJECT!r}, {OTHER_PROJECT!r}):
    with DAG(
        f"{{_project}}.train",
        schedule=None,
        access_control=project_access_control(_project),
        tags=["mlwp", f"project:{{_project}}"],
    ) as _dag:
        EmptyOperator(task_id="approve")
    globals()[_project] = _dag
'''

# Creates a run whose "approve" task waits for a human answer (a pending HITL approval), the
# state a HITL operator leaves behind, without running a scheduler.
PENDING_APPROVAL = """
import sys
from airflow._shared.timezones import timezone
from airflow.models.hitl import HITLDetail
from airflow.models.serialized_dag import SerializedDagModel
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState, TaskInstanceState
from airflow.utils.types import DagRunTriggeredByType, DagRunType

with create_session() as session:
    for dag_id in sys.argv[1:]:
        run = SerializedDagModel.get_dag(dag_id, session=session).create_dagrun(
            run_id="pending",
            run_after=timezone.utcnow(),
            run_type=DagRunType.MANUAL,
            triggered_by=DagRunTriggeredByType.TEST,
            state=DagRunState.RUNNING,
            session=session,
        )
        ti = run.get_task_instance("approve", session=session)
        ti.state = TaskInstanceState.DEFERRED
        session.add(HITLDetail(ti_id=ti.id, options=["Approve", "Reject"],
                               subject="Promote the challenger?", multiple=False, params={}))
"""

USERS: dict[ActorKind, tuple[str, str, list[str]]] = {
    ActorKind.ADMIN: ("root", "Admin", []),
    ActorKind.MEMBER: ("alice", "DataScientist", [OWN_PROJECT]),
    ActorKind.NON_MEMBER: ("dana", "DataScientist", []),
    ActorKind.VIEWER: ("vera", "Viewer", []),
}


@dataclass
class Server:
    url: str
    settings: Settings
    env: dict[str, str]
    tokens: dict[ActorKind, str]
    seed_run_id: str

    def login(self, username: str, password: str, source: str = "127.0.0.1") -> httpx.Response:
        """Ask for a token from the given local source address (the rate limit's key)."""
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(transport=transport, timeout=120) as client:
            return client.post(
                f"{self.url}/auth/token", json={"username": username, "password": password}
            )


def _run(args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        proc = subprocess.run(args, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, migrated_airflow_db: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("rbac")
    dags = home / "dags"
    dags.mkdir()
    (dags / "rbac_projects.py").write_text(DAG_FILE)
    port = free_port()
    settings = Settings(home=home, dags_folder=dags, airflow_port=port)
    write_webserver_config(settings)
    env = {**os.environ, **airflow_environment(settings)}
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_CLI_EXPIRATION_TIME": str(CLI_TOKEN_SECONDS),
            # Airflow tolerates 10 s of clock skew by default; 1 s keeps the expiry test short.
            "AIRFLOW__API_AUTH__JWT_LEEWAY": str(JWT_LEEWAY),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "MLWP_AUTH_RATE_LIMIT": "5 per 40 second",
        }
    )
    log = home / "setup.log"
    airflow = str(VENV_BIN / "airflow")
    shutil.copy(migrated_airflow_db, home / "airflow.db")
    # Project roles must exist before DAGs naming them in access_control are serialized.
    projects = {OWN_PROJECT: {"owner": None, "members": []}, OTHER_PROJECT: {}}
    users = [
        {
            "username": username,
            "email": f"{username}@example.org",
            "role": role,
            "projects": member_of,
            "password": PASSWORD,
        }
        for username, role, member_of in USERS.values()
    ]
    add_roles_and_users(projects, users, env, log)
    _run([airflow, "dags", "reserialize"], env, log)
    _run([sys.executable, "-c", PENDING_APPROVAL, OWN_DAG, OTHER_DAG], env, log)

    server_log = (home / "api-server.log").open("wb")
    proc = subprocess.Popen(
        # the api-server as `mlwp up` starts it on SQLite (operators/api_server.py)
        [*SQLITE_API_SERVER, "--port", str(port), "--host", "127.0.0.1"],
        env=without_fab_sync(env),  # as `mlwp up` starts it, after the roles sync
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/api/v2/monitor/health", timeout=180, proc=proc)
        tokens: dict[ActorKind, str] = {}
        for actor, (username, _role, _projects) in USERS.items():
            response = HTTP.post(
                f"{url}/auth/token", json={"username": username, "password": PASSWORD}
            )
            assert response.status_code == 201, response.text
            tokens[actor] = response.json()["access_token"]
        seed = HTTP.post(
            f"{url}/api/v2/dags/{OWN_DAG}/dagRuns",
            json={"logical_date": None, "dag_run_id": "seed"},
            headers={"Authorization": f"Bearer {tokens[ActorKind.ADMIN]}"},
        )
        assert seed.status_code == 200, seed.text
        yield Server(url, settings, env, tokens, "seed")
    except BaseException:
        server_log.flush()
        print((home / "api-server.log").read_text()[-6000:], file=sys.stderr)
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server_log.close()


def _hitl_path(dag_id: str, run_id: str) -> str:
    return f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails"


# How each action of the table is performed through the REST API, and the status that means
# "allowed". The HITL probes use a run without a pending approval: allowed users get past the
# permission check to the 404 "no such approval", refused users are stopped at 403 before it.
PROBES: dict[str, tuple[str, str, dict[str, object] | None, int]] = {
    "view_dag": ("GET", f"/api/v2/dags/{OWN_DAG}", None, 200),
    "trigger_dag": ("POST", f"/api/v2/dags/{OWN_DAG}/dagRuns", {"logical_date": None}, 200),
    "pause_dag": ("PATCH", f"/api/v2/dags/{OWN_DAG}", {"is_paused": True}, 200),
    "clear_tasks": (
        "POST",
        f"/api/v2/dags/{OWN_DAG}/clearTaskInstances",
        {"dry_run": True, "only_failed": False},
        200,
    ),
    "view_approval": ("GET", _hitl_path(OWN_DAG, "seed"), None, 404),
    "answer_approval": (
        "PATCH",
        _hitl_path(OWN_DAG, "seed"),
        {"chosen_options": ["Approve"]},
        404,
    ),
    "view_other_dag": ("GET", f"/api/v2/dags/{OTHER_DAG}", None, 200),
    "trigger_other_dag": (
        "POST",
        f"/api/v2/dags/{OTHER_DAG}/dagRuns",
        {"logical_date": None},
        200,
    ),
    "pause_other_dag": ("PATCH", f"/api/v2/dags/{OTHER_DAG}", {"is_paused": True}, 200),
    "manage_users": ("GET", "/auth/fab/v1/users", None, 200),
    # The Models view (plugins/mlwp_models.py): the permission is checked before the body, so
    # an allowed user gets past it to the 422 of an impossible split, a refused one gets 403.
    "change_model": (
        "POST",
        f"/mlwp/api/projects/{OWN_PROJECT}/models/any/traffic",
        {"traffic": {"champion": 500}},
        422,
    ),
    "change_other_model": (
        "POST",
        f"/mlwp/api/projects/{OTHER_PROJECT}/models/any/traffic",
        {"traffic": {"champion": 500}},
        422,
    ),
}

MATRIX = expected_matrix()


def test_every_action_of_the_table_has_a_probe() -> None:
    assert set(PROBES) == {action.name for action in ACTIONS}


@pytest.mark.parametrize("actor", list(ActorKind), ids=lambda a: a.name.lower())
@pytest.mark.parametrize("action", [a.name for a in ACTIONS])
def test_role_by_action_matrix(server: Server, action: str, actor: ActorKind) -> None:
    method, path, body, ok_status = PROBES[action]
    headers = {}
    if actor is not ActorKind.ANONYMOUS:
        headers["Authorization"] = f"Bearer {server.tokens[actor]}"
    response = HTTP.request(method, f"{server.url}{path}", json=body, headers=headers)
    allowed = MATRIX[(action, actor)]
    expected = 401 if actor is ActorKind.ANONYMOUS else (ok_status if allowed else 403)
    assert response.status_code == expected, (action, actor.value, response.text[:300])


def test_dag_list_shows_every_dag_to_a_non_member(server: Server) -> None:
    response = HTTP.get(
        f"{server.url}/api/v2/dags",
        headers={"Authorization": f"Bearer {server.tokens[ActorKind.NON_MEMBER]}"},
    )
    assert response.status_code == 200
    assert {dag["dag_id"] for dag in response.json()["dags"]} == {OWN_DAG, OTHER_DAG}


def test_login_failures_reveal_nothing(server: Server) -> None:
    # From its own address, so these failures do not count against the other tests' logins.
    unknown = server.login("nobody", PASSWORD, source="127.0.0.3")
    wrong = server.login("alice", "wrong-password", source="127.0.0.3")
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json() == {"detail": "Invalid credentials"}


def test_repeated_login_failures_are_rate_limited(server: Server) -> None:
    attacker = "127.0.0.2"
    statuses = [server.login("alice", f"guess-{n}", source=attacker).status_code for n in range(6)]
    assert statuses == [401] * 5 + [429]
    # Once limited, even the right password is refused from that address...
    limited = server.login("alice", PASSWORD, source=attacker)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    # ...while other addresses are not locked out.
    assert server.login("alice", PASSWORD).status_code == 201


def test_expired_token_is_rejected(server: Server) -> None:
    response = HTTP.post(
        f"{server.url}/auth/token/cli", json={"username": "vera", "password": PASSWORD}
    )
    assert response.status_code == 201
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    assert HTTP.get(f"{server.url}/api/v2/dags/{OWN_DAG}", headers=headers).status_code == 200
    time.sleep(CLI_TOKEN_SECONDS + JWT_LEEWAY + 1.5)
    expired = HTTP.get(f"{server.url}/api/v2/dags/{OWN_DAG}", headers=headers)
    assert (expired.status_code, expired.json()) == (401, {"detail": "Token Expired"})


def test_forged_token_is_rejected(server: Server) -> None:
    import jwt

    claims = jwt.decode(server.tokens[ActorKind.VIEWER], options={"verify_signature": False})
    forged = jwt.encode(claims, "not-the-secret-" * 5, algorithm="HS512")
    response = HTTP.get(
        f"{server.url}/api/v2/dags/{OWN_DAG}", headers={"Authorization": f"Bearer {forged}"}
    )
    # Airflow answers 401 for a missing or expired token, 403 for one that is not valid.
    assert (response.status_code, response.json()) == (403, {"detail": "Invalid JWT token"})


def test_logout_revokes_the_token(server: Server) -> None:
    token = server.login("dana", PASSWORD).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert HTTP.get(f"{server.url}/api/v2/dags/{OWN_DAG}", headers=headers).status_code == 200
    logout = HTTP.get(f"{server.url}/api/v2/auth/logout", headers=headers)
    assert logout.status_code == 307
    revoked = HTTP.get(f"{server.url}/api/v2/dags/{OWN_DAG}", headers=headers)
    assert (revoked.status_code, revoked.json()) == (403, {"detail": "Invalid JWT token"})


def test_triggers_are_in_airflows_audit_log(server: Server) -> None:
    headers = {"Authorization": f"Bearer {server.tokens[ActorKind.MEMBER]}"}
    run = HTTP.post(
        f"{server.url}/api/v2/dags/{OWN_DAG}/dagRuns",
        json={"logical_date": None, "dag_run_id": "audited"},
        headers=headers,
    )
    assert run.status_code == 200
    admin = {"Authorization": f"Bearer {server.tokens[ActorKind.ADMIN]}"}
    logs = HTTP.get(
        f"{server.url}/api/v2/eventLogs",
        params={"dag_id": OWN_DAG, "owner": "alice", "limit": 100},
        headers=admin,
    )
    assert logs.status_code == 200
    events = {entry["event"] for entry in logs.json()["event_logs"]}
    assert any("trigger" in event for event in events), events


def test_answering_a_pending_approval(server: Server) -> None:
    def answer(actor: ActorKind, dag_id: str) -> httpx.Response:
        headers = {}
        if actor is not ActorKind.ANONYMOUS:
            headers["Authorization"] = f"Bearer {server.tokens[actor]}"
        return HTTP.patch(
            f"{server.url}{_hitl_path(dag_id, 'pending')}",
            json={"chosen_options": ["Approve"]},
            headers=headers,
        )

    assert answer(ActorKind.ANONYMOUS, OWN_DAG).status_code == 401
    assert answer(ActorKind.VIEWER, OWN_DAG).status_code == 403
    assert answer(ActorKind.NON_MEMBER, OWN_DAG).status_code == 403
    assert answer(ActorKind.MEMBER, OTHER_DAG).status_code == 403
    answered = answer(ActorKind.MEMBER, OWN_DAG)
    assert answered.status_code == 200, answered.text
    assert answered.json()["chosen_options"] == ["Approve"]
    assert answered.json()["responded_by"]["name"] == "alice"
    # An approval is answered once; the Viewer can see who answered it.
    assert answer(ActorKind.ADMIN, OWN_DAG).status_code == 409
    seen = HTTP.get(
        f"{server.url}{_hitl_path(OWN_DAG, 'pending')}",
        headers={"Authorization": f"Bearer {server.tokens[ActorKind.VIEWER]}"},
    )
    assert seen.status_code == 200
    assert seen.json()["response_received"] is True
    assert seen.json()["responded_by_user"]["name"] == "alice"
    assert seen.json()["chosen_options"] == ["Approve"]
    # Airflow's audit log records the answer with the user.
    logs = HTTP.get(
        f"{server.url}/api/v2/eventLogs",
        params={"dag_id": OWN_DAG, "owner": "alice", "limit": 100},
        headers={"Authorization": f"Bearer {server.tokens[ActorKind.ADMIN]}"},
    )
    assert logs.status_code == 200
    events = {entry["event"] for entry in logs.json()["event_logs"]}
    assert any("hitl" in event for event in events), events
