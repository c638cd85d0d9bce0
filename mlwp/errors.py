"""The one exception hierarchy of the Airflow-free core.

Every error carries a short machine-readable ``code`` beside the human message, so the CLI,
the operators and the serving service can map it without parsing text.
"""

from __future__ import annotations


class MlwpError(Exception):
    """Base class of every error raised on purpose by mlwp."""

    code = "mlwp_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigurationError(MlwpError):
    """A setting or an environment variable has a value mlwp cannot use."""

    code = "configuration_error"


class PlatformError(MlwpError):
    """A platform process could not be started, checked or stopped."""

    code = "platform_error"
