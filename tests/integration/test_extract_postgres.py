"""SQL extraction through the Postgres provider's hook, against a real PostgreSQL database."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_extract_query_into_storage(
    postgres_database: str, airflow_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy
    from airflow.sdk import DAG, Asset

    from mlwp.storage import Storage
    from operators.extract import ExtractOperator

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
    with DAG("crm.extract", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        ExtractOperator(
            task_id="customers",
            query="select id, plan, spend from customers where id <= {{ params.max_id }}",
            conn_id="mlwp_test_pg",
            params={"max_id": 2},
            project="crm",
            workflow="extract",
            storage_root=str(root),
            outlets=[Asset(name="crm.extract.customers", uri="mlwp://crm/extract/customers")],
        )
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
