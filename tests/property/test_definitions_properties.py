"""Hypothesis: valid definitions compile to DAGs whose edges are the declared dependencies, and
a definition with one injected fault is rejected with a message naming that fault."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlwp.definitions import parse_definition

pytestmark = [pytest.mark.property, pytest.mark.slow]

# Task types whose fields need no file on disk, with their minimal fields in flow style.
MINIMAL_FIELDS = {
    "approve": "",
    "evaluate": "",
    "train": "target: y",
    "register": "model: m",
    "deploy": "model: m, traffic: {champion: 80, challenger: 20}",
    "batch_predict": "model: m",
    "python": 'callable: "json:dumps"',
    "extract": "source: s3://bucket/x.csv",
    "transform": "steps: [{op: drop, columns: [a]}]",
}
REQUIRED = {"train": "target", "register": "model", "deploy": "model", "python": "callable"}

task_ids = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)


@dataclass
class Definition:
    """A generated definition: tasks in order, each with its type and dependencies."""

    tasks: list[tuple[str, str, list[str]]] = field(default_factory=list)
    duplicate: str | None = None

    def render(self) -> str:
        lines = ["project: prop", "owner: alice", "workflows:", "  flow:", "    tasks:"]
        rows = list(self.tasks)
        if self.duplicate is not None:
            rows.append(next(row for row in self.tasks if row[0] == self.duplicate))
        for task_id, kind, after in rows:
            fields = MINIMAL_FIELDS.get(kind, "")
            parts = [f"type: {kind}"]
            if fields:
                parts.append(fields)
            if after:
                parts.append(f"after: [{', '.join(after)}]")
            lines.append(f"      {task_id}: {{{', '.join(parts)}}}")
        return "\n".join(lines) + "\n"


@st.composite
def definitions(draw: st.DrawFn) -> Definition:
    ids = draw(st.lists(task_ids, min_size=1, max_size=8, unique=True))
    definition = Definition()
    for index, task_id in enumerate(ids):
        kind = draw(st.sampled_from(sorted(MINIMAL_FIELDS)))
        after = draw(st.lists(st.sampled_from(ids[:index]), unique=True)) if index else []
        definition.tasks.append((task_id, kind, after))
    return definition


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(definitions())
def test_valid_definitions_compile_with_declared_edges(definition: Definition) -> None:
    from operators.compiler import build_dag

    project, problems = parse_definition(definition.render(), file="prop.yaml")
    assert problems == []
    assert project is not None
    dag = build_dag(project, "flow", project_dir=Path("."))
    assert dag.dag_id == "prop.flow"
    assert [t.task_id for t in dag.tasks] == [task_id for task_id, _, _ in definition.tasks]
    declared = {(dep, task_id) for task_id, _, after in definition.tasks for dep in after}
    assert {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids} == declared


FAULTS = ("unknown_dependency", "cycle", "duplicate_id", "unknown_type", "missing_field")


@settings(max_examples=100, deadline=None)
@given(definitions(), st.sampled_from(FAULTS), st.data())
def test_one_injected_fault_is_rejected_and_named(
    definition: Definition, fault: str, data: st.DataObject
) -> None:
    tasks = definition.tasks
    index = data.draw(st.integers(0, len(tasks) - 1))
    task_id, kind, after = tasks[index]
    if fault == "unknown_dependency":
        missing = data.draw(task_ids.filter(lambda name: name not in {t[0] for t in tasks}))
        tasks[index] = (task_id, kind, [*after, missing])
        expected = [f"unknown task '{missing}'"]
    elif fault == "cycle":
        # depend on a task downstream of (or equal to) this one: a loop through task_id
        later = data.draw(st.integers(index, len(tasks) - 1))
        target = tasks[later][0]
        if later != index:
            # make sure `target` depends on `task_id` so the loop closes
            t_id, t_kind, t_after = tasks[later]
            if task_id not in t_after:
                tasks[later] = (t_id, t_kind, [*t_after, task_id])
        tasks[index] = (task_id, kind, [*after, target])
        expected = ["dependency cycle:", task_id, target]
    elif fault == "duplicate_id":
        definition.duplicate = task_id
        expected = [f"duplicate task id '{task_id}'"]
    elif fault == "unknown_type":
        bogus = data.draw(st.sampled_from(["trian", "deploy_model", "sql", "Extract"]))
        tasks[index] = (task_id, bogus, after)
        expected = [f"unknown task type '{bogus}'"]
    else:
        kind = data.draw(st.sampled_from(sorted(REQUIRED)))
        tasks[index] = (task_id, kind, after)
        text = definition.render().replace(
            f"{task_id}: {{type: {kind}, {MINIMAL_FIELDS[kind]}",
            f"{task_id}: {{type: {kind}",
        )
        project, problems = parse_definition(text, file="prop.yaml")
        assert project is None
        messages = [str(p) for p in problems]
        assert any(
            f"tasks.{task_id}.{REQUIRED[kind]}: missing required field '{REQUIRED[kind]}'" in m
            for m in messages
        ), messages
        return

    project, problems = parse_definition(definition.render(), file="prop.yaml")
    assert project is None
    messages = [str(p) for p in problems]
    assert any(all(part in m for part in expected) for m in messages), (expected, messages)
    assert all(m.startswith("prop.yaml:") and m.split(":")[1].isdigit() for m in messages)
