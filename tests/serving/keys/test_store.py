"""The API-key store on SQLite and on real PostgreSQL, migrated with Alembic."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from serving.core.errors import KeyStoreError
from serving.keys.store import VERSION_TABLE, KeyStore, migrate


def _exercise(url: str) -> None:
    migrate(url)
    migrate(url)  # idempotent
    store = KeyStore(url, pepper="pepper-for-tests", cache_seconds=0)
    key, token = store.create("checkout", ["model:churn"], rate_limit="100/second")
    assert token.startswith(f"mlwp_{key.key_id}_")
    verified = store.verify(token)
    assert verified is not None and verified.key_id == key.key_id
    assert verified.allows_model("churn") and not verified.allows_model("other")
    assert not verified.is_admin
    assert store.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.verify("not-a-token") is None
    # only the hash is stored
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("select secret_hash from mlwp_api_keys")).scalar_one()
        assert token.rsplit("_", 1)[1] not in stored and len(stored) == 64
        assert conn.execute(sa.text(f"select version_num from {VERSION_TABLE}")).scalar_one()
    engine.dispose()
    assert [k.key_id for k in store.list()] == [key.key_id]
    store.revoke(key.key_id)
    assert store.verify(token) is None
    assert store.list() == []
    assert [k.key_id for k in store.list(include_revoked=True)] == [key.key_id]
    with pytest.raises(KeyStoreError, match="already revoked"):
        store.revoke(key.key_id)
    with pytest.raises(KeyStoreError, match="no API key with id 'nope'"):
        store.revoke("nope")
    with pytest.raises(KeyStoreError, match="invalid scope 'models:churn'"):
        store.create("x", ["models:churn"])
    with pytest.raises(KeyStoreError, match="invalid rate limit 'fast'"):
        store.create("x", ["admin"], rate_limit="fast")
    store.close()


@pytest.mark.unit
def test_sqlite_store(tmp_path: Path) -> None:
    _exercise(f"sqlite:///{tmp_path / 'keys.db'}")


@pytest.mark.integration
def test_postgres_store(postgres_database: str) -> None:
    _exercise(postgres_database)


def test_feedback_scopes_are_separate_from_prediction_scopes() -> None:
    from datetime import UTC, datetime

    from serving.keys.store import ApiKey, validate_scopes

    assert validate_scopes(["feedback:churn", "feedback:*", "model:churn"])
    with pytest.raises(KeyStoreError, match="'feedback:<name>' or 'feedback:\\*'"):
        validate_scopes(["labels:churn"])

    def key(*scopes: str) -> ApiKey:
        return ApiKey("k", "k", scopes, None, datetime.now(UTC), None)

    assert key("feedback:churn").allows_feedback("churn")
    assert not key("feedback:churn").allows_feedback("other")
    assert not key("feedback:churn").allows_model("churn")
    assert not key("model:churn").allows_feedback("churn")
    assert key("feedback:*").allows_feedback("any") and key("admin").allows_feedback("any")
