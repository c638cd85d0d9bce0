"""Checks made before anything starts: free ports, reachable databases.

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


class PortInUse(PlatformError):
    """A port a platform process needs is taken by another process."""

    code = "port_in_use"


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
