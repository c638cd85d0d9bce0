"""`mlwp up` makes serving's admin key for the deploy task: stored 0600, registered, wired.

Before: the key store knew no key for the deploy task, and tasks had no
``MLWP_SERVING_ADMIN_KEY``, so every deploy logged ``Serving answered 401 ... missing_api_key``.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from serving_harness import running

from mlwp.platform.airflow_config import airflow_environment
from mlwp.platform.serving_key import ensure_serving_admin_key
from mlwp.settings import Settings
from serving.core.config import ServingSettings
from serving.keys.store import KeyStore


@pytest.fixture(autouse=True)
def _no_outside_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLWP_SERVING_ADMIN_KEY", raising=False)
    monkeypatch.delenv("MLWP_SERVING_HOME", raising=False)


def _store(home: Path) -> KeyStore:
    return KeyStore(ServingSettings(home=home).key_database_url, cache_seconds=0)


def test_the_key_is_made_once_kept_private_and_registered_with_admin_scope(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    key_id = ensure_serving_admin_key(settings)
    token = airflow_environment(settings)["MLWP_SERVING_ADMIN_KEY"]
    assert token.startswith(f"mlwp_{key_id}_")
    assert stat.S_IMODE(settings.secrets_file.stat().st_mode) == 0o600
    store = _store(settings.home)
    key = store.verify(token)
    assert key is not None and key.is_admin and key.name == "mlwp-deploy"
    # Idempotent: a second `mlwp up` keeps the same key and adds no row.
    assert ensure_serving_admin_key(settings) == key_id
    assert airflow_environment(settings)["MLWP_SERVING_ADMIN_KEY"] == token
    assert [k.key_id for k in store.list()] == [key_id]
    store.close()


def test_a_revoked_key_is_replaced_at_the_next_start(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    old_id = ensure_serving_admin_key(settings)
    old_token = airflow_environment(settings)["MLWP_SERVING_ADMIN_KEY"]
    store = _store(settings.home)
    assert old_id is not None
    store.revoke(old_id)
    new_id = ensure_serving_admin_key(settings)
    new_token = airflow_environment(settings)["MLWP_SERVING_ADMIN_KEY"]
    assert new_id != old_id and new_token != old_token
    assert store.verify(new_token) is not None and store.verify(old_token) is None
    store.close()


def test_a_configured_key_is_passed_through_and_never_registered(tmp_path: Path) -> None:
    outside = "mlwp_0123456789abcdef_" + "x" * 43
    settings = Settings(home=tmp_path / "home", serving_admin_key=outside)
    assert ensure_serving_admin_key(settings) is None
    assert "MLWP_SERVING_ADMIN_KEY" not in airflow_environment(settings)


@pytest.mark.slow
@pytest.mark.anyio
async def test_serving_answers_the_deploy_tasks_reload_with_202(
    tmp_path: Path, make_settings: Any
) -> None:
    settings = Settings(home=tmp_path / "home")
    ensure_serving_admin_key(settings)
    token = airflow_environment(settings)["MLWP_SERVING_ADMIN_KEY"]
    async with running(make_settings(), wait_ready=False) as svc:
        refused = await svc.client.post("/admin/reload")
        assert refused.status_code == 401
        accepted = await svc.client.post("/admin/reload", headers=svc.auth(token))
        assert accepted.status_code == 202, accepted.text
