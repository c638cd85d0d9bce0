"""Settings of the serving service, read from ``MLWP_SERVING_*`` environment variables.

Secrets have no default. A secret set to a well-known placeholder is refused outside the
``development`` environment, the way fastapi/full-stack-fastapi-template does it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset({"", "changethis", "change-me", "changeme", "secret", "password"})
DEFAULT_HOME = Path(__file__).resolve().parent.parent.parent / ".mlwp"


class ServingSettings(BaseSettings):
    """Every knob of the serving service, with the embedded defaults of ``mlwp up``."""

    model_config = SettingsConfigDict(
        env_prefix="MLWP_SERVING_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    environment: Literal["development", "staging", "production"] = "development"
    home: Path = Field(
        default=DEFAULT_HOME,
        validation_alias=AliasChoices("MLWP_SERVING_HOME", "MLWP_HOME"),
        description="State folder; the API-key database lives here (captures: storage_root).",
    )
    mlflow_tracking_uri: str = Field(
        default="http://127.0.0.1:5000",
        validation_alias=AliasChoices(
            "MLWP_SERVING_MLFLOW_TRACKING_URI", "MLWP_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"
        ),
        description="MLflow tracking server holding the model registry.",
    )
    models: list[str] = Field(
        default_factory=list,
        description="Registered models to serve; empty means every model with a traffic tag.",
    )
    default_model: str | None = Field(
        default=None, description="Model served by POST /predict; the first served when unset."
    )
    traffic_tag: str = "mlwp.traffic"
    poll_interval_seconds: float = Field(default=30.0, ge=0, description="0 disables polling.")
    mlflow_timeout_seconds: float = Field(default=5.0, gt=0)
    model_cache_dir: Path | None = Field(
        default=None, description="Where model versions are downloaded; under home when unset."
    )

    database_url: str | None = Field(
        default=None,
        description="API-key database (SQLAlchemy URL); SQLite under home when unset.",
    )
    auth_enabled: bool = Field(
        default=True, description="Require an API key; may be turned off in development only."
    )
    key_pepper: SecretStr | None = Field(
        default=None,
        description="Optional HMAC key mixed into stored key hashes; no default on purpose.",
    )
    key_cache_seconds: float = Field(
        default=5.0, ge=0, description="How long a looked-up key is trusted before re-reading."
    )

    redis_url: SecretStr | None = Field(
        default=None, description="Redis for the cache and rate limits."
    )
    redis_timeout_seconds: float = Field(default=0.05, gt=0)
    redis_retry_seconds: float = Field(
        default=5.0, ge=0, description="After a Redis failure, bypass Redis for this long."
    )
    cache_enabled: bool = True
    cache_ttl_seconds: int = Field(default=300, ge=1)
    cache_local_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=0,
        description="In-process copy of recent cache entries, in bytes (0: none). A repeated "
        "request is answered without a Redis round trip; an entry is fixed by model version "
        "and features, so a copy is never stale.",
    )

    rate_limit: str = Field(default="1000/second", description="Default per-key limit.")
    failed_auth_limit: str | None = Field(
        default="30/minute",
        description="Failed authentications allowed per client address; over it, every request "
        "from the address gets 429 until the window resets. Empty: no limit.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_rows: int = Field(default=1000, ge=1)
    # A thread hop costs more than it saves for batches a request usually carries (100 rows
    # score in about 1 ms); only larger ones go to the thread pool to keep the loop responsive.
    inline_rows: int = Field(
        default=256, ge=0, description="Batches up to this size are scored on the event loop."
    )
    predict_threads: int = Field(
        default=1, ge=1, description="XGBoost threads per prediction (nthread of the booster)."
    )
    native_trees: bool = Field(
        default=True,
        description="Compile each model's trees to C with the C compiler on PATH (cc, or "
        "$CC), cached under the model cache: loaded at load when cached, else built in the "
        "background after the load (the version serves meanwhile, readiness does not wait); "
        "without a compiler, or false: XGBoost's predictor (the same outputs, bit for bit; "
        "mlwp.model.native_trees).",
    )
    cors_origins: list[str] = Field(default_factory=list)
    fast_predict: bool = Field(
        default=True,
        description="`python -m serving` answers the prediction routes from its HTTP protocol, "
        "without the ASGI layers (same responses; serving.api.fast_predict); false sends them "
        "through the ASGI app like every other route.",
    )
    routing_field: str = Field(
        default="routing_key", description="Body field that may carry the routing key."
    )

    # Connections (python -m serving): what a slow or idle client may hold, and for how long.
    timeout_keep_alive_seconds: int = Field(
        default=5, ge=1, description="Close an idle keep-alive connection after this long."
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A request's line and headers must arrive within this long of its first "
        "byte (of the connection, for a new one); else the connection is closed.",
    )
    body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A request's body must arrive within this long of its headers; else 408.",
    )
    limit_concurrency: int | None = Field(
        default=1000,
        ge=1,
        description="Connections or requests in progress past which new requests get 503.",
    )
    # TLS served by the service itself (python -m serving); an ingress usually terminates it.
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate chain; with tls_key_file, serve HTTPS."
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key.")
    tls_key_password: SecretStr | None = Field(
        default=None, description="Password of an encrypted private key."
    )
    tls_ca_file: Path | None = Field(
        default=None, description="CA bundle that client certificates must chain to."
    )
    tls_client_cert: Literal["none", "optional", "required"] | None = Field(
        default=None,
        description="Client certificates: required when tls_ca_file is set, else none.",
    )

    # Capture for monitoring (docs/monitoring.md, "Capture"); serving/services/capture.py
    storage_root: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLWP_SERVING_STORAGE_ROOT", "MLWP_STORAGE_ROOT"),
        description="Platform storage root (file:// or s3://) where captured predictions and "
        "labels are written, under monitoring/; <home>/storage when unset, as the platform's.",
    )
    capture_percent: float = Field(
        default=100.0,
        ge=0,
        le=100,
        description="Share of every model's prediction requests captured, in percent (0: off).",
    )
    capture_model_percent: dict[str, float] = Field(
        default_factory=dict,
        description='Per-model capture share in percent, over capture_percent (JSON: {"churn": '
        "10}).",
    )
    entity_field: str = Field(
        default="entity_key",
        description="Record field whose value is captured as the row's entity key (labels can "
        "name it).",
    )
    entity_fields: dict[str, str] = Field(
        default_factory=dict,
        description='Per-model entity-key field, over entity_field (JSON: {"churn": '
        '"customerID"}).',
    )
    capture_buffer_rows: int = Field(
        default=100_000,
        ge=1,
        description="Most captured rows held in memory (being written included); past it, "
        "requests are not captured and the rows are counted as dropped.",
    )
    capture_batch_rows: int = Field(
        default=25_000,
        ge=1,
        description="Write captured rows once this many are waiting (or 16 MiB of request "
        "bodies, whichever comes first).",
    )
    capture_flush_seconds: float = Field(
        default=10.0, gt=0, description="Write captured rows at least this often."
    )
    capture_spool_codec: Literal["auto", "none", "zstd", "lz4", "lz4_raw"] = Field(
        default="auto",
        description="Compression of the captured bodies in serving's spool parts, until the "
        "monitor's compaction stores them as zstd Parquet: auto is none on a local "
        "filesystem (written past the page cache, so uncompressed bodies cost the least CPU; "
        "~7.6x lz4_raw's bytes until compaction) and lz4_raw on an object store (every byte "
        "sent); lz4_raw (LZ4 blocks) stores about a seventh of the bytes for less than half "
        "zstd's instructions; zstd about half lz4_raw's bytes (docs/monitoring.md, 'Cost').",
    )

    log_level: str = "INFO"
    # Tracing (OpenTelemetry): off unless an OTLP endpoint is given (docs/observability.md).
    otel_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP endpoint receiving serving's traces, such as "
        "http://otel-collector:4318 (spans go to <endpoint>/v1/traces); tracing is off when "
        "unset.",
    )
    otel_service_name: str = Field(
        default="mlwp-serving", description="service.name of serving's spans."
    )

    @field_validator("failed_auth_limit", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("rate_limit", "failed_auth_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            from limits import parse

            try:
                parse(value)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a rate limit such as '30/minute'") from exc
        return value

    @field_validator("capture_model_percent")
    @classmethod
    def _percentages(cls, value: dict[str, float]) -> dict[str, float]:
        for model, percent in value.items():
            if not 0 <= percent <= 100:
                raise ValueError(f"model {model!r}: capture percent {percent} is not in 0..100")
        return value

    @field_validator("storage_root")
    @classmethod
    def _storage_root(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from mlwp.data.storage import StorageError, normalise_root

        try:
            return normalise_root(value)
        except StorageError as exc:
            raise ValueError(exc.message) from exc

    @field_validator("home")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _tls_complete(self) -> ServingSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "MLWP_SERVING_TLS_CERT_FILE and MLWP_SERVING_TLS_KEY_FILE go together: "
                f"got cert {self.tls_cert_file} and key {self.tls_key_file}"
            )
        for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"MLWP_SERVING_{name.upper()}: no such file {path}")
        if self.tls_cert_file is None and self.tls_ca_file is not None:
            raise ValueError("MLWP_SERVING_TLS_CA_FILE needs MLWP_SERVING_TLS_CERT_FILE/KEY_FILE")
        if self.tls_client_cert not in (None, "none") and self.tls_ca_file is None:
            raise ValueError(
                f"MLWP_SERVING_TLS_CLIENT_CERT={self.tls_client_cert} needs "
                "MLWP_SERVING_TLS_CA_FILE (the CA client certificates chain to)"
            )
        return self

    @property
    def client_cert_mode(self) -> str:
        """none, optional or required (required by default once a CA is given)."""
        if self.tls_client_cert is not None:
            return self.tls_client_cert
        return "required" if self.tls_ca_file is not None else "none"

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> ServingSettings:
        if self.environment == "development":
            return self
        if self.key_pepper is not None and (
            self.key_pepper.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS
        ):
            raise ValueError(
                f"MLWP_SERVING_KEY_PEPPER is a placeholder; set a real secret for "
                f"environment {self.environment!r}"
            )
        if not self.auth_enabled:
            raise ValueError(
                f"MLWP_SERVING_AUTH_ENABLED=false is allowed in development only, "
                f"not in {self.environment!r}"
            )
        return self

    @property
    def key_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'serving.db'}"

    @property
    def models_dir(self) -> Path:
        return self.model_cache_dir or self.home / "serving-models"

    @property
    def capture_root(self) -> str:
        """The storage root captured predictions and labels are written under."""
        return self.storage_root or (self.home / "storage").as_uri()

    @property
    def redis(self) -> str | None:
        return self.redis_url.get_secret_value() if self.redis_url else None


@lru_cache
def get_settings() -> ServingSettings:
    """The settings of this process (cached; tests build their own instances instead)."""
    return ServingSettings()


def configure_mlflow_client(settings: ServingSettings) -> None:
    """Make MLflow's HTTP client fail fast, so an unreachable registry never stalls serving."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(settings.mlflow_timeout_seconds)))
