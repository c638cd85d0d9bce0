"""Load and validate definition files, reporting every problem with file:line:column.

The happy path is as cheap as ``yaml.load`` with libyaml plus one pydantic validation: the
YAML node tree (which carries the marks) is kept only until validation ends, and positions
are looked up in it only for the values that have problems.

Checks, all run on every file so that one run reports everything:

1. YAML syntax and duplicate keys (a safe loader only: no tags that build Python objects);
2. the schema (``mlwp.definitions.schema``): types, unknown keys with a "did you mean",
   missing required fields, unknown task types, schedules, durations, traffic;
3. the graph: unknown dependencies and inputs, and cycles naming their tasks;
4. references: dataset files relative to the project folder, ``expectations/<suite>.json``,
   ``module:function`` callables (their module is found without importing it), and asset
   schedules on datasets of the same project;
5. meaning (``mlwp.definitions.checks``): metric names against the objective, column names
   against a local source's header and each step's output, data warnings.
6. placement: a task's ``pool`` is ``default_pool`` or declared under ``pools``; given the
   platform's :class:`~mlwp.platform.executors.Placement`, its ``executor`` is one the
   platform runs and, on Celery, its ``queue`` is one the workers consume.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from mlwp.definitions.checks import check_project, check_valid_workflows
from mlwp.definitions.problems import DefinitionError, PathPart, Problem, did_you_mean
from mlwp.definitions.schema import (
    ASSET_NAME_PATTERN,
    CALLABLE_PATTERN,
    DEFAULT_POOL,
    NAME_PATTERN,
    STEP_OPS,
    TASK_ID_PATTERN,
    TASK_MODELS,
    TASK_TYPES,
    Project,
)
from mlwp.platform.executors import ExecutorKind, Placement

try:  # libyaml is ~10x faster; the pure-Python parser gives the same nodes and marks
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - wheels of PyYAML ship libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

DEFINITION_FILENAME = "workflow.yaml"

_PATTERN_HINTS = {
    NAME_PATTERN: "a name is lowercase letters, digits, '_' or '-', starting with a letter",
    TASK_ID_PATTERN: "a task id is letters, digits, '_' or '-', not starting with a digit",
    ASSET_NAME_PATTERN: "an asset name is '<project>.<workflow>.<task>'",
    CALLABLE_PATTERN: "a callable is 'package.module:function'",
}


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """A safe YAML loader that notices duplicate keys instead of keeping the last one."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[yaml.MappingNode, yaml.Node, yaml.Node]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                first = seen.setdefault(key_node.value, key_node)
                if first is not key_node:
                    self.duplicates.append((node, first, key_node))
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


@dataclass
class _Context:
    """What a check needs: the raw data, the node tree, and where to record problems."""

    file: str
    data: Any
    root: yaml.Node | None
    problems: list[Problem] = field(default_factory=list)

    def add(
        self,
        path: tuple[PathPart, ...],
        message: str,
        *,
        code: str = "invalid",
        at_key: bool = False,
        severity: str = "error",
    ) -> None:
        line, column = _position(self.root, path, at_key=at_key)
        self.problems.append(Problem(self.file, line, column, path, message, code, severity))


# --------------------------------------------------------------------------- positions


def _position(
    root: yaml.Node | None, path: tuple[PathPart, ...], *, at_key: bool
) -> tuple[int, int]:
    """Return the 1-based line and column of ``path`` (its deepest part present in the tree)."""
    if root is None:
        return 0, 0
    node: yaml.Node = root
    mark = root.start_mark
    for index, part in enumerate(path):
        last = index == len(path) - 1
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    if last and at_key:
                        return key_node.start_mark.line + 1, key_node.start_mark.column + 1
                    # A key's line is where a reader looks for a whole block's value.
                    mark = key_node.start_mark if not last else value_node.start_mark
                    child = value_node
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
            mark = child.start_mark
        if child is None:
            break
        node = child
    return mark.line + 1, mark.column + 1


def _node_path(root: yaml.Node, target: yaml.Node) -> tuple[PathPart, ...]:
    """Return the path of ``target`` (a mapping node) inside the tree, for duplicate keys."""

    def walk(node: yaml.Node, path: tuple[PathPart, ...]) -> tuple[PathPart, ...] | None:
        if node is target:
            return path
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                found = walk(value_node, (*path, str(key_node.value)))
                if found is not None:
                    return found
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                found = walk(item, (*path, index))
                if found is not None:
                    return found
        return None

    return walk(root, ()) or ()


# --------------------------------------------------------------------------- schema errors


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``None`` from an annotation."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if _is_union(annotation):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _union_member(annotation: Any, tag: PathPart) -> Any:
    """Return the member of a tagged union that pydantic names ``tag`` in error locations."""
    for member in typing.get_args(annotation):
        for meta in getattr(member, "__metadata__", ()):
            if getattr(meta, "tag", None) == tag:
                return member
        inner = _unwrap(member)
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            continue
        if inner.__name__ == tag or any(
            (info := inner.model_fields.get(key)) is not None and info.default == tag
            for key in ("type", "op")
        ):
            return inner
    return None


def _clean_location(
    loc: tuple[PathPart, ...],
) -> tuple[tuple[PathPart, ...], type[BaseModel] | None]:
    """Drop pydantic's union tags from ``loc``; also return the model holding the last key."""
    annotation: Any = Project
    path: list[PathPart] = []
    parent: type[BaseModel] | None = None
    parts = list(loc)
    while parts:
        annotation = _unwrap(annotation)
        if _is_union(annotation):
            annotation = _union_member(annotation, parts.pop(0))
            continue
        part = parts.pop(0)
        path.append(part)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            parent = annotation
            field_info = _field_by_key(annotation, str(part))
            annotation = field_info.annotation if field_info is not None else None
            if field_info is not None:
                annotation = _with_metadata(field_info.annotation, field_info.metadata)
        else:
            origin = typing.get_origin(annotation)
            args = typing.get_args(annotation)
            if origin is dict and len(args) == 2:
                annotation = args[1]
            elif origin is list and args:
                annotation = args[0]
            else:
                annotation = None
            parent = None
    return tuple(path), parent


def _field_by_key(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info
    return None


def _with_metadata(annotation: Any, metadata: list[Any]) -> Any:
    # pydantic moves a field's top-level Annotated metadata (our union discriminators) to
    # FieldInfo.metadata; put it back so tags can be matched.
    if metadata and _is_union(annotation):
        return typing.Annotated[(annotation, *metadata)]
    return annotation


def _expected_values(text: str) -> list[str]:
    """Turn pydantic's ``'a', 'b' or 'c'`` into ``['a', 'b', 'c']``."""
    return [
        part.strip().strip("'") for part in text.replace(" or ", ", ").split(",") if part.strip()
    ]


def _schema_problem(ctx: _Context, error: ErrorDetails) -> None:
    path, parent = _clean_location(tuple(error["loc"]))
    kind = error["type"]
    value = error.get("input")
    error_ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        key = path[-1] if path else ""
        known = (
            [info.alias or name for name, info in parent.model_fields.items()]
            if parent is not None
            else []
        )
        ctx.add(
            path,
            f"unknown key '{key}'{did_you_mean(str(key), known)}",
            code="unknown_key",
            at_key=True,
        )
    elif kind == "missing":
        ctx.add(path, f"missing required field '{path[-1]}'", code="missing_field")
    elif kind == "union_tag_invalid" and "op" in str(error_ctx.get("discriminator")):
        tag = str(error_ctx.get("tag"))
        ctx.add(
            (*path, "op"),
            f"unknown op '{tag}'{did_you_mean(tag, STEP_OPS)}; ops are {', '.join(STEP_OPS)}",
            code="unknown_op",
        )
    elif kind == "union_tag_not_found" and "op" in str(error_ctx.get("discriminator")):
        ctx.add(path, "missing required field 'op'", code="missing_field")
    elif kind == "union_tag_invalid":
        tag = str(error_ctx.get("tag"))
        ctx.add(
            (*path, "type"),
            f"unknown task type '{tag}'{did_you_mean(tag, TASK_TYPES)}; "
            f"task types are {', '.join(TASK_TYPES)}",
            code="unknown_type",
        )
    elif kind == "union_tag_not_found":
        ctx.add(path, "missing required field 'type'", code="missing_field")
    elif kind == "notifier_kind":
        keys = list(value) if isinstance(value, Mapping) else []
        hint = "".join(did_you_mean(str(key), ("slack", "slack_webhook", "email")) for key in keys)
        ctx.add(path, f"{error['msg']}{hint}")
    elif kind == "literal_error":
        expected = _expected_values(str(error_ctx.get("expected", "")))
        ctx.add(path, f"{error['msg']}, got {value!r}{did_you_mean(str(value), expected)}")
    elif kind == "string_pattern_mismatch":
        pattern = str(error_ctx.get("pattern", ""))
        ctx.add(path, f"{_PATTERN_HINTS.get(pattern, 'does not match ' + pattern)}, got {value!r}")
    elif kind in ("value_error", "assertion_error"):
        message = str(error_ctx.get("error", error["msg"]))
        ctx.add(path, message)
    elif isinstance(value, Mapping | list):
        ctx.add(path, error["msg"])
    else:
        ctx.add(path, f"{error['msg']}, got {value!r}")


# --------------------------------------------------------------------------- graph checks


def _mapping_items(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key), item


def _dependency_list(task: Mapping[str, Any]) -> list[tuple[PathPart | None, str]]:
    after = task.get("after")
    if isinstance(after, str):
        return [(None, after)]
    if isinstance(after, list):
        return [(index, str(dep)) for index, dep in enumerate(after) if isinstance(dep, str | int)]
    return []


def _check_graph(ctx: _Context) -> None:
    for workflow_name, workflow in _mapping_items(ctx.data.get("workflows")):
        if not isinstance(workflow, Mapping):
            continue
        tasks = dict(_mapping_items(workflow.get("tasks")))
        graph: dict[str, list[str]] = {}
        for task_id, task in tasks.items():
            if not isinstance(task, Mapping):
                continue
            base: tuple[PathPart, ...] = ("workflows", workflow_name, "tasks", task_id)
            graph[task_id] = []
            for index, dep in _dependency_list(task):
                path = (*base, "after") if index is None else (*base, "after", index)
                if dep not in tasks:
                    ctx.add(
                        path,
                        f"unknown task '{dep}'{did_you_mean(dep, tasks)}",
                        code="unknown_dependency",
                    )
                else:
                    graph[task_id].append(dep)
            source = task.get("input")
            if isinstance(source, str) and source not in tasks:
                ctx.add(
                    (*base, "input"),
                    f"unknown task '{source}'{did_you_mean(source, tasks)}",
                    code="unknown_dependency",
                )
        for cycle in _cycles(graph):
            ctx.add(
                ("workflows", workflow_name, "tasks", cycle[0], "after"),
                "dependency cycle: " + " -> ".join([*cycle, cycle[0]]),
                code="cycle",
            )


def _cycles(graph: Mapping[str, list[str]]) -> list[list[str]]:
    """Return one cycle per strongly connected component that has one (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, []))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, []):
                    found.append(_cycle_in(graph, set(component)))
    return found


def _cycle_in(graph: Mapping[str, list[str]], component: set[str]) -> list[str]:
    """Walk inside a strongly connected component until a task repeats; return that loop."""
    start = min(component)
    path = [start]
    seen = {start: 0}
    node = start
    while True:
        node = min(dep for dep in graph[node] if dep in component)
        if node in seen:
            return path[seen[node] :]
        seen[node] = len(path)
        path.append(node)


# --------------------------------------------------------------------------- references


def module_resolvable(name: str) -> bool:
    """Tell whether module ``name`` can be imported, without importing it or its packages."""
    if name in sys.modules:
        return True
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return False
    for depth in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return False
        spec = importlib.machinery.PathFinder.find_spec(
            ".".join(parts[: depth + 1]), list(spec.submodule_search_locations)
        )
    return spec is not None


def _check_references(ctx: _Context, project_dir: Path, expectations_dir: Path | None) -> None:
    data = ctx.data
    project_name = data.get("project")
    workflows = dict(_mapping_items(data.get("workflows")))
    suites: list[str] | None = None
    for workflow_name, workflow in workflows.items():
        if not isinstance(workflow, Mapping):
            continue
        for task_id, task in _mapping_items(workflow.get("tasks")):
            if not isinstance(task, Mapping):
                continue
            base: tuple[PathPart, ...] = ("workflows", workflow_name, "tasks", task_id)
            kind = task.get("type")
            source = task.get("source")
            if kind == "extract" and isinstance(source, str):
                local = _local_path(source, project_dir)
                if local is not None and not local.exists():
                    ctx.add(
                        (*base, "source"), f"dataset file not found: {local}", code="missing_file"
                    )
            suite = task.get("suite")
            if (
                kind == "validate"
                and isinstance(suite, str)
                and expectations_dir is not None
                and not (expectations_dir / f"{suite}.json").is_file()
            ):
                if suites is None:
                    suites = _suite_names(expectations_dir)
                ctx.add(
                    (*base, "suite"),
                    f"suite '{suite}' not found: no {expectations_dir / (suite + '.json')}"
                    f"{did_you_mean(suite, suites)}",
                    code="missing_file",
                )
            target = task.get("callable")
            if kind == "python" and isinstance(target, str) and ":" in target:
                module = target.split(":", 1)[0]
                if not module_resolvable(module):
                    ctx.add(
                        (*base, "callable"),
                        f"module '{module}' of callable '{target}' cannot be found on sys.path",
                        code="missing_callable",
                    )
        schedule = workflow.get("schedule")
        if isinstance(schedule, Mapping):
            names = schedule.get("assets")
            names = [names] if isinstance(names, str) else names
            for index, name in enumerate(names if isinstance(names, list) else []):
                problem = _asset_problem(str(name), project_name, workflows)
                if problem:
                    ctx.add(("workflows", workflow_name, "schedule", "assets", index), problem)


def _local_path(source: str, project_dir: Path) -> Path | None:
    if source.startswith("file://"):
        return Path(source.removeprefix("file://"))
    if "://" in source:
        return None  # s3:// and friends are checked when the task runs
    return project_dir / source


def _suite_names(expectations_dir: Path) -> list[str]:
    try:
        return [
            entry.name[:-5]
            for entry in os.scandir(expectations_dir)
            if entry.name.endswith(".json")
        ]
    except OSError:
        return []


def _asset_problem(name: str, project: Any, workflows: Mapping[str, Any]) -> str | None:
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != project:
        return None  # another project's asset: it is known only when that project loads
    workflow = workflows.get(parts[1])
    if not isinstance(workflow, Mapping):
        return f"unknown workflow '{parts[1]}' in asset '{name}'{did_you_mean(parts[1], workflows)}"
    tasks = dict(_mapping_items(workflow.get("tasks")))
    task = tasks.get(parts[2])
    if not isinstance(task, Mapping):
        return f"unknown task '{parts[2]}' in asset '{name}'{did_you_mean(parts[2], tasks)}"
    model = TASK_MODELS.get(str(task.get("type")))
    if task.get("type") == "monitor":
        if task.get("retrain_on_drift") is True:
            return None  # its drift signal (operators/monitor.py)
        return (
            f"task '{parts[2]}' (monitor) updates asset '{name}' only with retrain_on_drift: true"
        )
    if model is not None and not model.PRODUCES_DATASET:
        return f"task '{parts[2]}' ({task.get('type')}) produces no dataset, so no asset '{name}'"
    return None


def _tasks(data: Mapping[str, Any]) -> Iterator[tuple[tuple[PathPart, ...], Mapping[str, Any]]]:
    """Every task mapping of a definition with its path (``workflows.<w>.tasks.<t>``)."""
    for workflow_name, workflow in _mapping_items(data.get("workflows")):
        if not isinstance(workflow, Mapping):
            continue
        for task_id, task in _mapping_items(workflow.get("tasks")):
            if isinstance(task, Mapping):
                yield ("workflows", workflow_name, "tasks", task_id), task


def _check_placement(ctx: _Context, placement: Placement | None) -> None:
    data = ctx.data
    pools = dict(_mapping_items(data.get("pools")))
    if DEFAULT_POOL in pools:
        ctx.add(
            ("pools", DEFAULT_POOL),
            f"'{DEFAULT_POOL}' is Airflow's own pool (size it in Airflow); declare other pools",
            code="reserved_pool",
            at_key=True,
        )
    known_pools = [DEFAULT_POOL, *pools]
    for base, task in _tasks(data):
        pool = task.get("pool")
        if isinstance(pool, str) and pool not in known_pools:
            ctx.add(
                (*base, "pool"),
                f"unknown pool '{pool}': declare it under the project's `pools` (with its "
                f"slots) or use '{DEFAULT_POOL}'{did_you_mean(pool, known_pools)}",
                code="unknown_pool",
            )
        if placement is None:
            continue
        executor = task.get("executor")
        chosen = placement.executors.default
        if isinstance(executor, str):
            found = placement.executors.find(executor)
            if found is None:
                names = placement.executors.task_names()
                shown = [name for name in names if "." not in name]  # module paths are noise
                ctx.add(
                    (*base, "executor"),
                    f"executor '{executor}' is not configured on this platform "
                    f"(MLWP_EXECUTOR={placement.executor_setting}); a task may name "
                    f"{', '.join(shown)}{did_you_mean(executor, names)}",
                    code="unknown_executor",
                )
                continue
            chosen = found
        queue = task.get("queue")
        if (
            isinstance(queue, str)
            and chosen.kind is ExecutorKind.CELERY
            and queue not in placement.celery_queues
        ):
            ctx.add(
                (*base, "queue"),
                f"no Celery worker consumes queue '{queue}' (MLWP_CELERY_QUEUES="
                f"{','.join(placement.celery_queues)}), so the task would wait forever"
                f"{did_you_mean(queue, placement.celery_queues)}",
                code="unknown_queue",
            )


# --------------------------------------------------------------------------- entry points


def parse_definition(
    text: str,
    *,
    file: str,
    project_dir: Path | None = None,
    expectations_dir: Path | None = None,
    check_references: bool = True,
    inspect_data: bool = False,
    placement: Placement | None = None,
) -> tuple[Project | None, list[Problem]]:
    """Validate definition ``text``; return the project (None when invalid) and every problem.

    ``file`` is the name used in messages. References are checked only when
    ``check_references`` is true and ``project_dir`` is given; suites only when
    ``expectations_dir`` is given. ``inspect_data`` also reads local datasets in full
    (``mlwp.definitions.checks``: Parquet schemas, the balance of a binary target).
    Warnings (``severity="warning"``) leave the project valid: it is returned with them.
    Executors and queues are checked only when ``placement`` is given.
    """
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        return None, [_yaml_problem(file, exc)]
    except yaml.YAMLError as exc:
        return None, [Problem(file, 0, 0, (), f"invalid YAML: {exc}", "yaml")]
    finally:
        loader.dispose()

    ctx = _Context(file=file, data=data, root=root)
    if not isinstance(data, Mapping):
        ctx.add(
            (),
            "a definition is a mapping with 'project', 'owner' and 'workflows', "
            f"got {type(data).__name__}",
        )
        return None, ctx.problems
    for mapping_node, first, duplicate in loader.duplicates:
        path = _node_path(root, mapping_node) if root is not None else ()
        what = (
            "task id" if len(path) == 3 and path[0] == "workflows" and path[2] == "tasks" else "key"
        )
        ctx.problems.append(
            Problem(
                file,
                duplicate.start_mark.line + 1,
                duplicate.start_mark.column + 1,
                (*path, str(duplicate.value)),
                f"duplicate {what} '{duplicate.value}' "
                f"(first defined at line {first.start_mark.line + 1})",
                "duplicate",
            )
        )

    project: Project | None = None
    try:
        project = Project.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            _schema_problem(ctx, error)
    _check_graph(ctx)
    _check_placement(ctx, placement)
    if check_references and project_dir is not None:
        _check_references(ctx, project_dir, expectations_dir)
    if project is not None:
        check_project(
            project,
            project_dir if check_references else None,
            ctx.add,
            inspect_data=inspect_data,
        )
    elif isinstance(data.get("workflows"), Mapping):
        check_valid_workflows(
            data["workflows"],
            project_dir if check_references else None,
            ctx.add,
            inspect_data=inspect_data,
        )
    ctx.problems.sort(key=lambda problem: (problem.line, problem.column))
    if any(problem.is_error for problem in ctx.problems):
        return None, ctx.problems
    return project, ctx.problems


_OPENERS = {
    "flow sequence": "'[' (flow sequence)",
    "flow mapping": "'{' (flow mapping)",
    "quoted scalar": "quote (quoted string)",
}


def _yaml_problem(file: str, exc: yaml.MarkedYAMLError) -> Problem:
    """A YAML syntax error where it was found, naming where the unclosed part was opened.

    PyYAML notices an unclosed ``[`` or ``{`` (or quote) only where the document goes on
    without closing it, often at the end of the file; its ``context_mark`` says where the
    bracket was opened, which is where the mistake is.
    """
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
    problem = exc.problem or "syntax error"
    opened = exc.context_mark
    if (
        opened is not None
        and exc.context
        and (mark is None or (opened.line, opened.column) != (mark.line, mark.column))
    ):
        what = exc.context.removeprefix("while ")
        for prefix in ("parsing ", "scanning ", "a ", "an "):
            what = what.removeprefix(prefix)
        what = _OPENERS.get(what, what)
        message = (
            f"invalid YAML: the {what} opened here is not closed ({problem} at line {line}, "
            f"column {column})"
        )
        line, column = opened.line + 1, opened.column + 1
    else:
        message = f"invalid YAML: {' '.join(p for p in (exc.context, problem) if p)}"
    return Problem(file, line, column, (), message, "yaml")


def check_file(
    path: str | os.PathLike[str],
    *,
    display: str | None = None,
    expectations_dir: Path | None = None,
    check_references: bool = True,
    inspect_data: bool = False,
    placement: Placement | None = None,
) -> tuple[Project | None, list[Problem]]:
    """Validate one definition file; references are resolved against its folder."""
    file_path = Path(path)
    name = display or str(path)
    try:
        text = file_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(name, 0, 0, (), f"cannot read definition: {exc}", "unreadable")]
    return parse_definition(
        text,
        file=name,
        project_dir=file_path.parent,
        expectations_dir=expectations_dir,
        check_references=check_references,
        inspect_data=inspect_data,
        placement=placement,
    )


def load_project(
    path: str | os.PathLike[str],
    *,
    expectations_dir: Path | None = None,
    check_references: bool = True,
) -> Project:
    """Load and validate one definition file; raise ``DefinitionError`` listing every problem."""
    project, problems = check_file(
        path, expectations_dir=expectations_dir, check_references=check_references
    )
    if project is None:
        raise DefinitionError(problems)
    return project


def find_definitions(paths: list[Path]) -> list[Path]:
    """Expand folders into the definition files inside them (``*/workflow.yaml`` and ``*.yaml``)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            direct = path / DEFINITION_FILENAME
            if direct.is_file():
                found.append(direct)
                continue
            nested = sorted(path.glob(f"*/{DEFINITION_FILENAME}"))
            found.extend(nested or sorted(path.glob("*.y*ml")))
        else:
            found.append(path)
    return found
