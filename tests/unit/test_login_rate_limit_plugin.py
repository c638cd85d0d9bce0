"""The api-server plugin that rate-limits failed logins, on a real ASGI app."""

from __future__ import annotations

import importlib.util
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlwp.settings import REPO_ROOT

pytestmark = pytest.mark.unit


def _plugin_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "mlwp_security_plugin", REPO_ROOT / "plugins" / "mlwp_security.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _token(request: Request) -> JSONResponse:
    body = await request.json()
    if body.get("password") == "right":
        return JSONResponse({"access_token": "t"}, status_code=201)
    return JSONResponse({"detail": "Invalid credentials"}, status_code=401)


async def _other(request: Request) -> JSONResponse:
    return JSONResponse({"detail": "nope"}, status_code=401)


def _app() -> Any:
    module = _plugin_module()
    app = Starlette(
        routes=[
            Route("/auth/token", _token, methods=["POST"]),
            Route("/api/v2/dags", _other, methods=["POST"]),
        ]
    )
    return module.FailedLoginRateLimitMiddleware(app, limit="3 per 60 second")


def _client(app: Any, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 1234))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.mark.anyio
async def test_failures_are_limited_per_address_and_successes_are_free() -> None:
    app = _app()
    async with _client(app, "10.0.0.1") as attacker, _client(app, "10.0.0.2") as other:
        for _ in range(5):  # successes never count
            assert (
                await attacker.post("/auth/token", json={"password": "right"})
            ).status_code == 201
        codes = [
            (await attacker.post("/auth/token", json={"password": "x"})).status_code
            for _ in range(4)
        ]
        assert codes == [401, 401, 401, 429]
        limited = await attacker.post("/auth/token", json={"password": "right"})
        assert limited.status_code == 429
        assert limited.json() == {"detail": "Too many failed login attempts. Try again later."}
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert (await other.post("/auth/token", json={"password": "right"})).status_code == 201
        # Other endpoints' 401s are not login failures.
        for _ in range(5):
            assert (await other.post("/api/v2/dags")).status_code == 401
        assert (await other.post("/auth/token", json={"password": "right"})).status_code == 201


def test_the_plugin_registers_the_middleware() -> None:
    module = _plugin_module()
    (entry,) = module.MlwpSecurityPlugin.fastapi_root_middlewares
    assert entry["middleware"] is module.FailedLoginRateLimitMiddleware
