"""Every route needs an API key unless it is listed, with a reason, in PUBLIC_ROUTES."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import APIRoute
from starlette.routing import Route

from serving.api.deps import AUTH_DEPENDENCIES, PUBLIC_ROUTES

pytestmark = pytest.mark.unit


def _calls(dependant: Any) -> set[Any]:
    found = {dependant.call}
    for sub in dependant.dependencies:
        found |= _calls(sub)
    return found


def _unprotected(app: Any) -> list[tuple[str, str]]:
    missing = []
    for route in app.routes:
        if not isinstance(route, Route | APIRoute):
            continue
        for method in sorted(route.methods or ()):
            if method in ("HEAD", "OPTIONS"):
                continue
            protected = isinstance(route, APIRoute) and bool(
                _calls(route.dependant) & set(AUTH_DEPENDENCIES)
            )
            if not protected and (method, route.path) not in PUBLIC_ROUTES:
                missing.append((method, route.path))
    return missing


def test_every_route_is_authenticated_or_listed(tmp_path: Any) -> None:
    from serving.core.config import ServingSettings
    from serving.main import create_app

    app = create_app(ServingSettings(home=tmp_path, poll_interval_seconds=0))
    assert _unprotected(app) == []
    # and the check has teeth: an unlisted, unauthenticated route is caught
    app.add_api_route("/v1/leak", lambda: {"x": 1}, methods=["GET"])
    assert _unprotected(app) == [("GET", "/v1/leak")]


def test_every_exemption_has_a_reason() -> None:
    assert all(reason.strip() for reason in PUBLIC_ROUTES.values())
