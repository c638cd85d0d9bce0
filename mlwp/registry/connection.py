"""The MLflow client the registry modules share, and the error they raise."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlwp.errors import MlwpError

if TYPE_CHECKING:
    from mlflow import MlflowClient


class RegistryError(MlwpError):
    """A registry operation cannot be done as asked."""

    code = "registry_error"


def client() -> MlflowClient:
    import mlflow

    return mlflow.MlflowClient()


def not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")
