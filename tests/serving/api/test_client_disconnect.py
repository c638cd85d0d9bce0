"""A client that leaves before its body is complete: no 500, no traceback, its own status."""

from __future__ import annotations

from typing import Any

import pytest
from serving_harness import running
from telco import register_version

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]


async def test_disconnect_mid_body_is_counted_as_499_and_logged_without_traceback(
    make_settings: Any,
    mlflow_server: str,
    model_dirs: Any,
    model_name: str,
) -> None:
    """In process: the app neither raises nor answers. (The access log of a real server is
    checked in tests/serving/test_server.py.)"""
    register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    async with running(make_settings(models=[model_name])) as svc:
        messages = [
            {"type": "http.request", "body": b'{"data": [{"tenure": 1', "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": f"/v1/models/{model_name}/predict",
            "raw_path": f"/v1/models/{model_name}/predict".encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"serving"),
                (b"content-type", b"application/json"),
                (b"content-length", b"4000"),
                (b"authorization", f"Bearer {svc.admin_token}".encode()),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        await svc.app(scope, receive, send)  # nothing escapes to the server

        assert sent == []  # no response is owed to a gone client
        metrics = (await svc.client.get("/metrics")).text
        route = "/v1/models/{model}/predict"
        assert f'mlwp_serving_requests_total{{method="POST",route="{route}",status="499"}}' in (
            metrics
        )
        assert 'status="500"' not in metrics
