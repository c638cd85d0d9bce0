"""docs/settings.md, generated from the settings models: every ``MLWP_*`` variable.

``python -m mlwp.settings_docs > docs/settings.md`` writes it; a test checks the file equals
what this renders, so the page cannot drift from ``mlwp.settings.Settings`` and serving's
``serving.core.config.ServingSettings``.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mlwp.settings import REPO_ROOT

HEADER = """# Settings

Every setting is an environment variable (or a line of a `.env` file in the folder the
command runs from). This page is generated from the settings models by
`python -m mlwp.settings_docs > docs/settings.md`; a test keeps it equal to them.
Secrets have no default. Paths default to folders of this repository or of `MLWP_HOME`.
"""


# Meanings of the fields whose model gives no description (a Field(description=...) wins).
MEANINGS = {
    "airflow_port": "Port of the Airflow api-server (web UI and REST API).",
    "mlflow_port": "Port of the MLflow tracking server.",
    "serving_port": "Port of the serving service.",
    "dags_folder": "Airflow's DAG folder: the loader and dags/projects/<project>/.",
    "plugins_folder": "Airflow's plugins folder.",
    "expectations_folder": "Great Expectations suites (<suite>.json) named by definitions.",
    "parallelism": "Airflow [core] parallelism: task slots of the executor.",
    "jwt_expiration_seconds": "Lifetime of the REST API's JWTs.",
    "statsd_on": "Send Airflow metrics (and mlwp's task metrics) to statsd, with tags as labels "
    "(docs/observability.md); a closed port loses them harmlessly.",
    "statsd_host": "statsd host of Airflow metrics.",
    "statsd_port": "statsd port of Airflow metrics.",
    "admin_username": "The admin user `mlwp up` creates.",
    "start_timeout_seconds": "How long `mlwp up` waits for every process to be ready.",
    "environment": "development, staging or production (placeholders refused outside dev).",
    "traffic_tag": "Model tag holding the traffic split.",
    "mlflow_timeout_seconds": "Timeout of a registry request.",
    "redis_timeout_seconds": "Timeout of a Redis command (then Redis is bypassed).",
    "cache_enabled": "Cache predictions (in Redis when set, else in process).",
    "cache_ttl_seconds": "Lifetime of a cached prediction.",
    "max_body_bytes": "Largest request body (413 above).",
    "max_rows": "Most records per prediction request (413 above).",
    "cors_origins": "Origins allowed by CORS (JSON list).",
    "log_level": "Log level of the service.",
    "kubernetes_image_pull_policy": "Image pull policy of task pods (KubernetesExecutor).",
}


def _type(annotation: Any) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = text.replace("typing.", "").replace("pydantic.types.", "").replace("pathlib.", "")
    return text.replace("NoneType", "None").replace(" | ", " or ")


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None:
        return "unset"
    if isinstance(value, Path):
        try:
            return f"`{value.relative_to(REPO_ROOT)}` (in the repository)"
        except ValueError:
            return f"`{value}`"
    if isinstance(value, list | tuple) and not value:
        return "empty"
    return f"`{value}`"


def _variables(name: str, info: FieldInfo, prefix: str) -> str:
    alias = info.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return ", ".join(f"`{c}`" for c in choices if isinstance(c, str))
    return f"`{prefix}{name.upper()}`"


def _table(model: type[BaseModel], prefix: str) -> list[str]:
    lines = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, info in model.model_fields.items():
        meaning = " ".join((info.description or MEANINGS.get(name, "")).split()) or "-"
        lines.append(
            f"| {_variables(name, info, prefix)} | {_type(info.annotation)} | "
            f"{_default(info)} | {meaning.replace('|', '/')} |"
        )
    return lines


def render() -> str:
    """The Markdown of docs/settings.md."""
    from mlwp.settings import Settings
    from serving.core.config import ServingSettings

    prefix = str(typing.cast(Any, Settings.model_config).get("env_prefix"))
    serving_prefix = str(typing.cast(Any, ServingSettings.model_config).get("env_prefix"))
    lines = [
        HEADER,
        "## The platform (`mlwp up`, the CLI, tasks): `mlwp/settings.py`",
        "",
        *_table(Settings, prefix),
        "",
        "## The serving service: `serving/core/config.py`",
        "",
        "Serving reads its own variables; `mlwp up` passes it `MLWP_HOME` and the shared",
        "ones (`MLWP_SERVING_DATABASE_URL`, the MLflow URI).",
        "",
        *_table(ServingSettings, serving_prefix),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
