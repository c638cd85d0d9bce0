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


def _wait_read(store: KeyStore) -> None:
    reading = store._reading
    if reading is not None:
        reading.result(timeout=30)


@pytest.mark.unit
def test_background_rereads_leave_the_callers_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``background``, keys older than ``cache_seconds`` are read again on the store's
    own thread while the verification is answered from the keys read last; the first read
    stays on the caller's thread (there is nothing to answer from)."""
    import threading
    import time

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    migrate(url)
    other = KeyStore(url, cache_seconds=0)  # another process: the admin CLI
    _, first = other.create("first", ["model:*"])
    store = KeyStore(url, cache_seconds=0.05, background=True)
    readers: list[str] = []
    reload = store.reload
    # holds a background read until the stale answer is checked: a read that finished
    # between submitting and answering would otherwise answer from the new keys
    release = threading.Event()
    release.set()

    def recorded() -> None:
        readers.append(threading.current_thread().name)
        if threading.current_thread() is not threading.main_thread():
            assert release.wait(10)
        reload()

    monkeypatch.setattr(store, "reload", recorded)
    assert store.verify(first) is not None
    assert readers == [threading.current_thread().name]
    _, second = other.create("second", ["model:*"])
    time.sleep(0.06)
    release.clear()
    # stale: answered from the keys read last, a read started elsewhere
    assert store.verify(second) is None
    release.set()
    _wait_read(store)
    assert readers[1].startswith("mlwp-keys")
    assert store.verify(second) is not None
    other.revoke(store.verify(first).key_id)  # type: ignore[union-attr]
    time.sleep(0.06)
    store.verify(first)
    _wait_read(store)
    assert store.verify(first) is None
    assert all(name.startswith("mlwp-keys") for name in readers[1:])
    store.close()
    other.close()


@pytest.mark.unit
def test_a_background_read_does_not_bring_back_a_key_revoked_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-read that read a key before this process revoked it installs nothing: the next
    verification reads again."""
    import threading
    import time

    from serving.keys import store as store_module

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    migrate(url)
    store = KeyStore(url, cache_seconds=0.05, background=True)
    key, token = store.create("client", ["model:*"])
    assert store.verify(token) is not None  # the first read, on this thread
    reading, release = threading.Event(), threading.Event()
    to_key = store_module._to_key

    def held(row: object) -> object:
        if threading.current_thread().name.startswith("mlwp-keys") and not release.is_set():
            reading.set()
            assert release.wait(30)
        return to_key(row)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module, "_to_key", held)
    time.sleep(0.06)
    assert store.verify(token) is not None  # stale: a read starts, the key still active
    assert reading.wait(30)
    store.revoke(key.key_id)  # while that read holds the key as active
    release.set()
    _wait_read(store)
    assert store.verify(token) is None
    _wait_read(store)
    assert store.verify(token) is None
    store.close()
