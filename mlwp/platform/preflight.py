"""Checks made before anything starts: free ports, reachable databases and broker, no shared
state on this host's disk when the platform is production-shaped.

A failed check raises :class:`~mlwp.errors.PlatformError` with a one-line cause that names
the port or database and the process that needed it, so ``mlwp up`` refuses before it has
started (or half-started) anything.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from mlwp.errors import ConfigurationError, PlatformError
from mlwp.settings import Settings


class PortInUse(PlatformError):
    """A port a platform process needs is taken by another process."""

    code = "port_in_use"


class BrokerUnreachable(PlatformError):
    """The Redis that Celery uses as its broker cannot be reached."""

    code = "broker_unreachable"


class DatabaseUnreachable(PlatformError):
    """A database a platform process needs cannot be reached or used."""

    code = "database_unreachable"


@dataclass(frozen=True)
class PortRequest:
    """A port that one platform process will bind."""

    process: str
    host: str
    port: int


def port_holder(port: int) -> str | None:
    """Describe the process listening on ``port`` (``"pid 42 (python)"``), when it can be seen."""
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in connections:
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            if conn.pid is None:
                return None
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.Error:
                name = "?"
            return f"pid {conn.pid} ({name})"
    return None


def port_is_free(host: str, port: int) -> bool:
    """True when a server could bind ``host:port`` now (as uvicorn does, with SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def check_ports(requests: Sequence[PortRequest]) -> None:
    """Refuse ports configured twice or already in use, naming the process that wanted them."""
    seen: dict[int, str] = {}
    for request in requests:
        if request.port in seen:
            raise ConfigurationError(
                f"port {request.port} is configured for both {seen[request.port]} and "
                f"{request.process}; give each its own port (MLWP_*_PORT)"
            )
        seen[request.port] = request.process
    for request in requests:
        if not port_is_free(request.host, request.port):
            holder = port_holder(request.port)
            held = f" by {holder}" if holder else ""
            raise PortInUse(
                f"port {request.port} on {request.host} (wanted by {request.process}) is "
                f"already in use{held}; stop that process or choose another port"
            )


def display_url(url: str) -> str:
    """Return a database URL with its password hidden, for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def check_database(user: str, url: str, *, timeout: int = 5) -> None:
    """Connect to the database at ``url`` once; raise a one-line cause naming ``user`` if not."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    shown = display_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"{user}: not a database URL: {shown!r} ({exc})") from exc
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise ConfigurationError(f"{user}: an in-memory SQLite database cannot be shared")
        folder = Path(database).expanduser().resolve().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnreachable(
                f"{user} database {shown}: cannot create folder {folder}: {exc.strerror}"
            ) from exc
        return
    connect_args: dict[str, object] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = timeout
    try:
        engine = create_engine(parsed, connect_args=connect_args, poolclass=None)
    except (NoSuchModuleError, ImportError) as exc:
        raise ConfigurationError(f"{user}: no driver for database {shown}: {exc}") from exc
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        first = cause[0] if cause else type(exc).__name__
        raise DatabaseUnreachable(f"{user} database {shown} is unreachable: {first}") from exc
    finally:
        engine.dispose()


class LocalStateInProduction(ConfigurationError):
    """A production-shaped platform is configured to keep shared state on this host's disk."""

    code = "local_state_in_production"


def _on_local_disk(uri: str) -> bool:
    """True for a ``file://`` URI, a plain path or a SQLite database: this host's disk."""
    from urllib.parse import urlparse

    scheme = urlparse(uri).scheme.lower()
    return scheme in ("", "file") or scheme.startswith("sqlite")


def local_state_problems(settings: Settings) -> list[str]:
    """Each piece of shared state the settings leave on this host's disk, naming its setting.

    Shared state is what a second worker, api-server or serving replica must see: datasets,
    MLflow's store and artifacts, task logs, the audit trail, API keys, login counts and the
    secrets that sign and encrypt. Per-process scratch (temporary folders, the local copy of a
    running task's log, serving's model download cache) is not shared and not checked.
    """
    problems: list[str] = []

    def local(setting: str, uri: str, fix: str) -> None:
        if _on_local_disk(uri):
            problems.append(f"{setting}={display_url(uri)} is on this host's disk; {fix}")

    local("MLWP_STORAGE_ROOT", settings.storage_uri, "use an s3:// root")
    local(
        "MLWP_MLFLOW_ARTIFACTS_DESTINATION",
        settings.mlflow_artifacts_uri,
        "use an s3:// destination (the tracking server proxies it)",
    )
    local(
        "MLWP_MLFLOW_BACKEND_STORE_URI",
        settings.mlflow_backend_uri,
        "use a PostgreSQL URL",
    )
    local("MLWP_DATABASE_URL", settings.airflow_database_url, "use a PostgreSQL URL")
    if settings.audit_database_url:  # else the metadata database, checked just above
        local("MLWP_AUDIT_DATABASE_URL", settings.audit_database_url, "use a PostgreSQL URL")
    local(
        "MLWP_SERVING_DATABASE_URL",
        settings.serving_key_database_url,
        "use a PostgreSQL URL (it may be the metadata database)",
    )
    if not settings.remote_log_folder:
        problems.append(
            "MLWP_REMOTE_LOG_FOLDER is unset, so task logs stay on the disk of the host that "
            "ran each task; set an s3:// folder"
        )
    else:
        local("MLWP_REMOTE_LOG_FOLDER", settings.remote_log_folder, "use an s3:// folder")
    if settings.auth_rate_limit_storage_uri.startswith("memory://"):
        problems.append(
            "MLWP_REDIS_URL (or MLWP_AUTH_RATE_LIMIT_STORAGE) is unset, so each api-server "
            "replica counts failed logins on its own; set a redis:// URL"
        )
    missing = [
        name
        for name, value in (
            ("MLWP_FERNET_KEY", settings.fernet_key),
            ("MLWP_JWT_SECRET", settings.jwt_secret),
            ("MLWP_API_SECRET_KEY", settings.api_secret_key),
        )
        if value is None
    ]
    if missing:
        problems.append(
            f"{', '.join(missing)} unset, so they are generated into {settings.secrets_file} "
            "and differ between hosts; set the same values on every host"
        )
    return problems


def check_shared_state(settings: Settings) -> None:
    """Refuse a production-shaped platform whose shared state would live on this host's disk.

    Production-shaped means ``MLWP_PRODUCTION=true``, or, when that is unset, an executor
    other than LocalExecutor alone (workers on other hosts cannot see this one's disk).
    Every problem is reported at once, each naming its setting.
    """
    if not settings.production_shaped:
        return
    problems = local_state_problems(settings)
    if not problems:
        return
    why = (
        "MLWP_PRODUCTION=true"
        if settings.production
        else f"MLWP_EXECUTOR={settings.executor} runs tasks on other hosts"
    )
    raise LocalStateInProduction(
        f"production-shaped platform ({why}) keeps shared state on this host's disk:\n"
        + "\n".join(f"  - {problem}" for problem in problems)
        + "\nSet these (docs/platform.md, 'State: where everything lives'), or "
        "MLWP_PRODUCTION=false to run on one host's disk anyway (development only)."
    )


def display_broker(url: str) -> str:
    """A broker URL with its password hidden, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def check_redis(user: str, url: str, *, timeout: float = 5.0) -> None:
    """PING the Redis at ``url`` once; raise a one-line cause naming ``user`` if it fails."""
    import redis

    shown = display_broker(url)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError as exc:
        raise ConfigurationError(f"{user}: not a Redis URL: {shown!r} ({exc})") from exc
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BrokerUnreachable(f"{user} at {shown} is unreachable: {exc}") from exc
    finally:
        client.close()
