"""Run the serving app in-process (with its lifespan) behind an httpx client."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx

# the one way the tests stop a process group (tests/server_process.py)
from server_process import run_mlflow_server
from server_process import stop_process_group as stop_process

VENV_BIN = Path(sys.executable).parent


@contextmanager
def start_mlflow(root: Path, *, port: int | None = None, timeout: float = 600) -> Iterator[str]:
    """A real MLflow tracking server (``server_process.run_mlflow_server``) that
    ``stop_mlflow`` can stop before the block ends."""
    with run_mlflow_server(root, port=port, timeout=timeout) as (url, proc):
        _MLFLOW_PROCS[url] = proc
        try:
            yield url
        finally:
            _MLFLOW_PROCS.pop(url, None)


_MLFLOW_PROCS: dict[str, subprocess.Popen[bytes]] = {}


def stop_mlflow(url: str) -> None:
    """Stop a server started by ``start_mlflow`` before its block ends (an outage)."""
    stop_process(_MLFLOW_PROCS[url])


class Service:
    """A running in-process service: its app, an HTTP client and an admin key."""

    def __init__(self, app: Any, client: httpx.AsyncClient, admin_token: str | None) -> None:
        self.app = app
        self.client = client
        self.admin_token = admin_token

    @property
    def services(self) -> Any:
        return self.app.state.services

    def key(self, *scopes: str, rate_limit: str | None = None) -> str:
        _, token = self.services.keys.create("test", list(scopes), rate_limit=rate_limit)
        return str(token)

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin_token}"}


@asynccontextmanager
async def running(settings: Any, *, wait_ready: bool = True) -> AsyncIterator[Service]:
    from asgi_lifespan import LifespanManager

    from serving.main import create_app

    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serving") as client:
            admin = None
            if app.state.services.keys is not None:
                _, admin = app.state.services.keys.create("admin", ["admin"])
            service = Service(app, client, admin)
            if wait_ready:
                for _ in range(600):
                    if (await client.get("/health/ready")).status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise TimeoutError("service not ready within 60 s")
            yield service


class Transport:
    """The transport an ``HttpProtocol`` is given in process: what the protocol writes, as
    one bytes string, and whether it closed the connection; a client at ``peer``."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.data = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return False  # as TLS: a close closes at once

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": (self.peer, 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass
