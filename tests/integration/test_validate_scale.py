"""Validation at scale through real Airflow: mapped per-partition tasks and their combine.

A definition with a streamed extract (partitions of 1,000 rows) and ``validate`` with
``map_partitions: true`` is compiled and run with ``dag.test()``: one mapped task per
partition, then one verdict; bad data in one partition halts the run at the validate task,
naming the partition and the expectation, and nothing downstream runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from validation_runs import run_workflow, validation_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEFINITION = """
project: demo
owner: alice
workflows:
  check:
    tasks:
      extract: {type: extract, source: data/rows.csv, rows_per_partition: 1000}
      validate: {type: validate, after: [extract], suite: rows, map_partitions: true}
      after_validate:
        type: python
        after: [validate]
        callable: "json:dumps"
        kwargs: {obj: ok}
"""
SUITE = {
    "name": "rows",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "id"}},
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "plan", "value_set": ["basic", "pro"]},
        },
        {"type": "expect_table_row_count_to_equal", "kwargs": {"value": 4000}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "spend", "min_value": 0}},
    ],
}


def _run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dag_runner: Any, bad_row: int | None
) -> tuple[Any, dict[str, list[str]]]:
    data = tmp_path / "demo" / "data"
    data.mkdir(parents=True)
    lines = ["id,plan,spend"]
    for index in range(4000):
        plan = "enterprise" if index == bad_row else ("basic", "pro")[index % 2]
        lines.append(f"{index},{plan},{index % 97}.5")
    (data / "rows.csv").write_text("\n".join(lines) + "\n")

    def mapped(dag: Any) -> None:
        assert {task.task_id for task in dag.tasks} == {
            "extract",
            "validate_plan",
            "validate_partition",
            "validate",
            "after_validate",
        }

    return run_workflow(
        tmp_path,
        DEFINITION,
        SUITE,
        monkeypatch=monkeypatch,
        dag_runner=dag_runner,
        check_dag=mapped,
    )


def test_mapped_validation_passes_good_partitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dag_runner: Any
) -> None:
    run, states = _run(tmp_path, monkeypatch, dag_runner, bad_row=None)
    assert str(run.state) == "success", states
    assert states["validate_partition"] == ["success"] * 4
    summary = validation_of(run)
    assert summary["success"] and summary["statistics"]["evaluated"] == 4
    assert summary["docs_uri"].endswith("/docs/index.html")


def test_bad_row_in_one_partition_halts_naming_partition_and_expectation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dag_runner: Any
) -> None:
    from mlwp.data.validation import FailedExpectation

    run, states = _run(tmp_path, monkeypatch, dag_runner, bad_row=2500)
    assert str(run.state) == "failed", states
    assert states["validate_partition"] == ["success"] * 4
    assert states["validate"] == ["failed"]
    assert states["after_validate"] == ["upstream_failed"]
    summary = validation_of(run)
    (failure,) = summary["failures"]
    described = FailedExpectation(**failure).describe()
    assert described.startswith("expect_column_values_to_be_in_set on column 'plan'")
    assert "'enterprise'" in described
    assert "in 1 of 4 partitions: part-2.parquet (1)" in described
