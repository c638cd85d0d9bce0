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


def _eventually(check: object, timeout: float = 30.0) -> None:
    """Wait for ``check()`` to hold (a background read lands), failing after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the keys were not read again in time"
        time.sleep(0.01)


@pytest.mark.unit
def test_background_rereads_leave_the_callers_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``background``, the store's own thread reads the keys again every
    ``cache_seconds`` while verifications are answered from the keys read last; the first
    read stays on the caller's thread (there is nothing to answer from)."""
    import threading

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    migrate(url)
    other = KeyStore(url, cache_seconds=0)  # another process: the admin CLI
    _, first = other.create("first", ["model:*"])
    store = KeyStore(url, cache_seconds=0.05, background=True)
    readers: list[str] = []
    reload = store.reload

    def recorded() -> None:
        readers.append(threading.current_thread().name)
        reload()

    monkeypatch.setattr(store, "reload", recorded)
    assert store.verify(first) is not None
    assert readers[0] == threading.current_thread().name
    _, second = other.create("second", ["model:*"])
    _eventually(lambda: store.verify(second) is not None)
    other.revoke(store.verify(first).key_id)  # type: ignore[union-attr]
    _eventually(lambda: store.verify(first) is None)
    assert len(readers) > 1
    assert all(name == "mlwp-keys" for name in readers[1:])
    store.close()
    other.close()


@pytest.mark.unit
def test_a_key_changed_elsewhere_counts_on_its_first_use_after_cache_seconds(
    tmp_path: Path,
) -> None:
    """An idle service: a key created by `mlwp keys create` (another process) is accepted on
    its very first use once ``cache_seconds`` have passed, and a revoked one refused on its
    first use. Before, the re-read was started by the first request to find the keys stale
    and that request was answered from the stale keys: following docs/monitoring.md on a
    fresh platform, a new key got 401 invalid_api_key on its first request, 6 s after its
    creation (cache 5 s), and 200 on the next."""
    import time

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    migrate(url)
    other = KeyStore(url, cache_seconds=0)
    _, old = other.create("old", ["model:*"])
    store = KeyStore(url, cache_seconds=0.2, background=True)
    assert store.verify(old) is not None  # serving's first request: read inline
    key, new = other.create("crm", ["feedback:churn"])
    other.revoke(store.verify(old).key_id)  # type: ignore[union-attr]
    changed = time.monotonic()
    # no verification meanwhile (the service is idle) until a read begun after the changes
    _eventually(lambda: store._read_at > changed)
    verified = store.verify(new)
    assert verified is not None and verified.key_id == key.key_id
    assert store.verify(old) is None
    store.close()
    other.close()


@pytest.mark.unit
def test_a_frozen_refresher_makes_the_next_verification_read(tmp_path: Path) -> None:
    """If the store's thread has not read for twice ``cache_seconds`` (a process frozen
    between invocations, as on AWS Lambda), a verification reads first, on its own thread,
    rather than answering from keys of unbounded age; a refresher that is reading (a slow
    database) is waited for instead, so requests do not pile queries on it."""
    import threading
    import time

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    migrate(url)
    other = KeyStore(url, cache_seconds=0)
    store = KeyStore(url, cache_seconds=60, background=True)
    assert store.verify("mlwp_0123456789abcdef_" + "x" * 43) is None  # first read, inline
    assert store._refresher is not None and store._refresher.name == "mlwp-keys"
    _, token = other.create("late", ["model:*"])
    store._read_at -= 121  # the thread slept through two periods
    store._refreshing = True  # ... or is in a slow read: answered from the keys held
    assert store.verify(token) is None
    store._refreshing = False
    readers: list[str] = []
    reload = store.reload

    def recorded() -> None:
        readers.append(threading.current_thread().name)
        reload()

    store.reload = recorded  # type: ignore[method-assign]
    assert store.verify(token) is not None
    assert readers == [threading.current_thread().name]
    started = time.monotonic()
    store.close()  # stops the thread at once, not after its 60 s wait
    assert store._refresher is not None and not store._refresher.is_alive()
    assert time.monotonic() - started < 30
    other.close()


@pytest.mark.unit
def test_a_background_read_does_not_bring_back_a_key_revoked_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-read that read a key before this process revoked it installs nothing: the next
    read does."""
    import threading

    from serving.keys import store as store_module

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    migrate(url)
    store = KeyStore(url, cache_seconds=0.05, background=True)
    key, token = store.create("client", ["model:*"])
    reading, release = threading.Event(), threading.Event()
    to_key = store_module._to_key

    def held(row: object) -> object:
        if threading.current_thread().name == "mlwp-keys" and not release.is_set():
            reading.set()
            assert release.wait(30)
        return to_key(row)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module, "_to_key", held)
    assert store.verify(token) is not None  # the first read, on this thread
    assert reading.wait(30)  # the store's thread has read the key as active, and waits
    store.revoke(key.key_id)  # while that read holds the key as active
    release.set()
    read_at = store._read_at
    _eventually(lambda: store._read_at > read_at)  # a later read installed
    assert store.verify(token) is None
    store.close()


@pytest.mark.unit
def test_close_does_not_wait_for_a_read_stuck_on_the_database(tmp_path: Path) -> None:
    """The store's thread reads every ``cache_seconds`` whatever happens, so when the key
    database is unreachable (a network partition: a PostgreSQL connect waits ~2 min for
    the system's SYN retries, the engine sets no timeout) a read is nearly always in
    progress, and ``close()`` joined it without a bound: serving's shutdown (run on the
    event loop, after the capture flush) hung with it. The thread is a daemon holding the
    store weakly between reads: close waits a little, then leaves it."""
    import threading

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    migrate(url)
    store = KeyStore(url, cache_seconds=0.05, background=True)
    assert store.verify("mlwp_0123456789abcdef_" + "x" * 43) is None  # starts the thread
    reading, release = threading.Event(), threading.Event()

    def stuck() -> None:
        reading.set()
        release.wait(120)  # the database does not answer

    store.reload = stuck  # type: ignore[method-assign]
    assert reading.wait(30)  # the thread is in its read
    closing = threading.Thread(target=store.close, daemon=True)
    closing.start()
    closing.join(30)
    try:
        assert not closing.is_alive(), "close() waited for a read the database never answers"
    finally:
        release.set()
