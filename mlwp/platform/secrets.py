"""Per-installation secrets (Fernet key, JWT secret, session key), made once and kept 0600.

Production passes these through the environment instead (``MLWP_FERNET_KEY``,
``MLWP_JWT_SECRET``, ``MLWP_API_SECRET_KEY``, e.g. from a Kubernetes secret), so every
api-server replica and worker host shares them; the file is only the embedded default's
answer to "where do the secrets of a laptop install live", and is not written when all three
are given.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from mlwp.settings import Settings

_KEYS = ("fernet_key", "jwt_secret", "api_secret_key")


def _new_value(key: str) -> str:
    if key == "fernet_key":
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    if key == "serving_admin_key":  # an API key of serving's key store (mlwp.platform.serving_key)
        from serving.keys.store import new_token

        return new_token()
    return secrets.token_urlsafe(48)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_or_create(path: Path, keys: tuple[str, ...] = _KEYS) -> dict[str, str]:
    """Return the installation secrets, creating the missing ones of ``keys`` on first use."""
    existing: dict[str, str] = orjson.loads(path.read_bytes()) if path.exists() else {}
    missing = [key for key in keys if not existing.get(key)]
    if missing:
        existing.update({key: _new_value(key) for key in missing})
        write_private(path, orjson.dumps(existing, option=orjson.OPT_INDENT_2))
    return existing


def replace(path: Path, key: str) -> str:
    """Make a new value for ``key`` (a revoked or clashing one), store it and return it."""
    existing = load_or_create(path, ())
    existing[key] = _new_value(key)
    write_private(path, orjson.dumps(existing, option=orjson.OPT_INDENT_2))
    return existing[key]


def installation_secrets(settings: Settings) -> dict[str, str]:
    """The secrets of this installation: from the settings where given, else from the file."""
    given = {
        key: value.get_secret_value()
        for key, value in (
            ("fernet_key", settings.fernet_key),
            ("jwt_secret", settings.jwt_secret),
            ("api_secret_key", settings.api_secret_key),
        )
        if value is not None and value.get_secret_value()
    }
    if len(given) == len(_KEYS):
        return given
    return {**load_or_create(settings.secrets_file), **given}
