"""Checks of a valid definition's meaning: metrics, columns and data, before anything runs.

The schema says what each field may hold; these checks say whether the fields agree with
each other and with the data they name, so that a mistake fails ``mlwp validate`` (and shows
in the Airflow UI) instead of a task, or worse, instead of nothing (a gate on a metric that
is never computed skips registration on every run):

- every metric named (evaluate ``metrics``, gate ``metric``, tuning ``metric``) is one the
  objective of the train task upstream computes (``mlwp.training.metric_names``);
- column names are followed from the header of a local CSV (or, with ``inspect_data``,
  Parquet) source through the transform steps, so a step, a ``stratify``, a derive or filter
  expression and the train ``target`` may only name columns that exist at that point. After
  a ``python`` step the columns are unknown and checking stops; after ``onehot`` the
  generated ``<column>=<value>`` names are accepted;
- a ``backend: sagemaker`` task needs an ``s3://`` project ``storage`` when one is given;
- with ``inspect_data`` (``mlwp validate``), a binary target read from a local source is
  warned about when its rarer class is under :data:`IMBALANCE_SHARE` of the rows.

Only cheap reads happen without ``inspect_data``: the first line of a CSV file. The DAG
processor runs these checks at every parse.
"""

from __future__ import annotations

import ast
import csv
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mlwp.definitions.problems import PathPart, did_you_mean, format_path
from mlwp.definitions.schema import (
    BatchPredictTask,
    DeriveStep,
    DropStep,
    ExtractTask,
    FilterStep,
    MonitorTask,
    OnehotStep,
    Project,
    PythonStep,
    RegisterTask,
    RenameStep,
    SelectStep,
    SplitStep,
    TrainTask,
    TransformTask,
    ValidateTask,
    Workflow,
    declared_entity_fields,
)
from mlwp.training.metric_names import METRICS_BY_OBJECTIVE

# A binary target whose rarer class is below this share of rows gets a warning.
IMBALANCE_SHARE = 0.15

AddProblem = Callable[..., None]


def check_project(
    project: Project, project_dir: Path | None, add: AddProblem, *, inspect_data: bool = False
) -> None:
    """Run every check on ``project``; ``add(path, message, code=..., severity=...)``."""
    for name, workflow in project.workflows.items():
        _WorkflowChecks(name, workflow, project_dir, add, inspect_data).run()
    _check_monitored_models(project, add)
    _check_entity_fields(project, add)
    _check_sagemaker_storage(project, add)


def _check_entity_fields(project: Project, add: AddProblem) -> None:
    """Serving captures one entity-key field per model (``mlwp.definitions.entity_keys``):
    two labels tasks of one model may not key their outcomes by different fields."""
    first: dict[str, tuple[str, str]] = {}
    for declared in declared_entity_fields(project):
        where = format_path(declared.path)
        field, where = first.setdefault(declared.model, (declared.field, where))
        if field != declared.field:
            add(
                declared.path,
                f"model '{declared.model}' is already labelled by field '{field}' ({where}); "
                "serving captures one entity-key field per model",
                code="entity_field_conflict",
            )


def _check_sagemaker_storage(project: Project, add: AddProblem) -> None:
    """A SageMaker backend reads and writes S3: refuse a project storage root that is not.

    Without ``storage`` the platform's root applies, known only when the task runs (the
    task fails then, naming MLWP_STORAGE_ROOT).
    """
    if project.storage is None or project.storage.startswith("s3://"):
        return
    for name, workflow in project.workflows.items():
        for task_id, task in workflow.tasks.items():
            if isinstance(task, TrainTask | BatchPredictTask) and task.backend == "sagemaker":
                add(
                    ("workflows", name, "tasks", task_id, "backend"),
                    f"backend sagemaker reads its input from S3 and writes there, but the "
                    f"project's storage is {project.storage!r}: set 'storage' to an s3:// URI",
                    code="sagemaker_needs_s3",
                )


def _check_monitored_models(project: Project, add: AddProblem) -> None:
    """Warn when a monitor task names a model no workflow of the project registers (a typo
    monitors nothing; a model registered by another project is fine, hence a warning)."""
    registered = {
        task.model
        for workflow in project.workflows.values()
        for task in workflow.tasks.values()
        if isinstance(task, RegisterTask)
    }
    if not registered:
        return
    for name, workflow in project.workflows.items():
        for task_id, task in workflow.tasks.items():
            if isinstance(task, MonitorTask) and task.model not in registered:
                add(
                    ("workflows", name, "tasks", task_id, "model"),
                    f"no workflow of this project registers model '{task.model}'"
                    f"{did_you_mean(task.model, sorted(registered))}; it is monitored only if "
                    "another project registers it",
                    code="unknown_model",
                    severity="warning",
                )


def check_valid_workflows(
    workflows: Mapping[str, Any],
    project_dir: Path | None,
    add: AddProblem,
    *,
    inspect_data: bool = False,
) -> None:
    """The checks of :func:`check_project` for each workflow that is valid on its own.

    For a definition with a schema error elsewhere (the project's fields, another
    workflow): those errors do not hide the problems of the workflows without one, so a
    user sees them all in one run.
    """
    from pydantic import ValidationError

    for name, raw in workflows.items():
        workflow: Workflow | None
        try:
            workflow = Workflow.model_validate(raw)
        except ValidationError:
            workflow = _valid_tasks(raw)
        if workflow is not None:
            _WorkflowChecks(str(name), workflow, project_dir, add, inspect_data).run()


def _valid_tasks(raw: Any) -> Workflow | None:
    """The workflow ``raw`` with only its tasks that are valid on their own (None if its
    other fields are broken): the checks then read each valid task as it stands, and a task
    that needs a broken one (its columns, its objective) is checked as far as it can be."""
    from pydantic import ValidationError

    if not isinstance(raw, Mapping) or not isinstance(raw.get("tasks"), Mapping):
        return None
    valid = {}
    for task_id, task in raw["tasks"].items():
        try:
            Workflow.model_validate({"tasks": {task_id: task}})
        except ValidationError:
            continue
        valid[task_id] = task
    try:
        return Workflow.model_validate({**raw, "tasks": valid})
    except ValidationError:
        return None


class _WorkflowChecks:
    def __init__(
        self,
        name: str,
        workflow: Workflow,
        project_dir: Path | None,
        add: AddProblem,
        inspect_data: bool,
    ) -> None:
        self.name = name
        self.tasks = workflow.tasks
        self.project_dir = project_dir
        self.add = add
        self.inspect_data = inspect_data
        self._columns: dict[str, _Columns | None] = {}

    def path(self, task_id: str, *rest: PathPart) -> tuple[PathPart, ...]:
        return ("workflows", self.name, "tasks", task_id, *rest)

    def run(self) -> None:
        for task_id, task in self.tasks.items():
            if task.type == "evaluate":
                objective = self._objective(task_id)
                for index, metric in enumerate(task.metrics):
                    self._metric(objective, metric, self.path(task_id, "metrics", index))
            elif task.type == "register" and task.gate is not None:
                self._metric(
                    self._objective(task_id), task.gate.metric, self.path(task_id, "gate", "metric")
                )
            elif isinstance(task, TrainTask):
                if task.tuning is not None:
                    self._metric(
                        task.objective, task.tuning.metric, self.path(task_id, "tuning", "metric")
                    )
                self._train_columns(task_id, task)
            if isinstance(task, TransformTask):
                self.columns_after(task_id)
            if isinstance(task, ValidateTask) and task.in_database:
                self._sql_source(task_id, task)
            if task.type == "rollout" and getattr(task, "approve", None) is not None:
                # The compiler adds <id>_steps and <id>_approval beside <id>.
                for extra in (f"{task_id}_steps", f"{task_id}_approval"):
                    if extra in self.tasks:
                        self.add(
                            self.path(task_id, "approve"),
                            f"a rollout with approve adds the task {extra!r}, which this "
                            "workflow already has; rename one of them",
                            code="task_id_clash",
                        )

    def _sql_source(self, task_id: str, task: ValidateTask) -> None:
        upstream = self._upstream(task_id)
        source = self.tasks.get(upstream[0]) if len(upstream) == 1 else None
        if not isinstance(source, ExtractTask) or source.query is None:
            self.add(
                self.path(task_id, "in_database"),
                "'in_database' validates the query of its input extract task inside "
                "PostgreSQL; set 'input' to an extract task with a 'query' "
                f"(upstream: {', '.join(upstream) or 'none'})",
                code="in_database_needs_query",
            )

    # ----------------------------------------------------------------- metrics

    def _upstream(self, task_id: str) -> list[str]:
        task = self.tasks[task_id]
        source = getattr(task, "input", None)
        return [source] if isinstance(source, str) else list(task.after)

    def _objective(self, task_id: str) -> str | None:
        """The objective of the nearest train task upstream (None: none, or ambiguous)."""
        seen: set[str] = set()
        frontier = self._upstream(task_id)
        while frontier:
            found = {
                task.objective
                for tid in frontier
                if isinstance(task := self.tasks.get(tid), TrainTask)
            }
            if found:
                return found.pop() if len(found) == 1 else None
            seen.update(frontier)
            frontier = [up for tid in frontier if tid in self.tasks for up in self._upstream(tid)]
            frontier = [tid for tid in frontier if tid not in seen]
        return None

    def _metric(self, objective: str | None, metric: str, path: tuple[PathPart, ...]) -> None:
        if objective is None:
            return
        known = METRICS_BY_OBJECTIVE[objective]
        if metric not in known:
            self.add(
                path,
                f"metric '{metric}' is not computed for a {objective} model"
                f"{did_you_mean(metric, known)}; {objective} metrics are {', '.join(known)}",
                code="unknown_metric",
            )

    # ----------------------------------------------------------------- columns

    def columns_after(self, task_id: str) -> _Columns | None:
        """The columns of the dataset ``task_id`` hands on (None: not known here)."""
        if task_id not in self._columns:
            self._columns[task_id] = None  # a cycle (reported elsewhere) ends here
            self._columns[task_id] = self._compute_columns(task_id)
        return self._columns[task_id]

    def _compute_columns(self, task_id: str) -> _Columns | None:
        task = self.tasks.get(task_id)
        if task is None:
            return None
        if isinstance(task, ExtractTask):
            return self._source_columns(task)
        upstream = self._upstream(task_id)
        if len(upstream) != 1:
            return None
        before = self.columns_after(upstream[0])
        if before is None or not isinstance(task, TransformTask):
            return before if task.type == "validate" else None
        return self._through_steps(task_id, task, before)

    def _source_columns(self, task: ExtractTask) -> _Columns | None:
        local = _local_file(task.source, self.project_dir)
        if local is None or not local.is_file():
            return None
        fmt = task.resolved_format
        if fmt == "csv":
            names = _csv_header(local, task.read_options)
        elif self.inspect_data:
            names = _parquet_columns(local)
        else:
            names = None
        return None if names is None else _Columns(names, local, fmt)

    def _through_steps(
        self, task_id: str, task: TransformTask, columns: _Columns
    ) -> _Columns | None:
        current = columns.copy()
        for index, step in enumerate(task.steps):
            path = self.path(task_id, "steps", index)
            if isinstance(step, PythonStep):
                return None  # the callable decides the columns
            if isinstance(step, DeriveStep | FilterStep):
                names = _expression_columns(step.expression)
                if isinstance(names, str):
                    self.add((*path, "expression"), names, code="invalid_expression")
                    names = []
                for name in names:
                    current.require(name, (*path, "expression"), self.add, "column")
                if isinstance(step, DeriveStep):
                    current.names.append(step.column)
                continue
            if isinstance(step, SplitStep):
                if step.stratify is not None:
                    current.require(step.stratify, (*path, "stratify"), self.add, "stratify")
                continue
            named = list(step.columns)  # type: ignore[union-attr]
            for position, name in enumerate(named):
                where = (*path, "columns", name if isinstance(step.columns, dict) else position)  # type: ignore[union-attr]
                current.require(name, where, self.add, "column")
            if isinstance(step, SelectStep):
                current.names = [n for n in named if n in current.names]
            elif isinstance(step, DropStep):
                current.names = [n for n in current.names if n not in named]
            elif isinstance(step, RenameStep):
                current.names = [step.columns.get(n, n) for n in current.names]
            elif isinstance(step, OnehotStep):
                current.names = [n for n in current.names if n not in named]
                current.onehot_prefixes.update(f"{n}=" for n in named)
        return current

    def _train_columns(self, task_id: str, task: TrainTask) -> None:
        upstream = self._upstream(task_id)
        if len(upstream) != 1:
            return
        columns = self.columns_after(upstream[0])
        if columns is None:
            return
        if not columns.require(task.target, self.path(task_id, "target"), self.add, "target"):
            return
        if self.inspect_data and task.objective == "binary" and columns.origin is not None:
            self._balance(task_id, task, columns)

    def _balance(self, task_id: str, task: TrainTask, columns: _Columns) -> None:
        file, fmt = columns.origin  # type: ignore[misc]
        counts = _value_counts(file, fmt, task.target)
        if counts is None or len(counts) != 2:
            return
        total = sum(counts.values())
        rare, rare_count = min(counts.items(), key=lambda item: item[1])
        share = rare_count / total
        if share >= IMBALANCE_SHARE:
            return
        common_count = total - rare_count
        self.add(
            self.path(task_id, "target"),
            f"target '{task.target}' is imbalanced: class {rare!r} is {share:.1%} of "
            f"{total} rows in {file.name}; at the default threshold 0.5 the model may never "
            f"predict it (F1 = 0). Consider 'threshold' (e.g. {max(share * 2, 0.05):.2f}), "
            f"params.scale_pos_weight ({common_count / max(rare_count, 1):.1f}) if it is the "
            "positive class, and a gate on roc_auc",
            code="imbalanced_target",
            severity="warning",
        )


class _Columns:
    """Column names at one point of a workflow, and the file they were read from."""

    def __init__(self, names: Iterable[str], file: Path | None, fmt: str | None) -> None:
        self.names = list(names)
        self.origin = (file, fmt) if file is not None else None
        self.onehot_prefixes: set[str] = set()

    def copy(self) -> _Columns:
        other = _Columns(self.names, None, None)
        other.origin = self.origin
        other.onehot_prefixes = set(self.onehot_prefixes)
        return other

    def require(self, name: str, path: tuple[PathPart, ...], add: AddProblem, what: str) -> bool:
        if name in self.names or any(name.startswith(p) for p in self.onehot_prefixes):
            return True
        source = f" (read from {self.origin[0].name})" if self.origin is not None else ""
        add(
            path,
            f"{what} '{name}' does not exist at this point{did_you_mean(name, self.names)}; "
            f"the columns here are {', '.join(self.names)}{source}",
            code="unknown_column",
        )
        return False


def _local_file(source: str | None, project_dir: Path | None) -> Path | None:
    if source is None:
        return None
    if source.startswith("file://"):
        return Path(source.removeprefix("file://"))
    if "://" in source or project_dir is None:
        return None
    return project_dir / source


def _csv_header(path: Path, read_options: dict[str, object]) -> list[str] | None:
    # Only the default dialect is read here; other read options make the header unknowable.
    if set(read_options) - {"encoding"}:
        return None
    encoding = str(read_options.get("encoding", "utf-8"))
    try:
        with path.open(newline="", encoding=encoding) as handle:
            header = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return [name.strip() for name in header] if header else None


def _parquet_columns(path: Path) -> list[str] | None:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except (OSError, ValueError):
        return None


def _value_counts(path: Path, fmt: str | None, column: str) -> Counter[str] | None:
    """Count the values of ``column`` in a local file (missing values left out)."""
    counts: Counter[str] = Counter()
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            values = pq.read_table(path, columns=[column]).column(0).to_pylist()
            counts.update(str(v) for v in values if v is not None)
            return counts
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                value = (row.get(column) or "").strip()
                if value:
                    counts[value] += 1
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, ValueError):
        return None
    return counts


def _expression_columns(expression: str) -> list[str] | str:
    """Column names an expression reads (function names excluded), or why it does not parse."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        return f"invalid expression {expression!r}: {exc.msg}"
    functions = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and id(node) not in functions and node.id not in names:
            names.append(node.id)
    return names
