"""The deploy task's conversation with serving: ask for a reload, wait until the deployed
version serves under its alias (bounded), and report what was seen.

Serving is simulated with ``httpx.MockTransport`` answering as ``serving/`` does
(``POST /admin/reload`` 202 with the sync, ``GET /v1/models`` with ``syncs``), so each case
runs in milliseconds; the real service is exercised by tests/e2e/test_churn_serving.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from mlwp.registry.serving_client import reload_and_wait

pytestmark = pytest.mark.unit

MODEL = "churn"


def _entry(variants: dict[str, str], traffic: dict[str, float], errors: Any = ()) -> dict:
    return {
        "name": MODEL,
        "variants": [{"alias": a, "version": v} for a, v in variants.items()],
        "traffic": traffic,
        "load_errors": list(errors),
        "signature": {"big": "schema"},
    }


class FakeServing:
    """Answers reload with sync ids 1, 2, ...; ``models(poll)`` says what a poll lists."""

    def __init__(self, models: Callable[[int, FakeServing], dict[str, Any]]) -> None:
        self.models = models
        self.reloads = 0
        self.polls = 0
        self.headers: list[str | None] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers.get("authorization"))
        if request.method == "POST" and request.url.path == "/admin/reload":
            self.reloads += 1
            sync = {"id": self.reloads, "state": "queued", "trigger": "reload"}
            return httpx.Response(202, json={"status": "started", "done": False, "sync": sync})
        if request.method == "GET" and request.url.path == "/v1/models":
            self.polls += 1
            return httpx.Response(200, json=self.models(self.polls, self))
        return httpx.Response(404, json={"error": {"code": "not_found"}})

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))


def _listing(entries: list[dict], last_sync: int | None, **extra: Any) -> dict[str, Any]:
    return {
        "models": entries,
        "registry_error": None,
        "missing_models": {},
        "syncs": {"last": {"id": last_sync} if last_sync else None},
        **extra,
    }


def _run(fake: FakeServing, **kwargs: Any) -> Any:
    values: dict[str, Any] = {
        "alias": "challenger",
        "version": "2",
        "traffic": {"champion": 90, "challenger": 10},
        "timeout": 30,
        "poll_seconds": 0.001,
        "client": fake.client(),
        **kwargs,
    }
    return reload_and_wait(
        "http://serving/", MODEL, values.pop("alias"), values.pop("version"),
        values.pop("traffic"), **values,
    )  # fmt: skip


def test_waits_through_a_slow_load_until_the_version_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = _entry({"champion": "1"}, {"champion": 100.0})
    new = _entry({"champion": "1", "challenger": "2"}, {"champion": 90.0, "challenger": 10.0})

    # the reload's sync (1) runs for four polls, loading version 2
    def models(poll: int, fake: FakeServing) -> dict[str, Any]:
        return _listing([new if poll > 4 else old], last_sync=1 if poll > 4 else None)

    fake = FakeServing(models)
    with caplog.at_level(logging.INFO, logger="mlwp.registry.serving_client"):
        outcome = _run(fake, api_key="mlwp_admin")
    assert outcome.confirmed and outcome.state == "serving"
    assert fake.reloads == 1 and fake.polls == 5
    assert set(fake.headers) == {"Bearer mlwp_admin"}
    assert outcome.sync["id"] == 1
    assert outcome.seen == {
        "variants": {"champion": "1", "challenger": "2"},
        "traffic": {"champion": 90.0, "challenger": 10.0},
        "load_errors": [],
    }
    text = caplog.text
    assert "Serving answered 202 to POST http://serving/admin/reload: started sync 1" in text
    assert "Waiting up to 30 s for serving to show churn@challenger = version 2" in text
    assert "serving shows churn@challenger = version 2 after" in text


def test_traffic_must_match_too() -> None:
    same_version = _entry({"champion": "1", "challenger": "2"}, {"champion": 50, "challenger": 50})
    fake = FakeServing(lambda poll, f: _listing([same_version], last_sync=None))
    outcome = _run(fake, timeout=0.05, poll_seconds=0.01)
    assert outcome.state == "timeout"
    assert "did not show churn@challenger = version 2 within" in outcome.message
    assert "traffic {'champion': 50, 'challenger': 50}" in outcome.message


def test_a_load_failure_stops_the_wait_and_names_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = {
        "alias": "challenger",
        "version": "2",
        "error": "churn version 2: XGBoostError: corrupt",
        "serving_version": None,
    }
    failed = _entry({"champion": "1"}, {"champion": 90.0, "challenger": 10.0}, [error])
    fake = FakeServing(lambda poll, f: _listing([failed], last_sync=1 if poll > 1 else None))
    with caplog.at_level(logging.WARNING, logger="mlwp.registry.serving_client"):
        outcome = _run(fake)
    assert outcome.state == "load_failed" and not outcome.confirmed
    assert fake.polls == 2  # stopped as soon as the covering sync had finished
    assert "could not load churn version 2 for challenger: churn version 2: XGBoostError" in (
        caplog.text
    )


def test_a_model_serving_does_not_serve_stops_the_wait() -> None:
    other = {**_entry({"champion": "3"}, {"champion": 100.0}), "name": "credit"}
    fake = FakeServing(lambda poll, f: _listing([other], last_sync=1))
    outcome = _run(fake)
    assert outcome.state == "not_served"
    assert "does not serve 'churn'" in outcome.message and "credit" in outcome.message

    missing = FakeServing(
        lambda poll, f: _listing(
            [], last_sync=1, missing_models={MODEL: "no registered model named 'churn'"}
        )
    )
    assert _run(missing).state == "not_served"


def test_a_sync_that_missed_the_change_is_asked_again() -> None:
    new = _entry({"champion": "1", "challenger": "2"}, {"champion": 90, "challenger": 10})

    # sync 1 hit a registry error; the client asks again and sync 2 brings version 2
    def models(poll: int, fake: FakeServing) -> dict[str, Any]:
        if fake.reloads == 1:
            return _listing([], last_sync=1, registry_error="ConnectionError: refused")
        return _listing([new], last_sync=2)

    fake = FakeServing(models)
    outcome = _run(fake)
    assert outcome.confirmed
    assert fake.reloads == 2 and outcome.sync["id"] == 2


def test_unreachable_refused_and_not_waiting_are_reported() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    outcome = reload_and_wait(
        "http://serving", MODEL, "champion", "1", None,
        client=httpx.Client(transport=httpx.MockTransport(down)),
    )  # fmt: skip
    assert outcome.state == "unreachable" and "ConnectError" in outcome.message

    refused = reload_and_wait(
        "http://serving", MODEL, "champion", "1", None,
        client=httpx.Client(transport=httpx.MockTransport(
            lambda r: httpx.Response(403, json={"error": {"code": "admin_scope_required"}})
        )),
    )  # fmt: skip
    assert refused.state == "refused" and "403" in refused.message

    fake = FakeServing(lambda poll, f: _listing([], last_sync=None))
    requested = _run(fake, timeout=0)
    assert requested.state == "requested" and fake.polls == 0 and fake.reloads == 1


def test_an_older_service_that_synced_before_answering() -> None:
    new = _entry({"champion": "1"}, {"champion": 100})

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/admin/reload":
            return httpx.Response(200, json={"registry_error": None, "models": {}})
        return httpx.Response(200, json={"models": [new], "registry_error": None})

    outcome = reload_and_wait(
        "http://serving", MODEL, "champion", "1", {"champion": 100},
        client=httpx.Client(transport=httpx.MockTransport(handler)),
    )  # fmt: skip
    assert outcome.confirmed and outcome.sync is None
