"""The admin API key the deploy task sends to serving (``POST /admin/reload``).

Serving answers ``/admin/*`` only with an ``admin``-scope key, and keys live hashed in its key
store. ``mlwp up`` therefore keeps one token in ``<home>/secrets.json`` (made once, mode 0600,
like the Fernet key), makes sure the key store knows it before serving starts, and hands it
to every Airflow process as ``MLWP_SERVING_ADMIN_KEY`` (``airflow_config``), so a deploy's
reload is answered 202 on whichever worker runs it. A revoked key is replaced by a new one at
the next ``mlwp up``. A key given in ``MLWP_SERVING_ADMIN_KEY`` (a serving run elsewhere) is
used as it is and never written to the key store by ``mlwp up``.

Container deployments do the same with ``mlwp keys install-admin``: docker compose's init
service makes the key in the shared ``MLWP_HOME`` volume and every Airflow container reads it
from there (:func:`task_admin_key`); the Helm chart generates the token into a Secret at
install and its roles-sync Job registers that configured token (``install_configured``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson

from mlwp.errors import PlatformError
from mlwp.platform.secrets import load_or_create, replace
from mlwp.settings import Settings

SECRET_NAME = "serving_admin_key"  # noqa: S105 - the name of a secret, not one
KEY_NAME = "mlwp-deploy"


def configured_admin_key(settings: Settings) -> str | None:
    """``MLWP_SERVING_ADMIN_KEY`` when set and not empty (compose passes an unset one as '')."""
    key = settings.serving_admin_key
    value = key.get_secret_value().strip() if key is not None else ""
    return value or None


def generated_admin_key(settings: Settings) -> str | None:
    """The generated key (made on first use), or None when a key is configured."""
    if configured_admin_key(settings) is not None:
        return None
    return load_or_create(settings.secrets_file, (SECRET_NAME,))[SECRET_NAME]


def task_admin_key(settings: Settings) -> str | None:
    """The key a deploy task or the Models view sends to serving, never making one.

    ``MLWP_SERVING_ADMIN_KEY`` when set, else the key ``mlwp up`` or ``mlwp keys install-admin``
    stored in ``<home>/secrets.json`` (the volume docker compose's containers share), else None
    (serving then answers 401 and picks the change up on its next poll).
    """
    configured = configured_admin_key(settings)
    if configured is not None:
        return configured
    try:
        stored = orjson.loads(settings.secrets_file.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    value = stored.get(SECRET_NAME) if isinstance(stored, dict) else None
    return value if isinstance(value, str) and value else None


def ensure_serving_admin_key(settings: Settings, *, install_configured: bool = False) -> str | None:
    """Register the admin key in serving's key store; return its key id.

    The generated key (made once in ``<home>/secrets.json``) by default. A configured
    ``MLWP_SERVING_ADMIN_KEY`` is left alone (None: the operator manages that key) unless
    ``install_configured``, when that token is registered as it is (the Helm chart's token
    from its Secret); a revoked or clashing configured token is then an error, since only
    whoever set it can replace it. Idempotent: a key already stored is left alone; a revoked
    generated one is replaced by a new token.
    """
    from serving.core.config import ServingSettings
    from serving.core.errors import KeyStoreError
    from serving.keys.store import KeyStore, migrate

    configured = configured_admin_key(settings)
    if configured is not None and not install_configured:
        return None
    token = configured or generated_admin_key(settings)
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
                if configured is not None or exc.code not in ("revoked_key", "key_conflict"):
                    raise
                token = replace(settings.secrets_file, SECRET_NAME)
                key, _ = store.install(KEY_NAME, ["admin"], token)
        finally:
            store.close()
    except KeyStoreError as exc:
        where = "MLWP_SERVING_ADMIN_KEY" if configured is not None else str(settings.secrets_file)
        raise PlatformError(
            f"cannot register serving's admin key (from {where}) in serving's key database: "
            f"{exc.message}",
            code="bootstrap_failed",
        ) from exc
    return key.key_id


def missing_key_hint(settings: Settings) -> str:
    """What to add to serving's refusal when no admin key was sent: serving's own answer
    ("missing API key") does not say where the platform's key lives."""
    return (
        f"; no serving admin key here (MLWP_SERVING_ADMIN_KEY, or {settings.secrets_file} "
        "made by `mlwp up` or `mlwp keys install-admin`)"
    )


def reload_serving(
    settings: Settings, model: str, state: Mapping[str, Any], timeout: float
) -> dict[str, Any]:
    """Ask serving to load a registry change of ``model`` now, with :func:`task_admin_key`
    (the CLI's ``mlwp models`` commands and the Models view), and say what it answered
    (:meth:`~mlwp.registry.serving_client.ReloadOutcome.as_dict`); refused for want of a
    key, the answer says where the key comes from. The change stands whatever serving
    answers."""
    from mlwp.registry.serving_client import reload_after_change

    key = task_admin_key(settings)
    outcome = reload_after_change(
        settings.serving_url, model, dict(state), api_key=key, timeout=timeout
    )
    if key is None and outcome.state == "refused":
        outcome.message += (
            missing_key_hint(settings)
            + ": the change stands and serving picks it up on its next registry poll"
        )
    return outcome.as_dict()
