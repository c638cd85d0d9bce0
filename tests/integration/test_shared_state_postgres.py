"""The audit trail and the serving API keys in PostgreSQL (a database of their own on the
shared server), configured the way a production platform is: ``MLWP_DATABASE_URL`` (the
audit trail follows it) and ``MLWP_SERVING_DATABASE_URL``; both tables beside each other,
each with its own Alembic version table."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from mlwp.cli import app

pytestmark = pytest.mark.integration


@pytest.fixture
def production_db(postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLWP_HOME", str(tmp_path))
    monkeypatch.setenv("MLWP_DATABASE_URL", postgres_database)
    monkeypatch.setenv("MLWP_SERVING_DATABASE_URL", postgres_database)
    monkeypatch.delenv("MLWP_AUDIT_DATABASE_URL", raising=False)
    monkeypatch.setenv("MLWP_SERVING_KEY_PEPPER", "pepper-of-this-test")
    return postgres_database


def test_keys_created_by_the_cli_are_verified_by_serving_from_postgres(
    production_db: str, tmp_path: Path
) -> None:
    from mlwp.platform.processes import child_environment
    from mlwp.settings import get_settings
    from serving.core.config import ServingSettings
    from serving.keys.store import KeyStore

    created = CliRunner().invoke(app, ["keys", "create", "checkout", "-s", "model:churn", "--json"])
    assert created.exit_code == 0, created.output
    token = orjson.loads(created.stdout)["token"]

    # What `mlwp up` hands to serving, and what serving makes of it.
    env = child_environment(get_settings())
    assert env["MLWP_SERVING_DATABASE_URL"] == production_db
    serving = ServingSettings()
    assert serving.key_database_url == production_db
    store = KeyStore(serving.key_database_url, pepper="pepper-of-this-test", cache_seconds=0)
    try:
        key = store.verify(token)
        assert key is not None and key.allows_model("churn")
    finally:
        store.close()
    assert not (tmp_path / "serving.db").exists()

    # The CLI recorded the creation in the audit trail, in the same PostgreSQL database.
    listed = CliRunner().invoke(app, ["audit", "list", "--json", "--action", "apikey"])
    assert listed.exit_code == 0, listed.output
    (event,) = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert event["action"] == "apikey.create" and event["target"] == key.key_id
    engine = sa.create_engine(production_db)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {
        "mlwp_api_keys",
        "mlwp_serving_alembic_version",
        "mlwp_audit_events",
        "mlwp_audit_alembic_version",
    } <= tables
    assert not (tmp_path / "airflow.db").exists() and not (tmp_path / "audit.jsonl").exists()


def _record_many(url: str, worker: int) -> None:
    from mlwp.security.audit import record

    for index in range(10):
        record(f"user{worker}", "model.promote", f"model-{index}", {"worker": worker}, url=url)


def test_concurrent_writers_on_a_new_database_migrate_once_and_lose_nothing(
    postgres_database: str,
) -> None:
    from mlwp.security.audit import list_events

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(postgres_database, n)) for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    events = list_events(url=postgres_database)
    assert len(events) == 40
    assert len(list_events(url=postgres_database, actor="user2", action="model")) == 10
    assert {e.details["worker"] for e in events} == {0, 1, 2, 3}
