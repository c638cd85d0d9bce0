"""Compile workflow definitions into Airflow DAGs.

Public API (also usable from a hand-written DAG file):

- :func:`build_dag` turns one workflow of a validated :class:`mlwp.definitions.Project` into
  a ``DAG`` named ``<project>.<workflow>``;
- :func:`build_dags` does it for every workflow of a project;
- :func:`load_projects` scans a folder of ``<project>/workflow.yaml`` files, validates them,
  builds the DAGs, and collects the problems of broken definitions without letting them hide
  the others; :func:`report_import_errors` shows those problems as Airflow import errors.

Parsing stays cheap: no network, no database, no heavy import; operator classes are imported
once per task type (``operators.task_types``).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, Param

from mlwp.definitions import (
    AssetSchedule,
    ExtractTask,
    MonitorTask,
    Project,
    ValidateTask,
    Workflow,
    asset_name,
    asset_uri,
)
from mlwp.definitions.loading import DEFINITION_FILENAME, check_file
from mlwp.definitions.problems import DefinitionError, Problem, format_path
from mlwp.definitions.schema import TaskBase
from mlwp.platform.executors import Placement
from operators.notifiers import FAILURE_TEXT, RETRY_TEXT, alert_notifiers
from operators.task_types import operator_factory

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator

log = logging.getLogger(__name__)


def access_control(project: Project) -> dict[str, dict[str, set[str]]]:
    """Return the ``access_control`` of a project's DAGs: what its role may do on them.

    The permission set comes from ``mlwp.security.roles`` (the one table that ``mlwp roles
    sync`` and the role-by-action matrix also use). The role must exist before the DAG
    processor serializes the DAGs (``mlwp roles sync`` creates it): FAB refuses access_control
    naming an unknown role.
    """
    from mlwp.security.roles import project_access_control

    return project_access_control(project.project)


def existing_project_roles() -> frozenset[str] | None:
    """Return the project roles that exist, as ``mlwp roles sync`` last published them.

    Read from the Airflow Variable ``mlwp_project_roles`` (through the DAG processor's
    supervisor: parsing processes have no database access). None when it cannot be known
    (never synced, or outside a DAG processor): then every DAG names its role, as before.
    """
    from mlwp.security.roles import PROJECT_ROLES_VARIABLE

    try:
        from airflow.sdk import Variable

        roles = Variable.get(PROJECT_ROLES_VARIABLE, default=None, deserialize_json=True)
    except Exception:  # no supervisor, no secrets backend: unknown, not an error
        return None
    if not isinstance(roles, list):
        return None
    return frozenset(str(role) for role in roles)


def _schedule(project: Project, workflow: Workflow) -> Any:
    schedule = workflow.schedule
    if not isinstance(schedule, AssetSchedule):
        return schedule
    assets = [Asset(name=name, uri=asset_uri(*name.split("."))) for name in schedule.assets]
    if schedule.cron is None:
        return assets
    start_date = workflow.start_date or project.defaults.start_date
    return AssetOrTimeSchedule(timetable=cron_timetable(schedule.cron, start_date), assets=assets)


def cron_timetable(expression: str, start_date: datetime) -> Any:
    """The timetable Airflow makes of ``schedule=expression`` for a DAG starting at
    ``start_date``: the cron half of ``{cron: ..., assets: [...]}`` runs exactly as the same
    cron alone would (the DAG's time zone, ``[scheduler] create_cron_data_intervals``)."""
    import pendulum
    from airflow.sdk import CronDataIntervalTimetable, CronTriggerTimetable
    from airflow.sdk.configuration import conf

    timezone = pendulum.instance(start_date).timezone or pendulum.UTC  # naive: UTC, as Airflow
    if conf.getboolean("scheduler", "create_cron_data_intervals"):
        return CronDataIntervalTimetable(expression, timezone)
    return CronTriggerTimetable(expression, timezone=timezone)


def doc_md(project: Project, workflow_name: str, source: str | None = None) -> str:
    """Render the DAG's documentation from its definition (no secrets: only names and ids)."""
    workflow = project.workflows[workflow_name]
    schedule = workflow.schedule
    if isinstance(schedule, AssetSchedule):
        schedule_text = "when these assets update: " + ", ".join(f"`{a}`" for a in schedule.assets)
        if schedule.cron is not None:
            schedule_text = f"`{schedule.cron}`, or {schedule_text}"
    else:
        schedule_text = f"`{schedule}`" if schedule else "manual only"
    lines = [
        f"# {project.dag_id(workflow_name)}",
        "",
        workflow.description or project.description,
        "",
        f"- **project**: {project.project}"
        + (f" - {project.description}" if project.description else ""),
        f"- **owner**: {project.owner}",
        f"- **members**: {', '.join(project.members) or '-'} (role `{project.role}`)",
        f"- **schedule**: {schedule_text}",
    ]
    if source:
        lines.append(f"- **definition**: `{source}`")
    lines += ["", "| task | type | after |", "| --- | --- | --- |"]
    for task_id, task in workflow.tasks.items():
        lines.append(f"| `{task_id}` | {task.type} | {', '.join(task.after) or '-'} |")
    if workflow.params:
        lines += ["", "Trigger parameters: " + ", ".join(f"`{name}`" for name in workflow.params)]
    return "\n".join(lines)


def _params(workflow: Workflow) -> dict[str, Param]:
    params: dict[str, Param] = {}
    for name, spec in workflow.params.items():
        schema = spec.model_dump(exclude={"default"}, exclude_none=True)
        params[name] = Param(spec.default, **schema)
    return params


def build_dag(
    project: Project,
    workflow_name: str,
    *,
    project_dir: str | os.PathLike[str],
    source: str | None = None,
    grant_role: bool = True,
) -> DAG:
    """Build the DAG ``<project>.<workflow_name>`` from a validated definition.

    ``project_dir`` is the folder that relative dataset paths are resolved against; it is
    passed to every operator. ``source`` (the definition file, for the docs) is optional.
    ``grant_role=False`` leaves ``access_control`` out (the project role does not exist yet).
    """
    workflow = project.workflows[workflow_name]
    defaults = project.defaults
    default_args: dict[str, Any] = {
        "owner": project.owner,
        "retries": defaults.retries if workflow.retries is None else workflow.retries,
        "retry_delay": workflow.retry_delay or defaults.retry_delay,
    }
    timeout = workflow.timeout or defaults.timeout
    if timeout is not None:
        default_args["execution_timeout"] = timeout
    if project.alerts.on_failure:
        default_args["on_failure_callback"] = alert_notifiers(
            project.alerts.on_failure, FAILURE_TEXT
        )
    if project.alerts.on_retry:
        default_args["on_retry_callback"] = alert_notifiers(project.alerts.on_retry, RETRY_TEXT)

    dag = DAG(
        dag_id=project.dag_id(workflow_name),
        description=(workflow.description or project.description or None),
        schedule=_schedule(project, workflow),
        start_date=workflow.start_date or defaults.start_date,
        catchup=defaults.catchup if workflow.catchup is None else workflow.catchup,
        max_active_runs=workflow.max_active_runs or defaults.max_active_runs,
        default_args=default_args,
        tags=["mlwp", project.role, *project.tags, *workflow.tags],
        doc_md=doc_md(project, workflow_name, source),
        access_control=access_control(project) if grant_role else None,
        params=_params(workflow),
    )
    context: dict[str, Any] = {
        "project": project.project,
        "workflow": workflow_name,
        "project_dir": str(project_dir),
    }
    tasks: dict[str, BaseOperator] = {}  # the task that carries each definition task's id
    heads: dict[str, BaseOperator] = {}  # where its upstream edges land (the same, but SageMaker)
    for task_id, task in workflow.tasks.items():
        base: dict[str, Any] = {"task_id": task_id, "dag": dag}
        if task.retries is not None:
            base["retries"] = task.retries
        if task.retry_delay is not None:
            base["retry_delay"] = task.retry_delay
        if task.timeout is not None:
            base["execution_timeout"] = task.timeout
        if task.type == "approve":
            # The workflow's `timeout` bounds compute, not how long people take to answer:
            # HITLOperator turns an (inherited) execution_timeout into a response deadline
            # (with a deprecation warning at every parse), so a human approval left unanswered
            # for 2 h would fail, be retried and page people. Only the approve task's own
            # `timeout` is its response deadline.
            base["execution_timeout"] = None
            if task.timeout is not None:
                base["response_timeout"] = task.timeout
        if task.doc:
            base["doc_md"] = task.doc
        base.update(placement_arguments(task))
        if task.PRODUCES_DATASET:
            base["outlets"] = [
                Asset(
                    name=asset_name(project.project, workflow_name, task_id),
                    uri=asset_uri(project.project, workflow_name, task_id),
                )
            ]
        if task.type == "train" and task.backend == "sagemaker":
            # One definition task, three Airflow tasks (request -> provider job -> model);
            # the last keeps the task id, so downstream wiring and XCom lookups are unchanged.
            from operators.sagemaker import sagemaker_tasks_for

            heads[task_id], tasks[task_id] = sagemaker_tasks_for(
                task, task_id=task_id, context=context, base=base
            )
            continue
        if task.type == "rollout":
            # One task, or steps -> human approval -> promotion (the last keeps the id).
            from operators.rollout import rollout_tasks_for

            heads[task_id], tasks[task_id] = rollout_tasks_for(
                task, task_id=task_id, context=context, base=base
            )
            continue
        if task.type == "batch_predict" and task.backend == "sagemaker":
            # request -> provider transform job (deferrable) -> collect (keeps the id)
            from operators.batch_transform import batch_transform_tasks

            heads[task_id], tasks[task_id] = batch_transform_tasks(
                task, task_id=task_id, context=context, base=base
            )
            continue
        if task.type == "batch_predict" and task.map_partitions:
            # plan -> score (mapped over the input's partitions) -> collect (keeps the id)
            from operators.batch_predict import batch_predict_tasks

            arguments = task.operator_kwargs()
            arguments.pop("map_partitions")
            heads[task_id], tasks[task_id] = batch_predict_tasks(**arguments, **context, **base)
            continue
        if task.type == "validate" and task.map_partitions:
            # plan -> validate (mapped over the partitions) -> combine (keeps the id)
            from operators.validate import validate_tasks

            heads[task_id], tasks[task_id] = validate_tasks(
                **task.operator_kwargs(), **context, **base
            )
            continue
        factory = operator_factory(task.type)
        extra: dict[str, Any] = {}
        if isinstance(task, ValidateTask) and task.in_database:
            extra.update(sql_source(workflow, task_id, task))
        if isinstance(task, MonitorTask):
            extra["notifiers"] = alert_notifiers(project.alerts.on_failure, FAILURE_TEXT)
        tasks[task_id] = heads[task_id] = factory(
            **task.operator_kwargs(), **context, **base, **extra
        )
        if isinstance(task, MonitorTask) and task.retrain_on_drift:
            # a task of its own, so "no drift" can skip it: a skipped task emits no asset
            # event, a succeeding one always does (operators/monitor.py)
            from operators.monitor import DriftSignalOperator

            signal = DriftSignalOperator(
                task_id=f"{task_id}.retrain",
                monitor_task_id=task_id,
                dag=dag,
                outlets=[
                    Asset(
                        name=asset_name(project.project, workflow_name, task_id),
                        uri=asset_uri(project.project, workflow_name, task_id),
                    )
                ],
                doc_md=f"Updates asset `{asset_name(project.project, workflow_name, task_id)}` "
                "when the monitor found drift (a workflow scheduled on it retrains); skipped "
                "otherwise.",
            )
            tasks[task_id] >> signal
    for task_id, task in workflow.tasks.items():
        for upstream in task.after:
            tasks[upstream] >> heads[task_id]
    return dag


def sql_source(workflow: Workflow, task_id: str, task: ValidateTask) -> dict[str, Any]:
    """``query`` and ``conn_id`` of the extract an ``in_database`` validate task checks."""
    upstream = task.input or (task.after[0] if len(task.after) == 1 else None)
    source = workflow.tasks.get(upstream) if upstream else None
    if not isinstance(source, ExtractTask) or source.query is None:
        # checks.py reports this with its file and line; a hand-built project gets it here
        raise ValueError(
            f"task {task_id!r}: 'in_database' validates the query of its input extract task; "
            "set 'input' to an extract task with a 'query'"
        )
    return {"query": source.query, "conn_id": source.conn_id}


def placement_arguments(task: TaskBase) -> dict[str, Any]:
    """The operator arguments that place a task: executor, queue, pool and pod resources.

    ``resources`` always become a KubernetesExecutor ``pod_override`` (Local and Celery
    ignore ``executor_config``), so the DAG is the same whichever executor ends up running
    the task. The Kubernetes client is imported only for a task that has resources.
    """
    arguments: dict[str, Any] = {}
    for name in ("executor", "queue", "pool", "pool_slots"):
        value = getattr(task, name)
        if value is not None:
            arguments[name] = value
    if task.resources is not None:
        from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

        from mlwp.platform.kubernetes import task_pod_override

        manifest = task_pod_override(task.resources.cpu, task.resources.memory)
        arguments["executor_config"] = {
            "pod_override": PodGenerator.deserialize_model_dict(manifest)
        }
    return arguments


def build_dags(
    project: Project,
    *,
    project_dir: str | os.PathLike[str],
    source: str | None = None,
    only: Iterable[str] | None = None,
    grant_role: bool = True,
) -> list[DAG]:
    """Build the DAGs of every workflow of ``project`` (or only the workflows named)."""
    names = list(project.workflows) if only is None else [n for n in only if n in project.workflows]
    return [
        build_dag(project, name, project_dir=project_dir, source=source, grant_role=grant_role)
        for name in names
    ]


# --------------------------------------------------------------------------- the DAG folder


@dataclass
class LoadResult:
    """DAGs built from a folder of definitions, and the problems of the broken ones."""

    dags: dict[str, DAG] = field(default_factory=dict)
    problems: dict[Path, list[Problem]] = field(default_factory=dict)


def _definition_files(projects_dir: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(projects_dir), key=lambda entry: entry.name)
    except FileNotFoundError:
        return []
    files = []
    for entry in entries:
        if entry.is_dir() and not entry.name.startswith((".", "_")):
            candidate = Path(entry.path, DEFINITION_FILENAME)
            if candidate.is_file():
                files.append(candidate)
    return files


def platform_placement() -> Placement | None:
    """This Airflow's executors (``[core] executor``) and the platform's Celery queues.

    The executors come from Airflow's own configuration, which is what will run the tasks
    (the official chart sets it without any MLWP_* variable); an executor list mlwp does not
    know leaves the check to Airflow.
    """
    from airflow.configuration import conf

    from mlwp.platform.executors import parse_executors
    from mlwp.settings import get_settings

    setting = conf.get("core", "executor")
    try:
        executors = parse_executors(setting)
    except ValueError:
        return None
    return Placement(setting, executors, tuple(get_settings().celery_queues))


def _default_expectations_dir() -> Path:
    from mlwp.settings import get_settings

    return get_settings().expectations_folder


def load_projects(
    projects_dir: str | os.PathLike[str],
    *,
    dag_id: str | None = None,
    expectations_dir: Path | None = None,
    display_root: str | os.PathLike[str] | None = None,
    project_roles: frozenset[str] | None = None,
) -> LoadResult:
    """Validate and compile every ``<projects_dir>/<project>/workflow.yaml``.

    A broken definition is recorded in ``problems`` (keyed by its file) and never stops the
    others. When ``dag_id`` is given (a task run, see ``get_parsing_context``), only that
    DAG is built, from the folder named like its project when there is one.
    ``display_root`` makes file names in messages relative to it. ``project_roles`` (from
    :func:`existing_project_roles`) are the roles that exist: a project whose role is not
    among them gets DAGs without ``access_control`` until the roles sync creates it (None:
    every DAG names its role).
    """
    # Building thousands of small objects triggers many full garbage collections that scan all
    # of Airflow's objects; nothing built here is cyclic garbage, so collect once at the end.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_projects(
            Path(projects_dir), dag_id, expectations_dir, display_root, project_roles
        )
    finally:
        if gc_was_enabled:
            gc.enable()


def _load_projects(
    root: Path,
    dag_id: str | None,
    expectations_dir: Path | None,
    display_root: str | os.PathLike[str] | None,
    project_roles: frozenset[str] | None,
) -> LoadResult:
    expectations = expectations_dir if expectations_dir is not None else _default_expectations_dir()
    placement = platform_placement()
    files = _definition_files(root)
    wanted_project = wanted_workflow = None
    if dag_id is not None and "." in dag_id:
        wanted_project, _, wanted_workflow = dag_id.partition(".")
        direct = root / wanted_project / DEFINITION_FILENAME
        if direct in files:
            files = [direct]
    result = LoadResult()
    owners: dict[str, Path] = {}
    for path in files:
        display = os.path.relpath(path, display_root) if display_root is not None else str(path)
        project, problems = check_file(
            path, display=display, expectations_dir=expectations, placement=placement
        )
        if project is None:
            result.problems[path] = problems
            continue
        if project.project in owners:
            result.problems[path] = [
                Problem(
                    display,
                    0,
                    0,
                    ("project",),
                    f"project '{project.project}' is already defined in {owners[project.project]}",
                    "duplicate",
                )
            ]
            continue
        owners[project.project] = path
        if wanted_project is not None and project.project != wanted_project:
            continue
        only = [wanted_workflow] if wanted_workflow is not None else None
        # A task run (dag_id given) never syncs permissions, and DAG(access_control=...)
        # imports Airflow's deprecated airflow.security.permissions, a warning at the start
        # of every task: only the DAG processor's parse names the role.
        grant_role = dag_id is None and (project_roles is None or project.role in project_roles)
        if dag_id is None and not grant_role:
            log.info(
                "Role %r does not exist yet: the DAGs of %s are built without access_control "
                "until the roles sync creates it (`mlwp up` runs it when a project appears)",
                project.role,
                display,
            )
        try:
            for dag in build_dags(
                project, project_dir=path.parent, source=display, only=only, grant_role=grant_role
            ):
                result.dags[dag.dag_id] = dag
        except Exception as exc:  # an operator refusing its arguments: report, keep going
            log.exception("Cannot build the DAGs of %s", path)
            result.problems[path] = [
                Problem(
                    display, 0, 0, (), f"cannot build DAG: {type(exc).__name__}: {exc}", "compile"
                )
            ]
    return result


def report_import_errors(
    problems: dict[Path, list[Problem]], loader_file: str | os.PathLike[str]
) -> None:
    """Show each broken definition as an Airflow import error of its own file.

    Airflow's DAG importer (``airflow.dag_processing.importers``) records an import error per
    file for the module it is importing; this finds that import's result object up the stack
    and adds one error per definition file, keyed by the file's path relative to the bundle,
    so the UI lists ``projects/<project>/workflow.yaml`` with ``file:line:column: message``
    while the loader's other DAGs load normally. Outside a DAG import (a plain ``import``),
    each problem is logged and emitted as a warning instead.
    """
    if not problems:
        return
    result = _current_import_result()
    for path, file_problems in problems.items():
        message = str(DefinitionError(file_problems))
        if result is None:
            log.error("%s", message)
            warnings.warn_explicit(
                message, UserWarning, filename=str(path), lineno=file_problems[0].line or 1
            )
            continue
        from airflow.dag_processing.importers import DagImportError

        result.errors.append(
            DagImportError(
                file_path=_bundle_relative(path, loader_file, result.file_path),
                message=message,
                error_type="definition",
            )
        )


def _current_import_result() -> Any:
    try:
        from airflow.dag_processing.importers import DagImportResult
    except ImportError:
        return None
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("result")
        if isinstance(candidate, DagImportResult):
            return candidate
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _bundle_relative(path: Path, loader_file: str | os.PathLike[str], loader_key: str) -> str:
    """Express ``path`` the way Airflow keys the loader's errors (bundle-relative or absolute)."""
    loader = os.path.abspath(loader_file)
    if os.path.isabs(loader_key) or not loader.endswith(loader_key):
        return os.path.abspath(path)
    bundle_root = loader[: -len(loader_key)]
    return os.path.relpath(os.path.abspath(path), bundle_root)


def problems_text(problems: dict[Path, list[Problem]]) -> str:
    """Every problem, one per line (for logs and tests)."""
    return "\n".join(
        str(problem) for file_problems in problems.values() for problem in file_problems
    )


__all__ = [
    "LoadResult",
    "access_control",
    "build_dag",
    "build_dags",
    "doc_md",
    "existing_project_roles",
    "format_path",
    "load_projects",
    "problems_text",
    "report_import_errors",
]
