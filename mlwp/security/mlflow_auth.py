"""MLflow in the production-shaped configuration: its basic-auth app, users kept in step.

Decision (docs/security.md): production runs ``mlflow server --app-name basic-auth``, so every
MLflow request, read or write, needs a user; anonymous requests get 401. The platform keeps
MLflow users in step with its Airflow users: ``mlwp users add``/``remove`` also create/delete
the MLflow user with the same password when the MLflow admin credentials are in the standard
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` variables. Airflow Admins are MLflow
admins; everyone else is a plain user who reads everything (``default_permission = READ``) and
manages the experiments they create. The pipeline writes as its own service account.

Only MLflow's REST API is used here (over httpx), so this module needs neither MLflow nor
Airflow installed.
"""

from __future__ import annotations

import configparser
import io
from pathlib import Path

import httpx

from mlwp.errors import MlwpError
from mlwp.platform.secrets import write_private

USERS_API = "/api/2.0/mlflow/users"
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")


class MlflowAuthError(MlwpError):
    """MLflow's user API refused or failed a request."""

    code = "mlflow_auth_error"


def basic_auth_config_text(
    *, database_uri: str, admin_username: str, default_permission: str = "READ"
) -> str:
    """Return the ``basic_auth.ini`` of the MLflow server (the admin password stays out of it:
    pass it as ``MLFLOW_AUTH_ADMIN_PASSWORD``)."""
    if default_permission not in PERMISSIONS:
        raise MlflowAuthError(
            f"default_permission {default_permission!r} is not one of {list(PERMISSIONS)}"
        )
    parser = configparser.ConfigParser()
    parser["mlflow"] = {
        "default_permission": default_permission,
        "database_uri": database_uri,
        "admin_username": admin_username,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
    }
    buffer = io.StringIO()
    parser.write(buffer)
    return buffer.getvalue()


def write_basic_auth_config(path: Path, **options: str) -> Path:
    """Write ``basic_auth.ini`` (mode 0600) for ``MLFLOW_AUTH_CONFIG_PATH`` and return its path."""
    write_private(path, basic_auth_config_text(**options).encode())
    return path


class MlflowUsers:
    """MLflow's user API, authenticated as an MLflow admin."""

    def __init__(self, tracking_uri: str, admin_username: str, admin_password: str) -> None:
        self._client = httpx.Client(
            base_url=tracking_uri.rstrip("/"), auth=(admin_username, admin_password), timeout=120
        )

    def __enter__(self) -> MlflowUsers:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def _call(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        response = self._client.request(method, f"{USERS_API}/{path}", **kwargs)  # type: ignore[arg-type]
        if response.status_code in (401, 403):
            raise MlflowAuthError(
                f"MLflow refused the admin credentials for {path} ({response.status_code})"
            )
        return response

    def exists(self, username: str) -> bool:
        response = self._call("GET", "get", params={"username": username})
        return response.status_code == 200

    def sync_user(self, username: str, password: str, *, admin: bool) -> str:
        """Create the user (or reset its password) and set its admin flag; return what happened."""
        if self.exists(username):
            body = {"username": username, "password": password}
            response = self._call("PATCH", "update-password", json=body)
            action = "updated"
        else:
            response = self._call(
                "POST", "create", json={"username": username, "password": password}
            )
            action = "created"
        if response.status_code >= 400:
            raise MlflowAuthError(f"MLflow user {username!r}: {response.text[:300]}")
        flag = self._call("PATCH", "update-admin", json={"username": username, "is_admin": admin})
        if flag.status_code >= 400:
            raise MlflowAuthError(f"MLflow user {username!r} admin flag: {flag.text[:300]}")
        return action

    def delete_user(self, username: str) -> bool:
        """Delete the user; return False when MLflow had no such user."""
        if not self.exists(username):
            return False
        response = self._call("DELETE", "delete", json={"username": username})
        if response.status_code >= 400:
            raise MlflowAuthError(f"MLflow user {username!r}: {response.text[:300]}")
        return True
