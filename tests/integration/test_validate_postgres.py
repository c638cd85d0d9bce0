"""Validation inside PostgreSQL (``in_database``): real GX SQL data source, real database.

A compiled definition extracts a query and validates it with ``in_database: true``: GX runs
the suite as SQL over the query in PostgreSQL, the verdict halts the run as a validation of
the stored dataset does, the result and data docs are stored beside the dataset (without the
connection's password), and a source that changed since the extract is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from validation_runs import run_workflow, validation_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "not-in-the-docs-7f3a"
DEFINITION = """
project: demo
owner: alice
workflows:
  check:
    tasks:
      extract: {type: extract, query: "select id, plan, spend from customers;", conn_id: mlwp_gx_pg}
      validate: {type: validate, after: [extract], suite: customers, in_database: true}
"""
SUITE = {
    "name": "customers",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "id"}},
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "plan", "value_set": ["basic", "pro"]},
        },
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "spend", "min_value": 0, "max_value": 1000},
        },
        {"type": "expect_table_row_count_to_equal", "kwargs": {"value": 5000}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "spend", "min_value": 1}},
    ],
}


@pytest.fixture
def database(postgres_database: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """5,000 customers, and the Airflow connection to them (with a password, which the
    local server does not ask for but must never be written out)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_database)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("create table customers (id int, plan text, spend float)"))
        conn.execute(
            sqlalchemy.text(
                "insert into customers select i, case when i % 2 = 0 then 'basic' else 'pro' "
                "end, (i % 97) + 0.5 from generate_series(1, 5000) as i"
            )
        )
    engine.dispose()
    parsed = urlparse(postgres_database)
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLWP_GX_PG",
        f"postgresql://{parsed.username}:{PASSWORD}@{parsed.hostname}:{parsed.port or 5432}"
        f"{parsed.path}",
    )
    return postgres_database


def _execute(url: str, statement: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(statement))
    engine.dispose()


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dag_runner: Any) -> tuple[Any, Any]:
    def given_the_query(dag: Any) -> None:
        query = dag.get_task("validate").query
        assert query == "select id, plan, spend from customers;"

    run, states = run_workflow(
        tmp_path,
        DEFINITION,
        SUITE,
        monkeypatch=monkeypatch,
        dag_runner=dag_runner,
        check_dag=given_the_query,
    )
    return run, {task_id: state for task_id, (state,) in states.items()}


def test_suite_runs_in_postgres_and_halts_on_bad_rows(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dag_runner: Any
) -> None:
    from mlwp.data.storage import Storage

    run, states = _run(tmp_path, monkeypatch, dag_runner)
    assert str(run.state) == "success", states
    summary = validation_of(run)
    assert summary["success"] and summary["statistics"]["evaluated"] == 5
    storage = Storage((tmp_path / "storage").as_uri())
    record = storage.read_sidecar(summary["dataset_uri"])["validation"]["customers"]
    assert record["engine"] == "postgres" and record["source_rows"] == 5000
    # GX ran SQL over the query: its batch is the query asset, not a DataFrame
    result = storage.read_bytes(summary["result_uri"]).decode()
    assert "mlwp_source" in result and "PandasDataFrame" not in result
    docs = Path(urlparse(summary["docs_uri"]).path).parent
    for text in [result, *(p.read_text() for p in docs.rglob("*.html"))]:
        assert PASSWORD not in text

    # bad rows: a new extract of them, validated in the database, halts the run
    _execute(database, "update customers set plan = 'gold', spend = -5 where id in (7, 4242)")
    run, states = _run(tmp_path, monkeypatch, dag_runner)
    assert str(run.state) == "failed" and states["validate"] == "failed", states
    failures = {f["expectation"]: f for f in validation_of(run)["failures"]}
    assert failures.keys() == {
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_between",
    }
    assert failures["expect_column_values_to_be_in_set"]["unexpected_count"] == 2
    assert failures["expect_column_values_to_be_in_set"]["unexpected_values"] == ["gold", "gold"]


def test_a_source_changed_since_the_extract_is_refused(database: str, tmp_path: Path) -> None:
    from mlwp.data.storage import Storage
    from mlwp.data.validation import SourceChanged, validate_source

    expectations = tmp_path / "expectations"
    expectations.mkdir()
    (expectations / "customers.json").write_text(json.dumps(SUITE))
    storage = Storage((tmp_path / "storage").as_uri())
    with pytest.raises(SourceChanged, match="returns 5000 rows before validating, the extract"):
        validate_source(
            storage,
            "unused://dataset.parquet",
            "customers",
            connection_string=database,
            query="select * from customers",
            extracted_rows=4990,
            expectations_folder=expectations,
        )
