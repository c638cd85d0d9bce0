"""`mlwp up` makes serving's admin key for the deploy task: stored 0600, registered, wired.

Before: the key store knew no key for the deploy task, and tasks had no
``MLWP_SERVING_ADMIN_KEY``, so every deploy logged ``Serving answered 401 ... missing_api_key``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from serving_harness import running

from mlwp.errors import PlatformError
from mlwp.platform.airflow_config import airflow_environment
from mlwp.platform.serving_key import ensure_serving_admin_key, task_admin_key
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


def _install_admin(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``mlwp keys install-admin`` as docker compose's init service and the chart's Job run it."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "mlwp"), "keys", "install-admin"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _container_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLWP_", "AIRFLOW"))}
    env.update(
        MLWP_HOME=str(home),
        MLWP_SERVING_DATABASE_URL=f"sqlite:///{home.parent / 'serving-keys.db'}",
        MLWP_SERVING_KEY_PEPPER="a-pepper-of-this-installation",
        **extra,
    )
    return env


def _pepper_store(home: Path) -> KeyStore:
    return KeyStore(
        f"sqlite:///{home.parent / 'serving-keys.db'}",
        pepper="a-pepper-of-this-installation",
        cache_seconds=0,
    )


@pytest.mark.slow
def test_compose_init_makes_the_key_every_airflow_container_reads(tmp_path: Path) -> None:
    """docker compose: airflow-init runs `mlwp keys install-admin` with MLWP_HOME on the shared
    volume and MLWP_SERVING_ADMIN_KEY empty ('' from `${MLWP_SERVING_ADMIN_KEY:-}`); a deploy
    task in another container finds the key there and serving's store accepts it."""
    home = tmp_path / "var-lib-mlwp"
    env = _container_env(home, MLWP_SERVING_ADMIN_KEY="")
    done = _install_admin(env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(mlwp-deploy) is registered" in done.stdout
    assert stat.S_IMODE((home / "secrets.json").stat().st_mode) == 0o600
    # What the deploy task and the Models view send, in any container sharing the volume.
    token = task_admin_key(Settings(home=home, serving_admin_key=""))
    assert token is not None and token not in done.stdout
    store = _pepper_store(home)
    key = store.verify(token)
    assert key is not None and key.is_admin
    # A restart of the stack runs init again (its function, in-process): the same key, no
    # second row.
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if name.startswith("MLWP_"):
                patch.setenv(name, value)
        assert ensure_serving_admin_key(Settings(), install_configured=True) == key.key_id
    assert task_admin_key(Settings(home=home, serving_admin_key="")) == token
    assert len(store.list()) == 1
    store.close()


@pytest.mark.slow
def test_helm_job_registers_the_token_of_the_charts_secret(tmp_path: Path) -> None:
    """Helm: the roles-sync Job's container gets the chart's generated token as
    MLWP_SERVING_ADMIN_KEY and registers exactly that token; a revoked one is refused loudly
    (only whoever made the Secret can replace it)."""
    from serving.keys.store import new_token

    home = tmp_path / "job-home"
    token = new_token()
    env = _container_env(home, MLWP_SERVING_ADMIN_KEY=token)
    done = _install_admin(env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (home / "secrets.json").exists()
    store = _pepper_store(home)
    key = store.verify(token)
    assert key is not None and key.is_admin and key.name == "mlwp-deploy"
    store.revoke(key.key_id)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if name.startswith("MLWP_"):
                patch.setenv(name, value)
        with pytest.raises(PlatformError, match=r"from MLWP_SERVING_ADMIN_KEY.*revoked") as refused:
            ensure_serving_admin_key(Settings(), install_configured=True)
    assert token not in str(refused.value)
    store.close()


def test_no_key_anywhere_means_none_sent(tmp_path: Path) -> None:
    assert task_admin_key(Settings(home=tmp_path / "empty")) is None
    assert task_admin_key(Settings(home=tmp_path, serving_admin_key=" mlwp_x ")) == "mlwp_x"
