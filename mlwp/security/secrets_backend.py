"""Where Airflow finds connections and variables: the environment, or AWS Secrets Manager.

The embedded default reads ``AIRFLOW_CONN_<ID>`` and ``AIRFLOW_VAR_<NAME>`` from the environment
(Airflow's built-in environment backend, always consulted first). Production adds the Amazon
provider's ``SecretsManagerBackend``: :func:`secrets_manager_config` returns the Airflow options
to merge into the generated configuration (``mlwp.platform.airflow_config``) when a setting
asks for it. Secret values never pass through mlwp.
"""

from __future__ import annotations

import re

import orjson

from mlwp.security.roles import SecurityError

SECRETS_MANAGER_BACKEND = (
    "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
)
_PREFIX = re.compile(r"^[A-Za-z0-9/_+=.@-]+$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")


def secrets_manager_config(
    *,
    region: str,
    connections_prefix: str = "mlwp/connections",
    variables_prefix: str = "mlwp/variables",
    endpoint_url: str | None = None,
) -> dict[tuple[str, str], str]:
    """Return ``{(section, key): value}`` that makes Airflow read secrets from Secrets Manager.

    A secret ``<connections_prefix>/<conn_id>`` (a URI or a JSON object) is the connection
    ``conn_id``; ``<variables_prefix>/<key>`` is the variable ``key``. Config lookups are off:
    the platform's configuration comes from its own settings. ``endpoint_url`` is for tests and
    VPC endpoints only.
    """
    if not _REGION.match(region):
        raise SecurityError(f"secrets backend: region {region!r} is not an AWS region name")
    for name, prefix in (
        ("connections_prefix", connections_prefix),
        ("variables_prefix", variables_prefix),
    ):
        if not _PREFIX.match(prefix):
            raise SecurityError(
                f"secrets backend: {name} {prefix!r} may only hold letters, digits and /_+=.@-"
            )
    kwargs: dict[str, object] = {
        "connections_prefix": connections_prefix,
        "variables_prefix": variables_prefix,
        "config_prefix": None,
        "region_name": region,
    }
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    return {
        ("secrets", "backend"): SECRETS_MANAGER_BACKEND,
        ("secrets", "backend_kwargs"): orjson.dumps(kwargs).decode(),
    }
