"""Four-eyes approvals: who may answer a promotion request, and when it counts as approved.

The rules come from the approve task of a definition (``approvers``, ``min_approvals``,
``allow_self_approval``, ``allow_admins``) and are applied by the api-server to every answer
of that task's human-in-the-loop request (``plugins/mlwp_approvals.py``), after Airflow's own
permission check (``can_edit`` on ``HITL Detail`` and on the DAG) has let the user through:

1. An answer by the user who triggered the run is refused unless ``allow_self_approval``;
   a rejection by them is allowed (it can only stop a promotion, which is not what four eyes
   guard against).
2. With ``approvers`` set, only they may answer: a user named there, a member of a role named
   there (``project:churn``, ``DataScientist``), and Admins only when ``allow_admins``.
   Without ``approvers``, Airflow's permissions alone decide (Admins and project members).
3. An approval counts once per person. Below ``min_approvals`` distinct approvers, an
   approval is recorded and the request stays open; the approval that reaches the count
   answers it. One rejection by an allowed approver rejects at once.

Nothing here imports Airflow: the same function decides in the api-server and in tests.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mlwp.security.roles import ADMIN, SecurityError

APPROVE, REJECT = "Approve", "Reject"
# Audit actions of answers (the approvals counted so far are read back from the trail).
AUDIT_APPROVE, AUDIT_REJECT, AUDIT_REFUSE = "approval.approve", "approval.reject", "approval.refuse"
# Role names an approver entry may use besides project roles (``project:<name>``).
ROLE_NAMES = frozenset({"Admin", "DataScientist", "Viewer", "Op", "User"})


def is_role(approver: str) -> bool:
    """Whether an ``approvers`` entry names a role (else it names a user)."""
    return ":" in approver or approver in ROLE_NAMES


@dataclass(frozen=True)
class ApprovalPolicy:
    """The four-eyes rules of one approve task (from its definition)."""

    approvers: tuple[str, ...] = ()
    min_approvals: int = 1
    allow_self_approval: bool = False
    allow_admins: bool = False

    def __post_init__(self) -> None:
        if self.min_approvals < 1:
            raise SecurityError(f"min_approvals must be at least 1, got {self.min_approvals}")
        users = [a for a in self.approvers if not is_role(a)]
        if users and len(users) == len(self.approvers) and self.min_approvals > len(users):
            raise SecurityError(
                f"min_approvals is {self.min_approvals} but only {len(users)} approver(s) are "
                f"named ({', '.join(users)}): the promotion could never be approved"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "approvers": list(self.approvers),
            "min_approvals": self.min_approvals,
            "allow_self_approval": self.allow_self_approval,
            "allow_admins": self.allow_admins,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApprovalPolicy:
        return cls(
            approvers=tuple(str(a) for a in data.get("approvers") or ()),
            min_approvals=int(data.get("min_approvals") or 1),
            allow_self_approval=bool(data.get("allow_self_approval")),
            allow_admins=bool(data.get("allow_admins")),
        )

    def describe(self) -> str:
        """The rules in one sentence, for the approval request and the docs."""
        who = ", ".join(self.approvers) if self.approvers else "Admins and project members"
        parts = [f"Approvers: {who}"]
        if self.approvers and self.allow_admins:
            parts.append("Admins may also answer")
        if self.min_approvals > 1:
            parts.append(f"{self.min_approvals} different approvers must approve")
        if not self.allow_self_approval:
            parts.append("the user who triggered the run may not approve it")
        return "; ".join(parts) + "."


class Verdict(StrEnum):
    """What the api-server does with an answer."""

    REFUSE = "refuse"  # 403 (or 409): the answer is not taken
    RECORD = "record"  # 202: an approval is counted, the request stays open
    ANSWER = "answer"  # handed to Airflow: the request is answered


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    status: int
    message: str
    approved_by: tuple[str, ...] = field(default_factory=tuple)


def may_answer(policy: ApprovalPolicy, user: str, roles: Collection[str]) -> bool:
    """Whether ``user`` (holding ``roles``) is one of the policy's approvers."""
    if not policy.approvers:
        return True
    if user in policy.approvers or any(role in policy.approvers for role in roles):
        return True
    return policy.allow_admins and ADMIN.name in roles


def decide(
    policy: ApprovalPolicy,
    *,
    user: str,
    roles: Iterable[str],
    chosen: Collection[str],
    triggered_by: str | None,
    approved_by: Collection[str] = (),
) -> Decision:
    """Decide one answer (``chosen`` options) by ``user`` given the approvals so far."""
    roles = set(roles)
    approving = APPROVE in chosen
    earlier = tuple(dict.fromkeys(approved_by))
    if approving and user == triggered_by and not policy.allow_self_approval:
        return Decision(
            Verdict.REFUSE,
            403,
            f"user {user!r} triggered this run and may not approve it: four-eyes approval "
            "needs someone else (the definition does not allow self-approval)",
            earlier,
        )
    if not may_answer(policy, user, roles):
        admins = " (Admins too)" if policy.allow_admins else ""
        return Decision(
            Verdict.REFUSE,
            403,
            f"user {user!r} is not an approver of this promotion: the definition names "
            f"{', '.join(policy.approvers)}{admins}",
            earlier,
        )
    if not approving:
        return Decision(Verdict.ANSWER, 200, f"{user} answered {', '.join(chosen)}", earlier)
    if user in earlier:
        return Decision(
            Verdict.REFUSE,
            409,
            f"user {user!r} already approved this promotion; {policy.min_approvals} different "
            "approvers are needed",
            earlier,
        )
    approvals = (*earlier, user)
    if len(approvals) < policy.min_approvals:
        return Decision(
            Verdict.RECORD,
            202,
            f"approval {len(approvals)} of {policy.min_approvals} recorded from {user!r}; "
            "waiting for another approver",
            approvals,
        )
    return Decision(Verdict.ANSWER, 200, f"approved by {', '.join(approvals)}", approvals)


def approval_target(dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
    """The audit trail's target for the answers to one try of one approve task."""
    return f"{dag_id}/{run_id}/{task_id}/{map_index}/{try_number}"


def approvals_so_far(target: str) -> list[str]:
    """Who approved this request so far (counted approvals, in order), from the audit trail."""
    from mlwp.security.audit import list_events

    return list(
        dict.fromkeys(event.actor for event in list_events(action=AUDIT_APPROVE, target=target))
    )


# The sample the four-eyes matrix of docs/security.md is computed on: this policy, a run
# triggered by carol, and these answers (who, user, roles, approvals already counted).
SAMPLE_POLICY = ApprovalPolicy(approvers=("alice", "bob", "carol", "project:risk"), min_approvals=2)
SAMPLE_TRIGGERED_BY = "carol"
_MEMBER = ("DataScientist", "project:churn")
_SAMPLE_CASES: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("a named approver, first approval", "alice", _MEMBER, ()),
    ("another named approver, after alice", "bob", _MEMBER, ("alice",)),
    ("a member of a named role (project:risk)", "rita", ("DataScientist", "project:risk"), ()),
    ("a named approver, a second time", "alice", _MEMBER, ("alice",)),
    ("the user who triggered the run, although named", "carol", _MEMBER, ()),
    ("a project member not named", "dana", _MEMBER, ()),
    ("an Admin not named (allow_admins: false)", "root", ("Admin",), ()),
)
_OUTCOMES = {
    Verdict.ANSWER: "answers the request",
    Verdict.RECORD: "counted (202), the request stays open",
}


def render_approval_matrix_markdown() -> str:
    """The four-eyes outcomes for a sample policy, as a Markdown table (docs/security.md)."""
    lines = ["| who answers | Approve | Reject |", "| --- | --- | --- |"]
    for title, user, roles, earlier in _SAMPLE_CASES:
        cells = []
        for choice in (APPROVE, REJECT):
            decision = decide(
                SAMPLE_POLICY,
                user=user,
                roles=roles,
                chosen=[choice],
                triggered_by=SAMPLE_TRIGGERED_BY,
                approved_by=earlier,
            )
            cells.append(_OUTCOMES.get(decision.verdict, f"refused ({decision.status})"))
        lines.append(f"| {title} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"
