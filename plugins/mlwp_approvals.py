"""Airflow plugin: four-eyes rules on the answers to mlwp promotion approvals.

Airflow's human-in-the-loop API decides who may answer from permissions (``can_edit`` on
``HITL Detail`` and on the DAG) and, optionally, from ``assigned_users``. mlwp does not use
``assigned_users``: the FAB auth manager matches them by numeric user id, which neither a
definition (it names users and roles) nor a worker (it has no access to the users table)
knows, and it cannot express roles, "not the person who triggered the run" or "two different
approvers". Instead this root middleware sits in front of the one endpoint every answer goes
through, the UI's included::

    PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails

For a task that published an ``approval_policy`` XCom (mlwp's ApproveOperator does, before it
waits), it applies :func:`mlwp.security.approvals.decide` and either refuses the answer with
a clear 403/409, records an approval that does not complete the count yet (202, the request
stays open), or lets Airflow take the answer. Every approval, rejection and refusal is
written to the audit trail (target ``<dag_id>/<run_id>/<task_id>/<map_index>/<try>``), which
is also where the approvals counted so far are read from. Requests it does not concern
(other paths, other tasks, users Airflow would refuse anyway, answered requests) pass through
untouched, so Airflow's own answers (401, 403, 404, 409) stay as they are.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import orjson
from airflow.plugins_manager import AirflowPlugin

# The XCom mlwp's ApproveOperator publishes before it waits (operators.approve).
POLICY_XCOM_KEY = "approval_policy"
HITL_ANSWER = re.compile(
    r"/api/v2/dags/(?P<dag_id>[^/]+)/dagRuns/(?P<run_id>[^/]+)/taskInstances/"
    r"(?P<task_id>[^/]+)(?:/(?P<map_index>-?\d+))?/hitlDetails$"
)


class FourEyesMiddleware:
    """Pure ASGI middleware applying an approve task's four-eyes policy to HITL answers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        match = (
            HITL_ANSWER.search(scope.get("path", ""))
            if scope["type"] == "http" and scope.get("method") == "PATCH"
            else None
        )
        if match is None:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        replay = _replaying(body)
        user = await _user(scope)
        answer = None
        if user is not None:
            from starlette.concurrency import run_in_threadpool

            answer = await run_in_threadpool(_judge, match, user, body)
        if answer is None:  # not ours to judge: Airflow answers as usual
            await self.app(scope, replay, send)
            return
        decision, record = answer
        from mlwp.security.approvals import Verdict

        if decision.verdict is not Verdict.ANSWER:
            await run_in_threadpool(record)
            await _send_json(send, decision.status, {"detail": decision.message})
            return
        status: dict[str, int] = {}

        async def watching_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, replay, watching_send)
        if status.get("code") == 200:
            await run_in_threadpool(record)


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replaying(body: bytes) -> Any:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _user(scope: dict[str, Any]) -> Any:
    """The Airflow user of the request (Bearer token first, then the UI's cookie), or None."""
    from http.cookies import SimpleCookie

    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from jwt.exceptions import InvalidTokenError

    headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
    token = None
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        token = authorization[len("bearer ") :]
    elif "cookie" in headers:
        cookie = SimpleCookie(headers["cookie"]).get(COOKIE_NAME_JWT_TOKEN)
        token = cookie.value if cookie else None
    if not token:
        return None
    try:
        return await get_auth_manager().get_user_from_token(token)
    except InvalidTokenError:  # expired or forged: Airflow's to refuse (401/403)
        return None


def _judge(match: re.Match[str], user: Any, body: bytes) -> Any:
    """Decide an answer, or None when it is not an mlwp approval Airflow would let through."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )
    from airflow.models.dagrun import DagRun
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.providers.fab.auth_manager.models import User
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from mlwp.security import audit
    from mlwp.security.approvals import (
        AUDIT_APPROVE,
        AUDIT_REFUSE,
        AUDIT_REJECT,
        ApprovalPolicy,
        Verdict,
        approval_target,
        approvals_so_far,
        decide,
    )

    dag_id, run_id, task_id = (unquote(match[name]) for name in ("dag_id", "run_id", "task_id"))
    map_index = int(match["map_index"] or -1)
    if not get_auth_manager().is_authorized_dag(
        method="PUT",
        access_entity=DagAccessEntity.HITL_DETAIL,
        details=DagDetails(id=dag_id),
        user=user,
    ):
        return None
    try:
        chosen = list(orjson.loads(body).get("chosen_options") or [])
    except (orjson.JSONDecodeError, AttributeError):
        return None  # Airflow answers a malformed body with its own 422
    with create_session() as session:
        ti = session.scalar(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == task_id,
                TaskInstance.map_index == map_index,
            )
        )
        if ti is None:
            return None
        detail = session.scalar(select(HITLDetail).where(HITLDetail.ti_id == ti.id))
        if detail is None or detail.response_received:
            return None
        row = session.execute(
            XComModel.get_many(
                key=POLICY_XCOM_KEY,
                run_id=run_id,
                dag_ids=dag_id,
                task_ids=task_id,
                map_indexes=map_index,
            ).with_only_columns(XComModel.value)
        ).first()
        if row is None:
            return None
        policy = ApprovalPolicy.from_dict(XComModel.deserialize_value(row))
        triggered_by = session.scalar(
            select(DagRun.triggering_user_name).where(
                DagRun.dag_id == dag_id, DagRun.run_id == run_id
            )
        )
        try_number = ti.try_number
        name = str(user.get_name())
        # Roles read now, not from the token's cached user: a membership just revoked counts.
        account = session.scalar(select(User).where(User.username == name))
        roles = [role.name for role in account.roles] if account is not None else []
    target = approval_target(dag_id, run_id, task_id, map_index, try_number)
    decision = decide(
        policy,
        user=name,
        roles=roles,
        chosen=chosen,
        triggered_by=triggered_by,
        approved_by=approvals_so_far(target),
    )

    def record() -> None:
        if decision.verdict is Verdict.REFUSE:
            action = AUDIT_REFUSE
        else:
            action = AUDIT_APPROVE if "Approve" in chosen else AUDIT_REJECT
        details = {
            "chosen": chosen,
            "message": decision.message,
            "approvals": list(decision.approved_by),
            "min_approvals": policy.min_approvals,
        }
        audit.record(name, action, target, details)

    return decision, record


async def _send_json(send: Any, status: int, payload: dict[str, Any]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": orjson.dumps(payload)})


class MlwpApprovalsPlugin(AirflowPlugin):
    """Registers the four-eyes middleware on the api-server."""

    name = "mlwp_approvals"
    fastapi_root_middlewares = [
        {
            "middleware": FourEyesMiddleware,
            "args": [],
            "kwargs": {},
            "name": "mlwp four-eyes approvals",
        }
    ]
