"""Operators: arguments checked at parse time, template fields, XCom document plumbing."""

from __future__ import annotations

import importlib
import logging
from datetime import UTC, datetime

import pytest

pytestmark = pytest.mark.unit

CONTEXT = {"project": "churn", "workflow": "train", "project_dir": "/tmp/churn"}

# One valid construction per task type: the definition's fields, as the compiler passes them.
CASES = {
    "extract": (
        {"source": "data/x.csv", "read_options": {"sep": ","}},
        {"source", "query", "read_options"},
    ),
    "validate": ({"suite": "telco_churn_raw"}, {"suite", "input", "query"}),
    "transform": ({"steps": [{"op": "drop", "columns": ["x"]}]}, {"steps", "input"}),
    "train": (
        {"target": "churn", "params": {"max_depth": 3}},
        {"target", "hyperparameters", "tuning", "input"},
    ),
    "evaluate": ({"metrics": ["roc_auc"]}, {"metrics", "input"}),
    "register": (
        {"model": "churn", "gate": {"metric": "roc_auc", "min": 0.8}},
        {"model", "gate", "input"},
    ),
    "approve": ({"mode": "auto"}, {"subject", "body", "approvers"}),
    "deploy": (
        {"model": "churn", "traffic": {"champion": 90, "challenger": 10}},
        {"model", "alias", "traffic"},
    ),
    "batch_predict": ({"model": "churn"}, {"model", "alias", "input", "output_path"}),
    "monitor": ({"model": "churn", "window": "P1D", "drift": {"method": "ks"}}, {"model", "drift"}),
    "labels": (
        {"model": "churn", "source": "data/outcomes.csv", "columns": {"label": "churn"}},
        {"source", "query", "read_options"},
    ),
}


def operator_class(task_type: str) -> type:
    from operators.task_types import OPERATORS

    module, _, name = OPERATORS[task_type].rpartition(".")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


@pytest.mark.parametrize("task_type", sorted(CASES))
def test_template_fields_and_construction(task_type: str) -> None:
    from airflow.sdk import DAG

    fields, expected = CASES[task_type]
    with DAG("churn.train", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC)):
        operator = operator_class(task_type)(task_id=task_type, **fields, **CONTEXT)
    assert expected <= set(operator.template_fields)
    for name in operator.template_fields:
        assert hasattr(operator, name), name
    assert operator.project == "churn" and operator.workflow == "train"


def test_validate_per_partition_is_plan_mapped_tasks_and_combine() -> None:
    from airflow.sdk import DAG

    from operators.validate import validate_tasks

    with DAG("churn.train", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        head, tail = validate_tasks(task_id="validate", suite="telco_churn_raw", **CONTEXT)
    assert (head.task_id, tail.task_id) == ("validate_plan", "validate")
    mapped = dag.get_task("validate_partition")
    assert mapped.upstream_task_ids == {"validate_plan"}
    assert tail.upstream_task_ids == {"validate_partition"}
    assert {"suite", "partition"} <= set(mapped.template_fields)
    assert {"suite", "input", "partials"} <= set(tail.template_fields)
    assert [link.name for link in tail.operator_extra_links] == ["GX data docs", "Stored dataset"]


@pytest.mark.parametrize(
    ("task_type", "fields", "message"),
    [
        ("extract", {}, "exactly one of 'source' or 'query'"),
        ("extract", {"query": "select 1"}, "needs 'conn_id'"),
        ("validate", {"suite": "s", "query": "select 1"}, "needs 'conn_id'"),
        ("extract", {"source": "x", "format": "json"}, "format must be one of csv, parquet"),
        ("transform", {"steps": [{"columns": ["x"]}]}, r"steps\[0\] needs an 'op'"),
        ("train", {"target": "y", "objective": "ranking"}, "objective must be one of"),
        ("train", {"target": "y", "backend": "emr"}, "backend must be one of local, sagemaker"),
        ("approve", {"mode": "maybe"}, "mode must be one of human, auto"),
        ("deploy", {"model": "m", "traffic": {"champion": 90, "challenger": 20}}, "sum to 100"),
        ("deploy", {"model": "m", "alias": "shadow"}, "alias must be one of"),
        ("deploy", {"model": "m", "serving_timeout": -1}, "serving_timeout must be >= 0"),
        ("labels", {"model": "m"}, "exactly one of 'source' or 'query'"),
        ("labels", {"model": "m", "source": "x", "columns": {"lbl": "y"}}, "columns must be one"),
    ],
)
def test_bad_arguments_are_named(task_type: str, fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        operator_class(task_type)(task_id="t", **fields, **CONTEXT)


def test_deploy_waits_for_serving_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlwp.registry import serving_client
    from operators.deploy import DeployOperator

    calls: list[tuple[tuple, dict]] = []

    def fake(*args: object, **kwargs: object) -> serving_client.ReloadOutcome:
        calls.append((args, kwargs))
        return serving_client.ReloadOutcome("serving", "serving shows it", 1.5)

    monkeypatch.setattr(serving_client, "reload_and_wait", fake)
    monkeypatch.setenv("MLWP_SERVING_ADMIN_KEY", "mlwp_admin")
    monkeypatch.setenv("MLWP_DEPLOY_SERVING_TIMEOUT_SECONDS", "7")
    monkeypatch.setenv("MLWP_SERVING_PORT", "8123")
    deploy = DeployOperator(task_id="deploy", model="churn", **CONTEXT)
    outcome = deploy._reload_serving("champion", "3", {"champion": 100})
    assert outcome.confirmed
    ((args, kwargs),) = calls
    assert args == ("http://127.0.0.1:8123", "churn", "champion", "3", {"champion": 100})
    assert kwargs["api_key"] == "mlwp_admin" and kwargs["timeout"] == 7.0

    calls.clear()
    DeployOperator(
        task_id="deploy", model="churn", serving_timeout=0, serving_url="http://s", **CONTEXT
    )._reload_serving("champion", "3", None)
    assert calls[0][0][0] == "http://s" and calls[0][1]["timeout"] == 0


def test_train_keeps_dag_params_apart_from_xgboost_params() -> None:
    from airflow.sdk import DAG, Param

    with DAG(
        "churn.train",
        schedule=None,
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        params={"min_roc_auc": Param(0.8, type="number")},
    ):
        train = operator_class("train")(
            task_id="train", target="churn", params={"max_depth": 4, "eta": 0.1}, **CONTEXT
        )
    assert train.hyperparameters == {"max_depth": 4, "eta": 0.1}
    assert "min_roc_auc" in train.params


def test_compiled_churn_dag_uses_the_real_operators() -> None:
    from mlwp.definitions.loading import load_project
    from mlwp.settings import REPO_ROOT
    from operators.compiler import build_dag

    folder = REPO_ROOT / "dags" / "projects" / "churn"
    project = load_project(folder / "workflow.yaml")
    dag = build_dag(project, "train", project_dir=folder)
    kinds = {task.task_id: type(task).__name__ for task in dag.tasks}
    assert kinds["extract"] == "ExtractOperator"
    assert kinds["validate"] == "ValidateOperator"
    assert kinds["features"] == "TransformOperator"
    assert kinds["train"] == "TrainOperator"
    assert "MissingOperator" not in kinds.values()
    assert [a.name for a in dag.get_task("features").outlets] == ["churn.train.features"]


def test_approval_body_compares_with_the_champion() -> None:
    from operators.approve import comparison_markdown

    body = comparison_markdown(
        {
            "model": "churn",
            "version": "3",
            "run_id": "abc",
            "metrics": {"roc_auc": 0.85, "accuracy": 0.8},
            "champion": {"version": "2", "metrics": {"roc_auc": 0.83, "accuracy": 0.79}},
            "gate": {"summary": "roc_auc 0.8500 >= 0.8: yes"},
        }
    )
    assert "Promote `churn` version 3?" in body
    assert "| roc_auc | 0.8500 | 0.8300 | +0.0200 |" in body
    assert "Current champion: version 2" in body
    assert "no champion yet" in comparison_markdown(
        {"model": "m", "version": "1", "metrics": {"r2": 0.5}}
    )


@pytest.mark.parametrize("answer", ["Approve", "Reject"])
def test_human_answer_is_the_approve_tasks_document(
    answer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On Reject, ApprovalOperator skips deploy by raising DownstreamTasksSkipped: the task's
    # document (approved: false, who answered) must be pushed before that.
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import DownstreamTasksSkipped

    from operators.approve import ApproveOperator

    with DAG("churn.train", schedule=None):
        approve = ApproveOperator(task_id="approve", mode="human", **CONTEXT)
        approve >> EmptyOperator(task_id="deploy")
    # hitl.py asks its logger for getEffectiveLevel on Reject, which a task process's logger has
    # but structlog's default (left by whichever test logged first in this process) has not.
    approve._cached_logger = logging.getLogger("test.approve")
    pushed: dict[str, object] = {}

    # The approvals counted come from the audit trail, read per request (dag, run, task, try).
    targets: list[str] = []
    monkeypatch.setattr(
        "mlwp.security.approvals.approvals_so_far",
        lambda target: targets.append(target) or ["bob", "alice"],
    )

    class TaskInstance:
        dag_id, run_id, task_id, map_index, try_number = "churn.train", "r1", "approve", -1, 1

        def xcom_pull(self, task_ids: str, key: str) -> dict[str, str]:
            assert (task_ids, key) == ("approve", "registration")
            return {"model": "churn", "version": "2"}

        def xcom_push(self, key: str, value: object) -> None:
            pushed[key] = value

    alice = {"id": "1", "name": "alice"}
    event = {
        "chosen_options": [answer],
        "params_input": {},
        "responded_at": datetime(2026, 1, 1, tzinfo=UTC),
        "responded_by_user": alice,
    }
    context = {"ti": TaskInstance(), "task": approve}
    expected = {"model": "churn", "version": "2", "approved": answer == "Approve"}
    if answer == "Approve":
        decision = approve.execute_complete(context, event)
        assert decision == {**expected, "approved_by": alice, "approvals": ["bob", "alice"]}
        assert len(targets) == 1 and "churn.train" in targets[0] and "r1" in targets[0]
    else:
        with pytest.raises(DownstreamTasksSkipped) as skipped:
            approve.execute_complete(context, event)
        assert skipped.value.tasks == ["deploy"]
        assert pushed["return_value"] == {**expected, "approved_by": alice}
