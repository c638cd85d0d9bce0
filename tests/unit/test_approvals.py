"""Four-eyes rules (mlwp.security.approvals): every kind of answer, decided without Airflow."""

from __future__ import annotations

import pytest

from mlwp.security.approvals import ApprovalPolicy, Verdict, decide
from mlwp.security.roles import SecurityError

pytestmark = pytest.mark.unit

MEMBER = ("DataScientist", "project:churn")


def answer(policy: ApprovalPolicy, user: str, roles=MEMBER, choice="Approve", **kw):  # type: ignore[no-untyped-def]
    return decide(
        policy, user=user, roles=roles, chosen=[choice], triggered_by=kw.pop("by", "carol"), **kw
    )


def test_only_named_approvers_and_members_of_named_roles_may_answer() -> None:
    policy = ApprovalPolicy(approvers=("alice", "project:risk"))
    assert answer(policy, "alice").verdict is Verdict.ANSWER
    assert answer(policy, "rita", roles=("DataScientist", "project:risk")).verdict is Verdict.ANSWER
    refused = answer(policy, "bob")
    assert (refused.verdict, refused.status) == (Verdict.REFUSE, 403)
    assert refused.message == (
        "user 'bob' is not an approver of this promotion: the definition names alice, project:risk"
    )
    # A rejection is an answer too: only approvers may give it.
    assert answer(policy, "bob", choice="Reject").verdict is Verdict.REFUSE


def test_admins_answer_only_when_the_definition_allows_it() -> None:
    strict = ApprovalPolicy(approvers=("alice",))
    assert answer(strict, "root", roles=("Admin",)).verdict is Verdict.REFUSE
    lenient = ApprovalPolicy(approvers=("alice",), allow_admins=True)
    assert answer(lenient, "root", roles=("Admin",)).verdict is Verdict.ANSWER


def test_without_approvers_airflow_permissions_decide() -> None:
    assert answer(ApprovalPolicy(), "bob").verdict is Verdict.ANSWER


def test_the_user_who_triggered_the_run_may_not_approve_it() -> None:
    policy = ApprovalPolicy(approvers=("alice", "bob"))
    refused = answer(policy, "alice", by="alice")
    assert (refused.verdict, refused.status) == (Verdict.REFUSE, 403)
    assert refused.message == (
        "user 'alice' triggered this run and may not approve it: four-eyes approval needs "
        "someone else (the definition does not allow self-approval)"
    )
    # ... but may stop their own promotion, and may approve when the definition allows it.
    assert answer(policy, "alice", by="alice", choice="Reject").verdict is Verdict.ANSWER
    allowed = ApprovalPolicy(approvers=("alice",), allow_self_approval=True)
    assert answer(allowed, "alice", by="alice").verdict is Verdict.ANSWER


def test_two_approvals_from_two_different_people() -> None:
    policy = ApprovalPolicy(approvers=("alice", "bob", "carol"), min_approvals=2)
    first = answer(policy, "alice")
    assert (first.verdict, first.status, first.approved_by) == (Verdict.RECORD, 202, ("alice",))
    assert first.message == ("approval 1 of 2 recorded from 'alice'; waiting for another approver")
    again = answer(policy, "alice", approved_by=["alice"])
    assert (again.verdict, again.status) == (Verdict.REFUSE, 409)
    second = answer(policy, "bob", approved_by=["alice"])
    assert (second.verdict, second.approved_by) == (Verdict.ANSWER, ("alice", "bob"))
    # One rejection by an approver rejects at once.
    assert answer(policy, "bob", choice="Reject", approved_by=["alice"]).verdict is Verdict.ANSWER


def test_a_policy_that_could_never_be_met_is_refused() -> None:
    with pytest.raises(SecurityError, match="min_approvals is 2 but only 1 approver"):
        ApprovalPolicy(approvers=("alice",), min_approvals=2)
    with pytest.raises(SecurityError, match="at least 1"):
        ApprovalPolicy(min_approvals=0)
    # A role may hold any number of people.
    ApprovalPolicy(approvers=("project:churn",), min_approvals=3)


def test_the_definition_carries_the_rules_with_a_clear_error() -> None:
    from mlwp.definitions.schema import ApproveTask

    task = ApproveTask(approvers=["alice", "bob"], min_approvals=2, allow_admins=True)
    assert task.operator_kwargs()["min_approvals"] == 2
    with pytest.raises(ValueError, match="could never be approved"):
        ApproveTask(approvers=["alice"], min_approvals=2)


def test_the_policy_is_described_in_the_request() -> None:
    policy = ApprovalPolicy(approvers=("alice", "bob"), min_approvals=2)
    assert policy.describe() == (
        "Approvers: alice, bob; 2 different approvers must approve; the user who triggered "
        "the run may not approve it."
    )
    assert ApprovalPolicy.from_dict(policy.to_dict()) == policy
