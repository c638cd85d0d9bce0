"""The failed-login limit shared through Redis: two api-server replicas (two apps, each with
its own instance of the mlwp_security middleware, as two processes would have) count the
same client's failures together once ``MLWP_REDIS_URL`` is set, with nothing else
configured; and a Redis outage (a private redis-server, stopped) neither fails logins nor
lifts the limit."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_process import free_port, stop_process_group
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlwp.settings import REPO_ROOT

pytestmark = pytest.mark.integration


def _replica() -> Any:
    """One api-server replica: a token endpoint behind a fresh copy of the plugin module."""
    spec = importlib.util.spec_from_file_location(
        f"mlwp_security_{random.getrandbits(32)}", REPO_ROOT / "plugins" / "mlwp_security.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    async def token(request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("password") == "right":
            return JSONResponse({"access_token": "t"}, status_code=201)
        return JSONResponse({"detail": "Invalid credentials"}, status_code=401)

    app = Starlette(routes=[Route("/auth/token", token, methods=["POST"])])
    return module.FailedLoginRateLimitMiddleware(app, limit="3 per 60 second")


@pytest.fixture
def client_address(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """MLWP_REDIS_URL set to the shared Redis; a client address no other test uses, whose
    counters are deleted afterwards (never a flush of the shared Redis)."""
    import redis

    monkeypatch.delenv("MLWP_AUTH_RATE_LIMIT_STORAGE", raising=False)
    monkeypatch.setenv("MLWP_REDIS_URL", redis_url)
    address = f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"
    yield address
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"*mlwp-login/{address}/*"):
        client.delete(key)
    client.close()


@pytest.mark.anyio
async def test_failures_on_one_replica_are_refused_on_the_other(client_address: str) -> None:
    first, second = _replica(), _replica()
    assert first.storage_uri.startswith("redis://")  # defaulted from MLWP_REDIS_URL

    def client(app: Any) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(client_address, 4321))
        return httpx.AsyncClient(transport=transport, base_url="http://api")

    async with client(first) as on_first, client(second) as on_second:
        assert (await on_first.post("/auth/token", json={"password": "x"})).status_code == 401
        assert (await on_second.post("/auth/token", json={"password": "x"})).status_code == 401
        assert (await on_first.post("/auth/token", json={"password": "x"})).status_code == 401
        # Three failures in all, two on the first replica: the second refuses even the
        # right password now, with the time to wait.
        refused = await on_second.post("/auth/token", json={"password": "right"})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert (await on_first.post("/auth/token", json={"password": "right"})).status_code == 429


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own (never the shared one), to be stopped mid-test."""
    import redis

    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 30
    while True:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                stop_process_group(proc)
                pytest.fail(f"redis-server on port {port} did not start")
            time.sleep(0.2)
    yield url, proc
    stop_process_group(proc)


@pytest.mark.anyio
async def test_a_redis_outage_neither_fails_logins_nor_lifts_the_limit(
    private_redis: tuple[str, subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, server = private_redis
    monkeypatch.delenv("MLWP_AUTH_RATE_LIMIT_STORAGE", raising=False)
    monkeypatch.setenv("MLWP_REDIS_URL", url)
    replica = _replica()
    transport = httpx.ASGITransport(app=replica, client=("10.9.8.7", 4321))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
        assert (await api.post("/auth/token", json={"password": "x"})).status_code == 401
        stop_process_group(server)
        # Redis is gone: logins still answer (no 500), and failures count in this process.
        assert (await api.post("/auth/token", json={"password": "right"})).status_code == 201
        codes = [
            (await api.post("/auth/token", json={"password": "x"})).status_code for _ in range(4)
        ]
        assert codes == [401, 401, 401, 429]
