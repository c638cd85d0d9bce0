"""The assembled app without models: CORS allow-list, security headers, error schema,
readiness before any model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.core.config import ServingSettings
from serving.main import create_app

pytestmark = pytest.mark.unit


def _client(tmp_path: Path, **overrides: object) -> TestClient:
    settings = ServingSettings(
        home=tmp_path,
        poll_interval_seconds=0,
        mlflow_tracking_uri="http://127.0.0.1:9",
        **overrides,
    )
    return TestClient(create_app(settings))  # no lifespan: no registry sync


def test_cors_allows_only_listed_origins(tmp_path: Path) -> None:
    client = _client(tmp_path, cors_origins=["https://app.example.com"])
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = client.options("/predict", headers={"Origin": "https://app.example.com", **preflight})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    refused = client.options("/predict", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers


def test_unknown_route_and_method_answer_in_the_error_schema(tmp_path: Path) -> None:
    client = _client(tmp_path)
    response = client.get("/nope", headers={"X-Request-ID": "abc"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found" and error["request_id"] == "abc"
    assert client.get("/predict").json()["error"]["code"] == "method_not_allowed"
    # a malformed incoming request id is replaced, never echoed
    odd = client.get("/health/live", headers={"X-Request-ID": "<script>"})
    assert odd.headers["x-request-id"] != "<script>" and len(odd.headers["x-request-id"]) == 32


def test_prediction_routes_keep_cors_headers_and_error_schema(tmp_path: Path) -> None:
    # the prediction routes skip FastAPI's router (serving.api.keyed_route.KeyedRoutes)
    client = _client(tmp_path, cors_origins=["https://app.example.com"])
    response = client.post(
        "/predict", json={"data": [{}]}, headers={"Origin": "https://app.example.com"}
    )
    assert response.status_code in (401, 503)
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert set(response.json()["error"]) >= {"code", "message", "request_id"}


def test_an_unexpected_error_in_a_prediction_is_a_500_in_the_schema(tmp_path: Path) -> None:
    settings = ServingSettings(
        home=tmp_path,
        poll_interval_seconds=0,
        mlflow_tracking_uri="http://127.0.0.1:9",
        auth_enabled=False,
    )
    app = create_app(settings)

    def broken(name: str) -> None:
        raise RuntimeError("boom")

    app.state.services.models.get = broken
    client = TestClient(app, raise_server_exceptions=False)
    response = client.post("/v1/models/m/predict", json={"data": [{}]})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "boom" not in response.text


def test_security_headers_and_not_ready_without_models(tmp_path: Path) -> None:
    client = _client(tmp_path)
    live = client.get("/health/live")
    assert live.status_code == 200
    assert live.headers["x-frame-options"] == "DENY"
    assert live.headers["content-security-policy"].startswith("default-src 'none'")
    assert "content-security-policy" not in client.get("/docs").headers
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "loading"


@pytest.mark.slow  # imports MLflow's client
def test_registry_unreachable_at_start_is_reported_not_fatal(tmp_path: Path) -> None:
    settings = ServingSettings(
        home=tmp_path,
        poll_interval_seconds=0,
        models=["churn"],
        mlflow_tracking_uri="http://127.0.0.1:9",
    )
    app = create_app(settings)
    with TestClient(app) as client:
        summary = app.state.services.models.sync()
        assert summary["registry_error"]
        response = client.post(
            "/v1/models/churn/predict", json={"data": [{}]}, headers={"Authorization": "Bearer x"}
        )
        assert response.status_code == 401
        _, token = app.state.services.keys.create("t", ["admin"])
        response = client.post(
            "/v1/models/churn/predict",
            json={"data": [{}]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "model_not_loaded"
        assert response.headers["retry-after"] == "5"
        assert client.get("/health/ready").json()["detail"]["registry_error"]


def test_fast_path_remembers_each_path_as_the_routes_match_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.routing import Match

    from serving.api import fast_predict

    monkeypatch.setattr(fast_predict, "MATCHED_PATHS", 3)  # the memory starts again often
    app = create_app(
        ServingSettings(home=tmp_path, poll_interval_seconds=0, mlflow_tracking_uri="http://x")
    )
    fast = app.state.fast_predict
    paths = ["/predict", "/v1/models/a/predict", "/v1/models/b%20c/predict", "/predict/", "/nope"]
    for path in paths * 3:
        scope = {"type": "http", "method": "POST", "root_path": "", "path": path, "headers": []}
        expected = None
        for route in fast.routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                expected = child_scope
                break
        got = fast.match(scope, trusted_proxy=False)
        assert got == expected, path
        if got is not None:  # each request's own parameters: a change does not carry over
            got["path_params"]["model"] = "changed"
    assert len(fast._matched) <= 3
