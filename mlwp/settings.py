"""Platform settings, read from ``MLWP_*`` environment variables (and a ``.env`` file).

The embedded defaults run everything on one laptop under ``.mlwp/``; production sets
``MLWP_DATABASE_URL`` (PostgreSQL), ``MLWP_MLFLOW_BACKEND_STORE_URI``, an ``s3://`` storage
root and so on. Nothing else in mlwp reads ``MLWP_*`` variables directly.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mlwp.errors import ConfigurationError
from mlwp.platform.executors import ExecutorKind, Executors, Placement, parse_executors

# Where Celery finds its broker when MLWP_REDIS_URL is unset: the Redis of a laptop or CI.
DEFAULT_CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"

# The repository root: dags/, plugins/ and expectations/ live beside mlwp/.
REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every knob of the platform, with the embedded defaults of ``make up``."""

    model_config = SettingsConfigDict(
        env_prefix="MLWP_", env_file=".env", extra="ignore", frozen=True
    )

    home: Path = Field(
        default=REPO_ROOT / ".mlwp",
        description="State folder: databases, logs, artifacts, credentials, pid file.",
    )
    host: str = Field(default="127.0.0.1", description="Address every process binds to.")
    airflow_port: int = Field(default=8080, ge=1, le=65535)
    mlflow_port: int = Field(default=5000, ge=1, le=65535)
    serving_port: int = Field(default=8000, ge=1, le=65535)

    dags_folder: Path = REPO_ROOT / "dags"
    plugins_folder: Path = REPO_ROOT / "plugins"
    expectations_folder: Path = REPO_ROOT / "expectations"

    database_url: str | None = Field(
        default=None,
        description="Airflow metadata database; SQLite under home when unset.",
    )
    mlflow_backend_store_uri: str | None = Field(
        default=None, description="MLflow tracking/registry database; SQLite under home when unset."
    )
    mlflow_artifacts_destination: str | None = Field(
        default=None, description="Where MLflow stores artifacts; a folder under home when unset."
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="Tracking server the pipeline talks to; the embedded one when unset.",
    )
    mlflow_public_url: str | None = Field(
        default=None,
        description="The MLflow UI as a browser reaches it (an ingress host), used by the "
        "Airflow UI's links to runs and model versions; the tracking URI when unset.",
    )
    storage_root: str | None = Field(
        default=None,
        description="Default storage root of datasets, reports and GX data docs (file:// or "
        "s3://); a folder under home when unset.",
    )
    remote_log_folder: str | None = Field(
        default=None,
        description="Airflow remote task logs (e.g. s3://bucket/logs): every task uploads its log "
        "there and any api-server reads it back; local files under home when unset.",
    )
    remote_log_conn_id: str = Field(
        default="aws_default",
        description="Airflow connection the remote task logs are written and read with.",
    )
    audit_database_url: str | None = Field(
        default=None,
        description="Database of the platform's audit trail (SQLAlchemy URL); the Airflow "
        "metadata database when unset.",
    )
    serving_database_url: str | None = Field(
        default=None,
        description="Database of the serving API keys (SQLAlchemy URL; serving reads the same "
        "MLWP_SERVING_DATABASE_URL); SQLite under home when unset.",
    )
    auth_rate_limit_storage: str | None = Field(
        default=None,
        description="Where the api-server counts failed logins (a `limits` storage URI); "
        "MLWP_REDIS_URL when set, so every replica shares one count, else memory://.",
    )
    production: bool | None = Field(
        default=None,
        description="Production-shaped: `mlwp up` refuses state on one host's disk. Unset: "
        "true when the executor is not LocalExecutor alone.",
    )

    redis_url: str | None = Field(
        default=None,
        description="Redis shared by the platform's processes (Celery broker, login rate limits "
        "across api-server replicas, serving's cache and limits). Unset on a laptop.",
    )

    executor: str = Field(
        default="LocalExecutor",
        description="Airflow's [core] executor: LocalExecutor, CeleryExecutor, "
        "KubernetesExecutor, or a comma-separated list of them (the first is the default; "
        "alias:Executor names an entry for tasks). See mlwp.platform.executors.",
    )
    parallelism: int = Field(default=8, ge=1)
    celery_workers: int = Field(
        default=2,
        ge=0,
        description="CeleryExecutor: Celery workers `mlwp up` starts and supervises on this "
        "host (0: none; workers run elsewhere with `mlwp worker`).",
    )
    celery_worker_concurrency: int = Field(
        default=4, ge=1, description="CeleryExecutor: tasks one Celery worker runs at once."
    )
    celery_queues: Annotated[list[str], NoDecode] = Field(
        default=["default"],
        min_length=1,
        description="CeleryExecutor: the queues the platform's workers consume (comma-separated "
        "or a JSON list); a task's `queue` must be one of them. The first is Airflow's "
        "default queue.",
    )
    preload: bool = Field(
        default=True,
        description="LocalExecutor only: start task processes from a scheduler-side "
        "forkserver that imported the ML stack once (mlwp.platform.airflow_config."
        "PRELOAD_MODULES), so each task starts warm; false keeps Airflow's plain fork.",
    )
    kubernetes_namespace: str = Field(
        default="default", description="KubernetesExecutor: namespace of the task pods."
    )
    kubernetes_image: str = Field(
        default="mlwp/platform:dev",
        description="KubernetesExecutor: image of the task pods (the platform image).",
    )
    kubernetes_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    kubernetes_service_account: str | None = Field(
        default=None,
        description="KubernetesExecutor: service account of the task pods (e.g. an IRSA role "
        "for S3 and SageMaker); the namespace's default when unset.",
    )
    kubernetes_secret: str = Field(
        default="mlwp-secrets",
        description="KubernetesExecutor: Secret holding the secret environment of task pods, "
        "one key per variable (AIRFLOW__CORE__FERNET_KEY, ...); see `mlwp config pod-template`.",
    )
    kubernetes_api_server_url: str | None = Field(
        default=None,
        description="KubernetesExecutor: the api-server as pods reach it (e.g. "
        "http://mlwp-api-server:8080) for the execution API; the platform's URL when unset.",
    )
    kubernetes_task_cpu: str = Field(
        default="500m", description="KubernetesExecutor: CPU request of a task pod."
    )
    kubernetes_task_memory: str = Field(
        default="1Gi", description="KubernetesExecutor: memory request and limit of a task pod."
    )
    jwt_expiration_seconds: int = Field(default=3600, ge=60)
    statsd_on: bool = True
    statsd_host: str = "127.0.0.1"
    statsd_port: int = 9125
    otel_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP endpoint (such as http://otel-collector:4318) receiving traces: "
        "Airflow's task-run spans ([traces] otel_on) and serving's (MLWP_SERVING_OTEL_ENDPOINT "
        "of the serving `mlwp up` starts); tracing is off when unset.",
    )

    serving_base_url: str | None = Field(
        default=None,
        description="Where the platform (the deploy task) reaches serving, such as "
        "http://serving:8000 in a container deployment; http://<host>:<serving_port> when unset.",
    )
    serving_admin_key: SecretStr | None = Field(
        default=None,
        description="API key (admin scope) the deploy task sends with POST /admin/reload.",
    )
    deploy_serving_timeout_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a deploy task waits for serving to show the deployed version "
        "(0: ask for the reload, do not wait).",
    )

    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus server a guarded rollout queries for serving's per-variant "
        "request, error and latency metrics (every replica); unset: the rollout scrapes "
        "serving's own /metrics (one process).",
    )

    fernet_key: SecretStr | None = Field(
        default=None,
        description="Airflow's Fernet key; generated into home/secrets.json when unset.",
    )
    jwt_secret: SecretStr | None = Field(
        default=None,
        description="Airflow's JWT signing secret; generated into home/secrets.json when unset.",
    )
    api_secret_key: SecretStr | None = Field(
        default=None,
        description="Airflow api-server session key; generated into home/secrets.json when unset.",
    )

    admin_username: str = "admin"
    admin_password: SecretStr | None = Field(
        default=None, description="Initial admin password; generated and saved when unset."
    )
    start_timeout_seconds: float = Field(default=180.0, gt=0)
    secrets_manager_region: str | None = Field(
        default=None,
        description="When set, Airflow also reads connections and variables from AWS Secrets "
        "Manager in this region (under mlwp/connections/ and mlwp/variables/).",
    )

    @field_validator("celery_queues", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("executor")
    @classmethod
    def _known_executors(cls, value: str) -> str:
        parse_executors(value)  # raises ValueError naming the bad entry
        return value.strip()

    @model_validator(mode="after")
    def _celery_needs_a_shared_database(self) -> Settings:
        # Celery's result backend is the metadata database, and workers on other hosts (or
        # several worker processes) cannot share one SQLite file safely.
        on_sqlite = self.airflow_database_url.startswith("sqlite")
        if on_sqlite and self.configured_executors.uses(ExecutorKind.CELERY):
            raise ValueError(
                f"MLWP_EXECUTOR={self.executor} needs a database its workers share: set "
                "MLWP_DATABASE_URL to PostgreSQL (postgresql+psycopg2://...); SQLite is for "
                "LocalExecutor only"
            )
        return self

    @field_validator("home", "dags_folder", "plugins_folder", "expectations_folder")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @cached_property
    def configured_executors(self) -> Executors:
        return parse_executors(self.executor)

    @property
    def placement(self) -> Placement:
        return Placement(self.executor, self.configured_executors, tuple(self.celery_queues))

    @property
    def celery_broker_url(self) -> str:
        """Celery's broker: the platform's Redis (a local one when MLWP_REDIS_URL is unset)."""
        return self.redis_url or DEFAULT_CELERY_BROKER_URL

    @property
    def celery_result_backend(self) -> str:
        """Celery's result backend: the metadata database, through SQLAlchemy (``db+``)."""
        return f"db+{self.airflow_database_url}"

    # Derived locations, all under home so that `rm -rf .mlwp` is a full reset.
    @cached_property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @cached_property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @cached_property
    def credentials_file(self) -> Path:
        return self.home / "credentials"

    @cached_property
    def secrets_file(self) -> Path:
        return self.home / "secrets.json"

    @cached_property
    def state_file(self) -> Path:
        return self.home / "platform.json"

    @property
    def airflow_database_url(self) -> str:
        # Several processes write the embedded SQLite file (api-server, scheduler, DAG
        # processor, triggerer, LocalExecutor's workers); a write waits up to 30 s for another
        # one's lock (Python's default, 5 s, answered an API call with a 500 under load)
        return self.database_url or f"sqlite:///{self.home / 'airflow.db'}?timeout=30"

    @property
    def mlflow_backend_uri(self) -> str:
        return self.mlflow_backend_store_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifacts_uri(self) -> str:
        return self.mlflow_artifacts_destination or (self.home / "mlartifacts").as_uri()

    @property
    def storage_uri(self) -> str:
        return self.storage_root or (self.home / "storage").as_uri()

    @property
    def audit_url(self) -> str:
        return self.audit_database_url or self.airflow_database_url

    @property
    def serving_key_database_url(self) -> str:
        # The same default as serving.core.config.ServingSettings.key_database_url.
        return self.serving_database_url or f"sqlite:///{self.home / 'serving.db'}"

    @property
    def auth_rate_limit_storage_uri(self) -> str:
        return self.auth_rate_limit_storage or self.redis_url or "memory://"

    @property
    def production_shaped(self) -> bool:
        """Whether shared state must live off this host (``preflight.check_shared_state``)."""
        if self.production is not None:
            return self.production
        return any(
            entry.kind is not ExecutorKind.LOCAL for entry in self.configured_executors.entries
        )

    @property
    def airflow_url(self) -> str:
        return f"http://{self.host}:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    @property
    def serving_url(self) -> str:
        return self.serving_base_url or f"http://{self.host}:{self.serving_port}"


def get_settings() -> Settings:
    """Read the settings from the environment now (not cached: tests change it).

    Raises :class:`~mlwp.errors.ConfigurationError` naming each bad ``MLWP_*`` variable.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigurationError(settings_problems(exc)) from None


def settings_problems(exc: ValidationError) -> str:
    """One line per invalid setting, named as its environment variable."""
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        where = f"MLWP_{field.upper()}" if field else "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "invalid settings:\n  " + "\n  ".join(lines)
