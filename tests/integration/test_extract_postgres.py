"""SQL extraction through the Postgres provider's hook, against a real PostgreSQL database."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_FILE = '''"""A one-task airflow dag: extract a Postgres query (tests/integration)."""
from datetime import UTC, datetime

from airflow.sdk import DAG, Asset

from operators.extract import ExtractOperator

with DAG("crm.extract", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
    ExtractOperator(
        task_id="customers",
        query="select id, plan, spend from customers where id <= {{ params.max_id }}",
        conn_id="mlwp_test_pg",
        params={"max_id": 2},
        project="crm",
        workflow="extract",
        outlets=[Asset(name="crm.extract.customers", uri="x-mlwp://crm/extract/customers")],
    )
    # The same rows through a server-side cursor, streamed into partitions of 2 rows.
    ExtractOperator(
        task_id="customers_streamed",
        query="select id, plan, spend from customers order by id",
        conn_id="mlwp_test_pg",
        rows_per_partition=2,
        project="crm",
        workflow="extract",
    )
'''


def test_extract_query_into_storage(
    postgres_database: str, airflow_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy

    from mlwp.data.storage import Storage

    engine = sqlalchemy.create_engine(postgres_database)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("create table customers (id int, plan text, spend float)"))
        conn.execute(
            sqlalchemy.text(
                "insert into customers values (1, 'basic', 10.5), (2, 'pro', 99.0), "
                "(3, 'basic', null)"
            )
        )
    engine.dispose()
    parsed = urlparse(postgres_database)
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLWP_TEST_PG",
        f"postgresql://{parsed.username}@{parsed.hostname}:{parsed.port or 5432}{parsed.path}",
    )
    root = tmp_path / "storage"
    monkeypatch.setenv("MLWP_STORAGE_ROOT", root.as_uri())
    # dag.test() runs only DAGs stored in the metadata database: store this one (as the
    # dag-processor would) from a folder holding only it.
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "crm_extract.py").write_text(DAG_FILE)
    bag = DagBag(dag_folder=str(dags))
    assert not bag.import_errors, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)
    dag = bag.dags["crm.extract"]
    run = dag.test()
    assert str(run.state) == "success"
    storage = Storage(str(root))
    (sidecar,) = storage.versions("crm", "customers")
    assert sidecar["rows"] == 2
    assert sidecar["columns"] == ["id", "plan", "spend"]
    assert sidecar["source"].startswith("postgres://mlwp_test_pg select id")
    assert "<= 2" in sidecar["source"]  # the query was templated before it ran
    frame = storage.read_dataset(sidecar["uri"])
    assert frame["plan"].tolist() == ["basic", "pro"]
    (streamed,) = storage.versions("crm", "customers_streamed")
    assert streamed["layout"] == "partitioned"
    assert [p["rows"] for p in streamed["partitions"]] == [2, 1]
    rows = storage.read_dataset(streamed["uri"])
    assert rows["id"].tolist() == [1, 2, 3] and rows["plan"].tolist() == ["basic", "pro", "basic"]
    assert rows["spend"].iloc[:2].tolist() == [10.5, 99.0] and rows["spend"].isna().iloc[2]
