"""The compiler: definition -> DAG, the task-type table, and the folder loader (in-process)."""

from __future__ import annotations

import functools
import shutil
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from airflow.sdk import Asset, BaseOperator
from airflow.sdk.exceptions import AirflowException

from mlwp.definitions import load_project
from operators import task_types
from operators.compiler import (
    access_control,
    build_dag,
    build_dags,
    load_projects,
    report_import_errors,
)
from operators.notifiers import AlertNotifier
from operators.python_callable import PythonCallableOperator, call_by_path
from operators.task_types import MissingOperator, operator_factory

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTATIONS = REPO_ROOT / "expectations"
CHURN_DIR = REPO_ROOT / "dags" / "projects" / "churn"
FULL = REPO_ROOT / "tests" / "fixtures" / "definitions" / "valid" / "full.yaml"


@pytest.fixture(scope="module")
def churn():
    return load_project(CHURN_DIR / "workflow.yaml", expectations_dir=EXPECTATIONS)


@pytest.fixture(scope="module")
def full():
    return load_project(FULL, expectations_dir=EXPECTATIONS)


def edges(dag) -> set[tuple[str, str]]:
    return {(up, task.task_id) for task in dag.tasks for up in task.upstream_task_ids}


def test_churn_train_dag_matches_its_definition(churn) -> None:
    dag = build_dag(churn, "train", project_dir=CHURN_DIR)
    workflow = churn.workflows["train"]
    assert dag.dag_id == "churn.train"
    # The rollout with a promotion approval is three tasks (operators/rollout.py).
    rollout = ["rollout_steps", "rollout_approval", "rollout"]
    assert [t.task_id for t in dag.tasks] == [*list(workflow.tasks)[:-1], *rollout]
    declared = {(dep, tid) for tid, task in workflow.tasks.items() for dep in task.after}
    assert edges(dag) == {
        *(edge for edge in declared if edge[1] != "rollout"),
        ("deploy", "rollout_steps"),
        ("rollout_steps", "rollout_approval"),
        ("rollout_approval", "rollout"),
    }
    assert dag.owner == "alice"
    assert dag.timetable.timetable.expression == "0 0 * * 0"  # @weekly, or the drift signal
    assert set(dag.tags) == {"mlwp", "project:churn", "churn", "telco"}
    assert dag.access_control == {"project:churn": {"DAGs": {"can_read", "can_edit"}}}
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.start_date.isoformat().startswith("2024-01-01")
    retries = {t.task_id: t.retries for t in dag.tasks}
    # A retried rollout would start again from its first step: none unless asked for; its
    # approval keeps the workflow's (a retried approval asks again).
    assert retries.pop("rollout_steps") == retries.pop("rollout") == 0
    assert set(retries.values()) == {2}
    train = dag.get_task("train")
    assert train.execution_timeout == timedelta(hours=1)  # the task's own timeout wins
    assert dag.get_task("extract").execution_timeout == timedelta(hours=2)  # project default
    assert dag.get_task("extract").retry_delay == timedelta(minutes=5)
    assert dag.params["min_roc_auc"] == 0.8


def test_operator_kwargs_carry_type_fields_and_project_context(churn) -> None:
    dag = build_dag(churn, "train", project_dir=CHURN_DIR)
    train = dag.get_task("train")
    if isinstance(train, MissingOperator):
        assert train.fields["target"] == "churn"
    else:  # the pipeline's TrainOperator keeps XGBoost's params apart from the DAG's
        assert train.target == "churn"
        assert train.hyperparameters == {"max_depth": 4, "eta": 0.1, "subsample": 0.9}
    assert train.project == "churn"
    assert train.workflow == "train"
    assert train.project_dir == str(CHURN_DIR)


def test_doc_md_is_generated_from_the_definition_without_secrets(full) -> None:
    dag = build_dag(full, "train", project_dir=FULL.parent, source="full.yaml")
    assert dag.doc_md.startswith("# full.train")
    assert "| `deploy` | deploy | approve |" in dag.doc_md
    assert "`project:full`" in dag.doc_md and "`full.yaml`" in dag.doc_md
    for secret_ish in ("slack_ml", "smtp_default", "ml@example.com", "warehouse"):
        assert secret_ish not in dag.doc_md


def test_dataset_tasks_are_assets_and_asset_schedules_use_them(full, churn) -> None:
    train = build_dag(full, "train", project_dir=FULL.parent)
    assert list(train.get_task("features").outlets) == [
        Asset(name="full.train.features", uri="x-mlwp://full/train/features")
    ]
    assert list(train.get_task("train").outlets) == []
    score = build_dag(full, "score", project_dir=FULL.parent)
    assert list(score.timetable.asset_condition.objects) == [
        Asset(name="full.train.features", uri="x-mlwp://full/train/features")
    ]
    assert build_dag(full, "manual", project_dir=FULL.parent).schedule is None
    # the churn scoring workflow listens to the churn training features
    churn_score = build_dag(churn, "score", project_dir=CHURN_DIR)
    assert [a.name for a in churn_score.timetable.asset_condition.objects] == [
        "churn.train.features"
    ]


def test_cron_or_assets_schedule_compiles_to_asset_or_time_schedule(churn) -> None:
    """churn.train runs weekly or when the monitor signals drift: the cron half is the
    timetable Airflow makes of the cron alone, the asset half the monitor's retrain asset."""
    from airflow.sdk import DAG, AssetOrTimeSchedule

    dag = build_dag(churn, "train", project_dir=CHURN_DIR)
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    alone = DAG("weekly", schedule="@weekly", start_date=dag.start_date)
    assert dag.timetable.timetable == alone.timetable
    assert list(dag.timetable.asset_condition.objects) == [
        Asset(name="churn.monitor.monitor", uri="x-mlwp://churn/monitor/monitor")
    ]
    [signal] = (
        build_dag(churn, "monitor", project_dir=CHURN_DIR).get_task("monitor.retrain").outlets
    )
    assert signal == Asset(name="churn.monitor.monitor", uri="x-mlwp://churn/monitor/monitor")
    assert "`@weekly`, or when these assets update: `churn.monitor.monitor`" in dag.doc_md


def test_defaults_and_overrides(full) -> None:
    dag = build_dag(full, "train", project_dir=FULL.parent)
    assert dag.default_args["retries"] == 1  # workflow overrides the project default (3)
    assert dag.default_args["retry_delay"] == timedelta(seconds=90)
    assert dag.default_args["execution_timeout"] == timedelta(minutes=90)
    assert dag.get_task("train").retries == 0
    assert dag.get_task("train").execution_timeout == timedelta(hours=4)
    assert dag.get_task("train").doc_md == "Trains on **SageMaker**."
    assert dag.max_active_runs == 2
    other = build_dag(full, "score", project_dir=FULL.parent)
    assert other.default_args["retries"] == 3


def test_alerts_become_lazy_notifiers(full) -> None:
    dag = build_dag(full, "train", project_dir=FULL.parent)
    on_failure = dag.default_args["on_failure_callback"]
    assert [(n.kind, n.conn_id) for n in on_failure] == [
        ("connection", "slack_alerts"),
        ("slack", "slack_ml"),
        ("slack_webhook", "slack_hook"),
        ("email", "smtp_default"),
        ("pagerduty", "pagerduty_ml"),
    ]
    assert on_failure[4].severity == "critical"
    assert on_failure[1].channel == "#ml"
    assert on_failure[3].to == ["ml@example.com"]
    [retry] = dag.default_args["on_retry_callback"]
    assert (retry.kind, retry.to) == ("email", ["ops@example.com"])
    built = on_failure[1].build()
    assert type(built).__name__ == "SlackNotifier" and built.channel == "#ml"
    assert type(on_failure[3].build()).__name__ == "SmtpNotifier"
    assert type(on_failure[2].build()).__name__ == "SlackWebhookNotifier"
    with pytest.raises(AirflowException, match="unknown alert kind"):
        AlertNotifier(kind="pager", conn_id="x")


def test_access_control_uses_only_actions_fab_accepts(churn) -> None:
    from airflow.providers.fab.www.security.permissions import RESOURCE_DETAILS_MAP

    for resource, actions in access_control(churn)["project:churn"].items():
        assert actions <= RESOURCE_DETAILS_MAP[resource]["actions"], resource
    from mlwp.security.roles import project_access_control

    assert access_control(churn) == project_access_control("churn")


def test_missing_operator_fails_loudly_when_run(churn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        task_types.OPERATORS, "approve", "operators.not_written_yet.ApproveOperator"
    )
    operator_factory.cache_clear()
    try:
        factory = operator_factory("approve")
        assert isinstance(factory, functools.partial)
        dag = build_dag(churn, "train", project_dir=CHURN_DIR)
    finally:
        operator_factory.cache_clear()
    approve = dag.get_task("approve")
    assert isinstance(approve, MissingOperator)
    assert approve.fields == {"mode": "human", "approvers": ["alice"], "allow_admins": True}
    with pytest.raises(AirflowException, match="task type 'approve' has no operator yet"):
        approve.execute({})


def test_operator_table_uses_real_classes_lazily(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "fake_ops_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "approve.py").write_text(
        textwrap.dedent(
            """
            from airflow.sdk import BaseOperator

            class ApproveOperator(BaseOperator):
                def __init__(self, *, mode, approvers, project, workflow, project_dir, **kw):
                    super().__init__(**kw)
                    self.mode, self.approvers, self.project = mode, approvers, project

                def execute(self, context):
                    return self.mode
            """
        )
    )
    (package / "broken.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(task_types.OPERATORS, "approve", "fake_ops_pkg.approve.ApproveOperator")
    operator_factory.cache_clear()
    try:
        cls = operator_factory("approve")
        assert cls.__name__ == "ApproveOperator" and issubclass(cls, BaseOperator)
        project = load_project(
            REPO_ROOT / "tests" / "fixtures" / "definitions" / "valid" / "minimal.yaml"
        )
        dag = build_dag(project, "hello", project_dir=tmp_path)
        assert dag.get_task("approve").mode == "auto"
        assert dag.get_task("approve").project == "minimal"
        # a module that exists but cannot import is a bug: it fails the build, loudly
        monkeypatch.setitem(task_types.OPERATORS, "approve", "fake_ops_pkg.broken.ApproveOperator")
        operator_factory.cache_clear()
        with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
            operator_factory("approve")
        # a module without the class is "not written yet"
        monkeypatch.setitem(task_types.OPERATORS, "approve", "fake_ops_pkg.approve.Nope")
        operator_factory.cache_clear()
        assert isinstance(operator_factory("approve"), functools.partial)
    finally:
        operator_factory.cache_clear()
        sys.modules.pop("fake_ops_pkg.approve", None)
        sys.modules.pop("fake_ops_pkg", None)
    with pytest.raises(AirflowException, match="unknown task type 'nope'"):
        operator_factory("nope")


def test_python_tasks_import_their_callable_only_when_run(full) -> None:
    dag = build_dag(full, "train", project_dir=FULL.parent)
    notify = dag.get_task("notify")
    assert isinstance(notify, PythonCallableOperator)
    assert notify.op_kwargs == {"target": "json:dumps", "kwargs": {"obj": [1, 2]}}
    assert call_by_path("json:dumps", {"obj": [1, 2]}) == "[1, 2]"
    with pytest.raises(AirflowException, match="has no function 'nothing'"):
        call_by_path("json:nothing", {})


def test_build_dags_builds_every_or_only_named_workflows(full) -> None:
    assert [d.dag_id for d in build_dags(full, project_dir=FULL.parent)] == [
        "full.train",
        "full.score",
        "full.manual",
    ]
    assert [d.dag_id for d in build_dags(full, project_dir=FULL.parent, only=["score"])] == [
        "full.score"
    ]


def _projects(tmp_path: Path) -> Path:
    projects = tmp_path / "projects"
    shutil.copytree(CHURN_DIR, projects / "churn")
    (projects / "broken").mkdir()
    (projects / "broken" / "workflow.yaml").write_text(
        "project: broken\nowner: a\nworkflows:\n  w:\n    tasks:\n"
        "      a: {type: approve}\n      b: {type: approve, after: [aa]}\n"
    )
    (projects / "zz_again").mkdir()
    (projects / "zz_again" / "workflow.yaml").write_text(
        "project: churn\nowner: a\nworkflows: {x: {tasks: {a: {type: approve}}}}\n"
    )
    return projects


def test_load_projects_isolates_broken_definitions(tmp_path: Path) -> None:
    projects = _projects(tmp_path)
    result = load_projects(projects, expectations_dir=EXPECTATIONS, display_root=tmp_path)
    assert sorted(result.dags) == ["churn.monitor", "churn.score", "churn.train"]
    assert {path.parent.name for path in result.problems} == {"broken", "zz_again"}
    [broken] = result.problems[projects / "broken" / "workflow.yaml"]
    assert str(broken) == (
        "projects/broken/workflow.yaml:7:34: workflows.w.tasks.b.after[0]: "
        "unknown task 'aa' (did you mean 'a'?)"
    )
    [again] = result.problems[projects / "zz_again" / "workflow.yaml"]
    assert "project 'churn' is already defined" in again.message


def test_load_projects_builds_only_the_dag_of_a_task_run(tmp_path: Path) -> None:
    projects = _projects(tmp_path)
    result = load_projects(projects, dag_id="churn.score", expectations_dir=EXPECTATIONS)
    assert list(result.dags) == ["churn.score"]
    assert result.problems == {}  # other projects' files were not even read


def test_a_project_whose_role_does_not_exist_yet_is_built_without_access_control(
    tmp_path: Path,
) -> None:
    # FAB refuses access_control naming a missing role, and that one failure marks every DAG
    # of the loader file stale: the DAGs come without it until the roles sync creates the role.
    projects = _projects(tmp_path)
    before = load_projects(projects, expectations_dir=EXPECTATIONS, project_roles=frozenset())
    assert {dag.access_control for dag in before.dags.values()} == {None}
    after = load_projects(
        projects, expectations_dir=EXPECTATIONS, project_roles=frozenset({"project:churn"})
    )
    assert after.dags["churn.train"].access_control == {
        "project:churn": {"DAGs": {"can_read", "can_edit"}}
    }
    unknown = load_projects(projects, expectations_dir=EXPECTATIONS, project_roles=None)
    assert unknown.dags["churn.train"].access_control is not None


def test_a_task_run_does_not_say_the_project_role_is_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A task run builds its DAG without access_control whether or not the role exists (it
    never syncs permissions); every task log of the churn example said "Role
    'project:churn' does not exist yet" all the same, with the role in place for hours."""
    projects = _projects(tmp_path)
    with caplog.at_level("INFO", logger="operators.compiler"):
        load_projects(projects, dag_id="churn.score", expectations_dir=EXPECTATIONS)
    assert "does not exist yet" not in caplog.text
    with caplog.at_level("INFO", logger="operators.compiler"):
        load_projects(projects, expectations_dir=EXPECTATIONS, project_roles=frozenset())
    assert "Role 'project:churn' does not exist yet" in caplog.text  # the DAG processor's


def test_existing_project_roles_is_unknown_outside_the_dag_processor() -> None:
    from operators.compiler import existing_project_roles

    assert existing_project_roles() is None


def test_report_import_errors_outside_airflow_warns(tmp_path: Path) -> None:
    projects = _projects(tmp_path)
    result = load_projects(projects, expectations_dir=EXPECTATIONS)
    with pytest.warns(UserWarning, match="unknown task 'aa'"):
        report_import_errors(result.problems, tmp_path / "loader.py")


def test_human_approval_has_no_response_deadline_unless_its_task_sets_one(churn) -> None:
    # The workflow's timeout (2 h for churn) must not become the approvers' deadline.
    import warnings

    from airflow.exceptions import AirflowProviderDeprecationWarning

    with warnings.catch_warnings():
        # HITLOperator warns when it is given an execution_timeout.
        warnings.simplefilter("error", AirflowProviderDeprecationWarning)
        dag = build_dag(churn, "train", project_dir=CHURN_DIR)
    for approve in (dag.get_task("approve"), dag.get_task("rollout_approval")):
        assert approve.mode == "human"
        assert approve.response_timeout is None and approve.execution_timeout is None
    workflow = churn.workflows["train"]
    tasks = dict(workflow.tasks)
    tasks["approve"] = tasks["approve"].model_copy(update={"timeout": timedelta(days=2)})
    project = churn.model_copy(
        update={"workflows": {"train": workflow.model_copy(update={"tasks": tasks})}}
    )
    approve = build_dag(project, "train", project_dir=CHURN_DIR).get_task("approve")
    assert approve.response_timeout == timedelta(days=2)
    assert approve.execution_timeout is None
