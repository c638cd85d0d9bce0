"""The DAG folder under a real Airflow DagBag: examples load, match their definitions, parse
offline without heavy imports, and a broken definition is an import error of its own file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from mlwp.definitions import Project, load_project
from mlwp.definitions.loading import find_definitions
from mlwp.security.roles import project_access_control

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS = REPO_ROOT / "dags"
EXPECTATIONS = REPO_ROOT / "expectations"
HEAVY = ("xgboost", "great_expectations", "mlflow", "sagemaker", "boto3")
BROKEN = (
    "project: broken\nowner: a\nworkflows:\n  w:\n    tasks:\n"
    "      a: {type: approve}\n      b: {type: approve, after: [aa]}\n"
)


def _definitions() -> dict[str, tuple[Project, str]]:
    found = {}
    for path in find_definitions([DAGS / "projects"]):
        project = load_project(path, expectations_dir=EXPECTATIONS)
        for workflow in project.workflows:
            found[project.dag_id(workflow)] = (project, workflow)
    return found


DEFINED = _definitions()


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dag_folder_has_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(DEFINED) <= set(dagbag.dag_ids)


@pytest.mark.parametrize("dag_id", sorted(DEFINED))
def test_dag_structure_equals_its_definition(dagbag, dag_id: str) -> None:
    project, workflow_name = DEFINED[dag_id]
    workflow = project.workflows[workflow_name]
    dag = dagbag.dags[dag_id]
    # a monitor task with retrain_on_drift gets a drift-signal task after it (docs/monitoring.md)
    signals = {
        f"{task_id}.retrain": task_id
        for task_id, task in workflow.tasks.items()
        if task.type == "monitor" and task.retrain_on_drift
    }
    # a rollout with a human approval is three tasks: <id>_steps >> <id>_approval >> <id>
    # (operators/rollout.py); upstream edges land on the first
    approved_rollouts = {
        task_id
        for task_id, task in workflow.tasks.items()
        if task.type == "rollout" and task.approve
    }
    rollout_parts = {f"{r}_{part}" for r in approved_rollouts for part in ("steps", "approval")}
    assert {t.task_id for t in dag.tasks} == set(workflow.tasks) | set(signals) | rollout_parts

    def head(task_id: str) -> str:
        return f"{task_id}_steps" if task_id in approved_rollouts else task_id

    assert {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids} == {
        (dep, head(task_id)) for task_id, task in workflow.tasks.items() for dep in task.after
    } | {(monitor, signal) for signal, monitor in signals.items()} | {
        edge
        for r in approved_rollouts
        for edge in ((f"{r}_steps", f"{r}_approval"), (f"{r}_approval", r))
    }
    default_retries = project.defaults.retries if workflow.retries is None else workflow.retries
    for task_id, task in workflow.tasks.items():
        expected = default_retries if task.retries is None else task.retries
        if task.type == "rollout":  # a retry would restart the steps: only when asked
            expected = task.retries or 0
        assert dag.get_task(task_id).retries == expected, task_id
    schedule = workflow.schedule
    if isinstance(schedule, str) or schedule is None:
        assert dag.schedule == schedule
    else:
        assert [a.name for a in dag.timetable.asset_condition.objects] == schedule.assets
        if schedule.cron is None:
            assert type(dag.timetable).__name__ == "AssetTriggeredTimetable"
        else:  # on the cron OR when the assets update; the cron as the cron alone would run
            from airflow.sdk import DAG, AssetOrTimeSchedule

            assert isinstance(dag.timetable, AssetOrTimeSchedule)
            alone = DAG("cron_alone", schedule=schedule.cron, start_date=dag.start_date)
            assert dag.timetable.timetable == alone.timetable
    assert dag.owner == project.owner
    assert dag.access_control == project_access_control(project.project)
    assert project.role in dag.access_control
    assert {"mlwp", project.role} <= set(dag.tags)
    assert dag.doc_md and dag_id in dag.doc_md


PARSE_OFFLINE = """
import json, socket, sys

def refuse(*args, **kwargs):
    raise OSError("network access while parsing DAGs")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({
    "dags": sorted(bag.dag_ids),
    "errors": bag.import_errors,
    "heavy": [m for m in sys.argv[2:] if m in sys.modules],
}))
"""


@pytest.mark.slow
def test_parsing_is_offline_and_imports_nothing_heavy() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PARSE_OFFLINE, str(DAGS), *HEAVY],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert set(DEFINED) <= set(result["dags"])
    assert result["heavy"] == []


def ensure_role(name: str) -> None:
    """Create a role as `mlwp roles sync` does before DAGs are serialized: FAB refuses an
    access_control naming a role that does not exist."""
    from airflow.providers.fab.www.security_appless import ApplessAirflowSecurityManager
    from airflow.utils.session import create_session

    with create_session() as session:
        manager = ApplessAirflowSecurityManager(session=session)
        if manager.find_role(name) is None:
            manager.add_role(name)


def _dag_folder_with_broken_project(tmp_path: Path) -> Path:
    dags = tmp_path / "dags"
    (dags / "projects").mkdir(parents=True)
    shutil.copy(DAGS / "mlwp_projects.py", dags / "mlwp_projects.py")
    shutil.copytree(DAGS / "projects" / "churn", dags / "projects" / "churn")
    (dags / "projects" / "broken").mkdir()
    (dags / "projects" / "broken" / "workflow.yaml").write_text(BROKEN)
    return dags


def test_broken_definition_is_an_import_error_and_hides_nothing(tmp_path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    dags = _dag_folder_with_broken_project(tmp_path)
    bag = DagBag(dag_folder=str(dags), bundle_path=dags, bundle_name="test")
    assert {"churn.train", "churn.score"} <= set(bag.dag_ids)
    assert not any(dag_id.startswith("broken.") for dag_id in bag.dag_ids)
    assert list(bag.import_errors) == ["projects/broken/workflow.yaml"]
    message = bag.import_errors["projects/broken/workflow.yaml"]
    assert (
        "dags/projects/broken/workflow.yaml:7:34: workflows.w.tasks.b.after[0]: "
        "unknown task 'aa' (did you mean 'a'?)"
    ) in message
    # without a bundle, Airflow keys errors by absolute path: so does the loader
    plain = DagBag(dag_folder=str(dags))
    assert list(plain.import_errors) == [str(dags / "projects" / "broken" / "workflow.yaml")]


@pytest.mark.slow
def test_import_error_is_stored_for_the_ui_and_good_dags_stay_active(
    tmp_path: Path, airflow_db: None
) -> None:
    """What the UI lists: ParseImportError rows, and the DAGs, after the processor's DB sync."""
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.errors import ParseImportError
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dags = _dag_folder_with_broken_project(tmp_path)
    bundle = f"test-{tmp_path.name}"
    with create_session() as session:
        session.add(DagBundleModel(name=bundle))
    ensure_role("project:churn")
    bag = DagBag(dag_folder=str(dags), bundle_path=dags, bundle_name=bundle)
    with create_session() as session:
        sync_bag_to_db(bag, bundle, None, session=session)
    with create_session() as session:
        errors = session.scalars(
            select(ParseImportError).where(ParseImportError.bundle_name == bundle)
        ).all()
        assert [e.filename for e in errors] == ["projects/broken/workflow.yaml"]
        assert "workflow.yaml:7:34: workflows.w.tasks.b.after[0]: unknown task 'aa'" in (
            errors[0].stacktrace
        )
        models = {
            m.dag_id: m
            for m in session.scalars(select(DagModel).where(DagModel.bundle_name == bundle))
        }
        assert {"churn.train", "churn.score"} <= set(models)
        assert not models["churn.train"].is_stale
        assert not models["churn.train"].has_import_errors


@pytest.mark.slow
def test_a_task_without_operator_fails_the_run(
    tmp_path: Path,
    airflow_db: None,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    from airflow.utils.state import DagRunState, TaskInstanceState

    from operators import task_types
    from operators.compiler import build_dag

    monkeypatch.setitem(task_types.OPERATORS, "approve", "operators.not_written_yet.Op")
    task_types.operator_factory.cache_clear()
    # The factory cache outlives this test: the run below fills it with the missing
    # operator, so forget it once the table is restored, or later tests in this process
    # get a failing approve task.
    request.addfinalizer(task_types.operator_factory.cache_clear)
    try:
        project = Project.model_validate(
            {
                "project": f"missing{tmp_path.name[-6:].replace('-', '')}".lower(),
                "owner": "a",
                "defaults": {"retries": 0},
                "workflows": {"w": {"tasks": {"ask": {"type": "approve"}}}},
            }
        )
        dag = build_dag(project, "w", project_dir=tmp_path)
    finally:
        task_types.operator_factory.cache_clear()
    ensure_role(project.role)
    # dag.test() runs DAGs found in a configured bundle; serialize this one into the default
    # bundle the way the DAG processor would.
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(tmp_path), collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    run = dag.test()
    assert run.state == DagRunState.FAILED
    [ti] = run.get_task_instances()
    assert ti.state == TaskInstanceState.FAILED
    captured = capfd.readouterr()
    assert "task type 'approve' has no operator yet" in captured.out + captured.err + caplog.text
    assert dag.default_args["retry_delay"] == timedelta(minutes=5)


def test_python_example_is_equivalent_to_the_churn_yaml(dagbag) -> None:
    """dags/examples/churn_python.py mirrors workflow `train` of the churn YAML (fields the
    Python version leaves out take the schema's defaults, as the operators do)."""
    from airflow.serialization.encoders import encode_timetable

    from mlwp.definitions import Tuning

    yaml_dag = dagbag.dags["churn.train"]
    python_dag = dagbag.dags["examples.churn_train"]

    def shape(dag):
        return {
            t.task_id: (
                type(t).__name__,
                sorted(t.upstream_task_ids),
                t.retries,
                t.execution_timeout,
                {
                    f: Tuning.model_validate(getattr(t, f)) if f == "tuning" else getattr(t, f)
                    for f in t.template_fields
                    if f != "hyperparameters"
                },
            )
            for t in dag.tasks
        }

    assert shape(python_dag) == shape(yaml_dag)
    assert (
        python_dag.get_task("train").hyperparameters == yaml_dag.get_task("train").hyperparameters
    )
    assert python_dag.access_control == yaml_dag.access_control
    assert encode_timetable(python_dag.timetable) == encode_timetable(yaml_dag.timetable)
    assert python_dag.owner == yaml_dag.owner


def test_churn_training_runs_weekly_or_when_the_monitor_finds_drift(dagbag) -> None:
    """The scheduler's view of churn.train (its serialized DAG): Airflow's AssetOrTimeSchedule
    of the weekly cron and the asset the monitor's drift signal updates."""
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.assets import AssetOrTimeSchedule

    stored = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags["churn.train"]))
    timetable = stored.timetable
    assert isinstance(timetable, AssetOrTimeSchedule)
    assert timetable.summary == "Asset or 0 0 * * 0"  # @weekly
    assert [(a.name, a.uri) for a in timetable.asset_condition.objects] == [
        ("churn.monitor.monitor", "x-mlwp://churn/monitor/monitor")
    ]
    [signal] = dagbag.dags["churn.monitor"].get_task("monitor.retrain").outlets
    assert (signal.name, signal.uri) == ("churn.monitor.monitor", "x-mlwp://churn/monitor/monitor")


@pytest.mark.slow
def test_real_dag_processor_lists_the_broken_definition(tmp_path: Path, airflow_db: None) -> None:
    """One pass of `airflow dag-processor` over a bundle with a good and a broken project."""
    import os

    from airflow.models.dag import DagModel
    from airflow.models.errors import ParseImportError
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dags = _dag_folder_with_broken_project(tmp_path)
    ensure_role("project:churn")
    bundle = f"proc-{tmp_path.name[-12:]}"
    config = [
        {
            "name": bundle,
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(dags), "refresh_interval": 0},
        }
    ]
    env = {
        **os.environ,
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(config),
        "PYTHONPATH": str(REPO_ROOT),
    }
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "dag-processor", "-n", "1", "-B", bundle],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    with create_session() as session:
        errors = {
            e.filename: e.stacktrace
            for e in session.scalars(
                select(ParseImportError).where(ParseImportError.bundle_name == bundle)
            )
        }
        models = {
            m.dag_id: m
            for m in session.scalars(select(DagModel).where(DagModel.bundle_name == bundle))
        }
    assert list(errors) == ["projects/broken/workflow.yaml"]
    assert (
        "workflow.yaml:7:34: workflows.w.tasks.b.after[0]: unknown task 'aa'"
        in (errors["projects/broken/workflow.yaml"])
    )
    assert {"churn.train", "churn.score"} <= set(models)
    assert not any(
        models[d].is_stale or models[d].has_import_errors for d in ("churn.train", "churn.score")
    )
