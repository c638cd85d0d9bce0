"""The guarded rollout's state machine, guardrails and definition (issue #14), without
services: serving's metrics come from serving's own metrics registry (the text its
``GET /metrics`` answers), the monitor's result is a document of the contract's shape."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from mlwp.definitions import parse_definition
from mlwp.registry import rollout
from mlwp.registry.rollout import Guardrails, RolloutPolicy, VariantWindow
from serving.core.metrics import Metrics, child

pytestmark = pytest.mark.unit

MODEL = "churn"


def served(metrics: Metrics, variant: str, ok: int, failed: int, seconds: float) -> None:
    for _ in range(ok):
        child(metrics.prediction_requests, MODEL, variant).inc()
        child(metrics.prediction_seconds, MODEL, variant).observe(seconds)
    for _ in range(failed):
        child(metrics.prediction_errors, MODEL, variant, "invalid_input").inc()


def scrape(metrics: Metrics) -> dict:
    return rollout.parse_serving_metrics(generate_latest(metrics.registry).decode(), MODEL)


def test_a_window_is_the_difference_of_two_scrapes_of_serving_metrics() -> None:
    metrics = Metrics()
    served(metrics, "champion", 50, 0, 0.003)
    child(metrics.prediction_requests, "other-model", "challenger").inc(1000)
    start = scrape(metrics)
    served(metrics, "champion", 90, 1, 0.003)
    served(metrics, "challenger", 10, 0, 0.03)
    seen = rollout.window(scrape(metrics), start)
    assert (seen["champion"].requests, seen["champion"].errors) == (90, 1)
    assert (seen["challenger"].requests, seen["challenger"].errors) == (10, 0)
    assert seen["champion"].error_rate == pytest.approx(1 / 91)
    # p99 is the upper bound of its bucket: 3 ms falls in (2, 5] ms, 30 ms in (25, 50] ms.
    assert seen["champion"].quantile_ms() == 5.0
    assert seen["challenger"].quantile_ms() == 50.0
    # A restarted serving process starts its counters again: counted from zero.
    fresh = Metrics()
    served(fresh, "challenger", 4, 1, 0.001)
    after_restart = rollout.window(scrape(fresh), scrape(metrics))
    assert (after_restart["challenger"].requests, after_restart["challenger"].errors) == (4, 1)


def test_latency_beyond_the_largest_bucket_is_infinite_not_hidden() -> None:
    metrics = Metrics()
    served(metrics, "challenger", 100, 0, 10.0)
    seen = rollout.window(scrape(metrics), {})
    assert seen["challenger"].quantile_ms() == math.inf
    shown = seen["challenger"].to_dict()
    assert shown["p99_ms"] is None and shown["p99_over_ms"] == 2500.0
    verdict = rollout.evaluate(Guardrails(max_p99_latency_ms=100, min_requests=10), seen)
    assert verdict.breaches == ["challenger p99 latency beyond the largest bucket > 100 ms"]


def window(requests: float, errors: float = 0, p99_ms: float | None = 5.0) -> dict:
    return {
        "champion": VariantWindow(requests * 9, 0, p99_ms=5.0),
        "challenger": VariantWindow(requests, errors, p99_ms=p99_ms),
    }


MONITOR_OK = {
    "comparison": {"decision": "no_difference_yet", "metric": "roc_auc"},
    "drift": {"drifted": False, "variants": {"challenger": {"prediction_drifted": False}}},
}


def test_guardrails_hold_or_wait_for_enough_requests() -> None:
    guardrails = Guardrails(max_error_rate=0.05, max_p99_latency_ms=50, min_requests=20)
    few = rollout.evaluate(guardrails, window(5, 5), MONITOR_OK)
    assert few.holds, few  # 5 failures in 10 requests are not judged yet
    assert few.pending == [
        "challenger answered 10 of the 20 requests needed to judge its error rate and latency"
    ]
    fine = rollout.evaluate(guardrails, window(100, 1), MONITOR_OK)
    assert fine.holds and not fine.pending
    assert fine.evidence["monitor"]["decision"] == "no_difference_yet"
    assert fine.evidence["serving"]["challenger"]["error_rate"] == pytest.approx(1 / 101)
    no_monitor = rollout.evaluate(guardrails, window(100))
    assert no_monitor.holds and no_monitor.pending == ["no monitor result for these versions yet"]


def test_each_guardrail_breaks_on_its_own() -> None:
    guardrails = Guardrails(max_error_rate=0.05, max_p99_latency_ms=50, min_requests=20)
    errors = rollout.evaluate(guardrails, window(90, 10), MONITOR_OK)
    assert errors.breaches == ["challenger error rate 10.00% > 5.00% (10 of 100 requests)"]
    slow = rollout.evaluate(guardrails, window(100, p99_ms=80.0), MONITOR_OK)
    assert slow.breaches == ["challenger p99 latency 80.0 ms > 50 ms"]
    drifted = {
        **MONITOR_OK,
        "drift": {"drifted": True, "variants": {"challenger": {"prediction_drifted": True}}},
    }
    assert rollout.evaluate(guardrails, window(100), drifted).breaches == [
        "the challenger's predictions drifted from its baseline"
    ]
    worse = {**MONITOR_OK, "comparison": {"decision": "challenger_worse", "metric": "roc_auc"}}
    assert rollout.evaluate(guardrails, window(100), worse).breaches == [
        "labelled outcomes: challenger significantly worse on roc_auc"
    ]
    off = Guardrails(max_error_rate=None, drift=False, labels=False, min_requests=20)
    assert rollout.evaluate(off, window(50, 50), {**worse, **drifted}).holds


def test_the_state_machine_rolls_back_at_once_and_advances_only_after_the_step() -> None:
    policy = RolloutPolicy(
        (10, 50, 100), step_seconds=60, check_seconds=5, guardrails=Guardrails(min_requests=20)
    )
    assert [policy.split(i) for i in range(2)] == [
        {"champion": 90, "challenger": 10},
        {"champion": 50, "challenger": 50},
    ]
    broken = rollout.evaluate(policy.guardrails, window(50, 50))
    assert rollout.next_action(policy, broken, 1, window(50, 50)) == "rollback"
    good = rollout.evaluate(policy.guardrails, window(100))
    assert rollout.next_action(policy, good, 59, window(100)) == "wait"
    assert rollout.next_action(policy, good, 60, window(100)) == "advance"
    quiet = rollout.evaluate(policy.guardrails, window(3))
    assert rollout.next_action(policy, quiet, 600, window(3)) == "wait"


@pytest.mark.parametrize(
    ("steps", "message"),
    [((), "at least one step"), ((50, 10), "must increase"), ((10, 150), "1-100")],
)
def test_bad_policies_are_refused(steps: tuple, message: str) -> None:
    with pytest.raises(rollout.RolloutError, match=message):
        RolloutPolicy(steps)
    with pytest.raises(rollout.RolloutError, match="unknown guardrail"):
        rollout.policy_from([10], 1, 1, {"max_errors": 1})


def test_prometheus_queries_are_valid_promql_per_variant() -> None:
    import promql_parser

    queries = rollout.prometheus_queries("churn", 90.2)
    for query in queries.values():
        promql_parser.parse(query)
    assert queries["errors"] == (
        'sum by (variant) (increase(mlwp_serving_prediction_errors_total{model="churn"}[91s]))'
    )
    assert queries["p99"].startswith("histogram_quantile(0.99, sum by (variant, le)")


DEFINITION = """
project: churn
owner: alice
workflows:
  train:
    tasks:
      deploy:
        {{type: deploy, model: churn, alias: challenger, traffic: {{champion: 90, challenger: 10}}}}
      rollout:
        type: rollout
        model: churn
        after: [deploy]
{rollout}
      notify: {{type: python, callable: "builtins:print", after: [rollout]}}
"""


def parse(rollout_yaml: str):
    text = DEFINITION.format(rollout=textwrap.indent(textwrap.dedent(rollout_yaml), " " * 8))
    return parse_definition(text, file="workflow.yaml", check_references=False)


def test_a_rollout_definition_compiles_to_steps_approval_and_promotion() -> None:
    from operators.approve import ApproveOperator
    from operators.compiler import build_dag
    from operators.rollout import RolloutOperator

    project, problems = parse(
        """
        steps: [5, 25, 100]
        step_duration: 30m
        check_every: 1m
        guardrails: {max_error_rate: 0.02, max_p99_latency_ms: 250, min_requests: 500}
        approve: {mode: human, approvers: [project:churn], min_approvals: 2}
        """
    )
    assert problems == [] and project is not None
    dag = build_dag(project, "train", project_dir=Path("."), grant_role=False)
    tasks = {task.task_id: task for task in dag.tasks}
    assert {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids} == {
        ("deploy", "rollout_steps"),
        ("rollout_steps", "rollout_approval"),
        ("rollout_approval", "rollout"),
        ("rollout", "notify"),
    }
    steps, approval, promote = tasks["rollout_steps"], tasks["rollout_approval"], tasks["rollout"]
    assert isinstance(steps, RolloutOperator) and isinstance(promote, RolloutOperator)
    assert (steps.phase, steps.policy.steps) == ("steps", (5, 25))
    assert (promote.phase, promote.policy.steps, promote.input) == (
        "promote",
        (100,),
        approval.task_id,
    )
    assert (steps.step_duration, steps.check_every) == (1800.0, 60.0)
    assert steps.policy.guardrails == Guardrails(0.02, 250.0, 500, True, True)
    assert isinstance(approval, ApproveOperator)
    assert (approval.approvers, approval.min_approvals, approval.input) == (
        ["project:churn"],
        2,
        "rollout_steps",
    )
    assert steps.execution_timeout is None  # hours of steps are not the workflow's compute timeout

    single, problems = parse("steps: [50, 100]")
    assert problems == []
    only = build_dag(single, "train", project_dir=Path("."), grant_role=False)
    assert [t.task_id for t in only.tasks if isinstance(t, RolloutOperator)] == ["rollout"]
    assert only.get_task("rollout").policy.steps == (50, 100)


@pytest.mark.parametrize(
    ("rollout_yaml", "message"),
    [
        ("steps: [50, 10]", "steps must increase"),
        ("steps: [0, 100]", "greater than or equal to 1"),
        ("steps: [10, 50]\napprove: {mode: human}", "the last step is 50 %, not 100 %"),
        ("guardrails: {max_error: 0.1}", "max_error"),
        ("guardrails: {max_error_rate: 2}", "less than or equal to 1"),
    ],
)
def test_bad_rollout_definitions_name_the_problem(rollout_yaml: str, message: str) -> None:
    project, problems = parse(rollout_yaml)
    assert project is None
    assert any(message in p.message for p in problems), [p.message for p in problems]
    assert all("rollout" in str(p.path) for p in problems), [p.path for p in problems]


def test_the_approval_request_shows_the_rollout_evidence() -> None:
    from operators.rollout import rollout_markdown

    verdict = rollout.evaluate(Guardrails(min_requests=20), window(120, 1), MONITOR_OK)
    document = {
        "model": MODEL,
        "version": "4",
        "rollout": {
            "champion": "3",
            "challenger": "4",
            "checks": [
                {"step": 2, "traffic": {"champion": 50, "challenger": 50}, **verdict.to_dict()}
            ],
        },
    }
    text = rollout_markdown(document)
    assert "Rollout of version 4 against champion version 3" in text
    assert "| 2 | 50 | 120 | 0.0083 | 5.0000 | no_difference_yet | False |" in text
