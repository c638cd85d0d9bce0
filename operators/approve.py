"""ApproveOperator: a human (Airflow 3 human-in-the-loop) or automatic promotion gate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import BaseXCom
from airflow.sdk.exceptions import DownstreamTasksSkipped

from mlwp.security.approvals import ApprovalPolicy
from mlwp.security.roles import SecurityError
from operators._common import MlwpOperator, check_choice
from operators.links import MLflowModelVersionLink

if TYPE_CHECKING:
    from airflow.sdk import Context

MODES = ("human", "auto")
# The XCom the four-eyes middleware reads (plugins/mlwp_approvals.py).
POLICY_XCOM_KEY = "approval_policy"


def comparison_markdown(registration: dict[str, Any]) -> str:
    """Render the new version's metrics beside the champion's as a Markdown table."""
    model = registration.get("model", "?")
    version = registration.get("version", "?")
    new = registration.get("metrics") or {}
    champion = registration.get("champion") or {}
    old = champion.get("metrics") or {}
    gate = registration.get("gate") or {}
    lines = [
        f"### Promote `{model}` version {version}?",
        "",
        f"- MLflow run: `{registration.get('run_id', '?')}`",
        f"- dataset: `{registration.get('dataset_uri', '?')}`",
        f"- gate: {gate.get('summary', 'none')}",
        "",
    ]
    if champion:
        lines.append(f"Current champion: version {champion.get('version', '?')}")
    else:
        lines.append("There is no champion yet: this version would be the first.")
    lines += ["", "| metric | new | champion | change |", "| --- | --- | --- | --- |"]
    for name in sorted(set(new) | set(old)):
        new_value, old_value = new.get(name), old.get(name)
        change = (
            f"{new_value - old_value:+.4f}"
            if isinstance(new_value, int | float) and isinstance(old_value, int | float)
            else ""
        )
        lines.append(f"| {name} | {fmt(new_value)} | {fmt(old_value)} | {change} |")
    return "\n".join(lines)


def fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


class ApproveOperator(MlwpOperator, ApprovalOperator):
    """Approve the promotion of the version registered upstream.

    ``mode: human`` waits for an Approve/Reject answer in the Airflow UI (the standard
    provider's ApprovalOperator: the task waits in ``awaiting_input``); the request shows the
    new version's metrics against the champion's. ``mode: auto`` approves at once: the
    register task's gate already decided. A rejection skips the deploy tasks downstream, so
    aliases stay untouched. ``approvers``, ``min_approvals``, ``allow_self_approval`` and
    ``allow_admins`` are the four-eyes rules (mlwp.security.approvals): shown in the request
    and published as the ``approval_policy`` XCom, which the api-server's four-eyes
    middleware applies to every answer; the approvals counted are in ``approvals``.
    """

    template_fields: Sequence[str] = ("subject", "body", "approvers")
    ui_color = "#fcf3cf"
    operator_extra_links = (MLflowModelVersionLink(),)

    def __init__(
        self,
        *,
        mode: str = "human",
        approvers: list[str] | None = None,
        min_approvals: int = 1,
        allow_self_approval: bool = False,
        allow_admins: bool = False,
        input: str | None = None,
        subject: str | None = None,
        **kwargs: Any,
    ) -> None:
        check_choice(str(kwargs.get("task_id")), "mode", mode, MODES)
        project = kwargs.get("project", "")
        super().__init__(
            subject=subject or f"Promote the new {project} model?",
            body=None,
            **kwargs,
        )
        self.mode = mode
        self.approvers = list(approvers or [])
        self.min_approvals = min_approvals
        self.allow_self_approval = allow_self_approval
        self.allow_admins = allow_admins
        self.input = input
        try:
            self.policy.describe()
        except SecurityError as exc:
            raise ValueError(f"task {self.task_id!r}: {exc.message}") from exc

    def request_body(self, registration: dict[str, Any]) -> str:
        """What the person reads before answering (Markdown): the new version's metrics."""
        return comparison_markdown(registration)

    @property
    def policy(self) -> ApprovalPolicy:
        """The four-eyes rules the api-server applies to answers (plugins/mlwp_approvals.py)."""
        return ApprovalPolicy(
            approvers=tuple(self.approvers),
            min_approvals=self.min_approvals,
            allow_self_approval=self.allow_self_approval,
            allow_admins=self.allow_admins,
        )

    def execute(self, context: Context) -> Any:
        from operators.links import mlflow_model_version_url

        registration = self.upstream_document(context, "version", self.input)
        body = self.request_body(registration)
        context["ti"].xcom_push(key="registration", value=registration)
        # Stored before the task waits, so the approver opens the version from the request.
        MLflowModelVersionLink.persist(
            context,
            mlflow_model_version_url(registration.get("model"), registration.get("version")),
        )
        if self.mode == "auto":
            self.log.info("Automatic approval (the register gate passed):\n%s", body)
            self.stat("incr", "approve.auto")
            return {**registration, "approved": True, "approved_by": "auto"}
        policy = self.policy
        self.body = f"{body}\n\n{policy.describe()}"
        # Published before the task waits: the api-server judges every answer against it.
        context["ti"].xcom_push(key=POLICY_XCOM_KEY, value=policy.to_dict())
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        registration = context["ti"].xcom_pull(task_ids=self.task_id, key="registration") or {}
        try:
            answer = super().execute_complete(context, event)
        except DownstreamTasksSkipped:
            # A rejection: ApprovalOperator skips deploy through SkipMixin.skip, which in the
            # task SDK *raises* DownstreamTasksSkipped, so nothing after super() would run and
            # the task would end without its documented XCom and without counting the
            # rejection. Record both, then let the task runner skip the downstream tasks.
            context["ti"].xcom_push(
                key=BaseXCom.XCOM_RETURN_KEY,
                value=self._decision(registration, event, approved=False),
            )
            self.stat("incr", "approve.rejected")
            raise
        chosen = (answer or {}).get("chosen_options") or []
        approved = chosen[:1] == [self.APPROVE]
        self.stat("incr", "approve.approved" if approved else "approve.rejected")
        decision = self._decision(registration, answer, approved=approved)
        if approved:
            decision["approvals"] = self._approvals(context, answer)
        return decision

    def _approvals(self, context: Context, answer: dict[str, Any] | None) -> list[str]:
        """Every approver counted (the four-eyes middleware records them in the audit trail)."""
        from mlwp.security.approvals import approval_target, approvals_so_far

        ti = context["ti"]
        assert ti.try_number is not None  # a running task's try is numbered
        # unmapped: -1, as in the URL of the answer the middleware records
        map_index = -1 if ti.map_index is None else ti.map_index
        target = approval_target(ti.dag_id, ti.run_id, ti.task_id, map_index, ti.try_number)
        names = approvals_so_far(target)
        last = ((answer or {}).get("responded_by_user") or {}).get("name")
        return names or ([last] if last else [])

    @staticmethod
    def _decision(
        registration: dict[str, Any], answer: dict[str, Any] | None, *, approved: bool
    ) -> dict[str, Any]:
        return {
            **registration,
            "approved": approved,
            "approved_by": (answer or {}).get("responded_by_user"),
        }
