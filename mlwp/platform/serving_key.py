"""The admin API key the deploy task sends to serving (``POST /admin/reload``).

Serving answers ``/admin/*`` only with an ``admin``-scope key, and keys live hashed in its key
store. ``mlwp up`` therefore keeps one token in ``<home>/secrets.json`` (made once, mode 0600,
like the Fernet key), makes sure the key store knows it before serving starts, and hands it
to every Airflow process as ``MLWP_SERVING_ADMIN_KEY`` (``airflow_config``), so a deploy's
reload is answered 202 on whichever worker runs it. A revoked key is replaced by a new one at
the next ``mlwp up``. A key given in ``MLWP_SERVING_ADMIN_KEY`` (a serving run elsewhere) is
used as it is and never written to the key store.
"""

from __future__ import annotations

import os

from mlwp.errors import PlatformError
from mlwp.platform.secrets import load_or_create, replace
from mlwp.settings import Settings

SECRET_NAME = "serving_admin_key"  # noqa: S105 - the name of a secret, not one
KEY_NAME = "mlwp-deploy"


def generated_admin_key(settings: Settings) -> str | None:
    """The key tasks send to serving: the configured one, else the generated one."""
    if settings.serving_admin_key is not None:
        return None
    return load_or_create(settings.secrets_file, (SECRET_NAME,))[SECRET_NAME]


def ensure_serving_admin_key(settings: Settings) -> str | None:
    """Register the generated admin key in serving's key store; return its key id.

    Returns None when ``MLWP_SERVING_ADMIN_KEY`` is set (the operator manages that key).
    Idempotent: a key already stored is left alone; a revoked one is replaced by a new token.
    """
    from serving.core.config import ServingSettings
    from serving.core.errors import KeyStoreError
    from serving.keys.store import KeyStore, migrate

    token = generated_admin_key(settings)
    if token is None:
        return None
    # Serving's home follows MLWP_HOME unless MLWP_SERVING_HOME says otherwise (as in the
    # environment `mlwp up` gives the serving process).
    overrides = {} if os.environ.get("MLWP_SERVING_HOME") else {"home": settings.home}
    serving = ServingSettings(**overrides)  # type: ignore[arg-type]
    url = settings.serving_database_url or serving.key_database_url
    try:
        migrate(url)
        pepper = serving.key_pepper.get_secret_value() if serving.key_pepper else None
        store = KeyStore(url, pepper=pepper, cache_seconds=0)
        try:
            try:
                key, _ = store.install(KEY_NAME, ["admin"], token)
            except KeyStoreError as exc:
                if exc.code not in ("revoked_key", "key_conflict"):
                    raise
                token = replace(settings.secrets_file, SECRET_NAME)
                key, _ = store.install(KEY_NAME, ["admin"], token)
        finally:
            store.close()
    except KeyStoreError as exc:
        raise PlatformError(
            f"cannot register serving's admin key in {url}: {exc.message}", code="bootstrap_failed"
        ) from exc
    return key.key_id
