"""POST /admin/reload starts or joins a background sync; syncs never overlap; none is lost.

The registry sync is replaced by a gated fake (``ModelManager.sync`` blocks until the test
lets it finish), so a load as slow as the test wants costs no MLflow and no model. The real
sync against MLflow is covered in ``test_reload.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from serving_harness import running

from serving.core.config import ServingSettings
from serving.models.manager import ModelManager

pytestmark = [pytest.mark.unit, pytest.mark.anyio]


class GatedSync:
    """Stands in for ``ModelManager.sync``: counts calls and overlaps, blocks while closed."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, manager: ModelManager) -> dict[str, Any]:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            number = self.calls
        self.entered.set()
        try:
            if not self.gate.wait(timeout=30):
                raise TimeoutError("the test never opened the gate")
            manager.synced_once = True
            return {"registry_error": None, "models": {"fake": {"call": number}}}
        finally:
            with self._lock:
                self.active -= 1

    async def entered_wait(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 10), "no sync started"
        self.entered.clear()


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedSync]:
    fake = GatedSync()

    def sync(manager: ModelManager) -> dict[str, Any]:  # a function: binds as a method
        return fake(manager)

    monkeypatch.setattr(ModelManager, "sync", sync)
    yield fake
    fake.gate.set()


def _settings(tmp_path: Path, **overrides: Any) -> ServingSettings:
    values: dict[str, Any] = {
        "home": tmp_path / "home",
        "mlflow_tracking_uri": "http://127.0.0.1:9",  # never contacted: the sync is faked
        "poll_interval_seconds": 0,
        **overrides,
    }
    return ServingSettings(**values)


@asynccontextmanager
async def serve(tmp_path: Path, **overrides: Any) -> AsyncIterator[Any]:
    """The app in-process (no model is ever ready here), after its start sync."""
    async with running(_settings(tmp_path, **overrides), wait_ready=False) as svc:
        await _until_finished(svc, 1)
        yield svc


async def _last_sync_id(svc: Any) -> int | None:
    listed = (await svc.client.get("/v1/models", headers=svc.auth())).json()
    last = listed["syncs"]["last"]
    return last["id"] if last else None


async def _until_finished(svc: Any, sync_id: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while (last := await _last_sync_id(svc)) is None or last < sync_id:
        assert time.monotonic() < deadline, f"sync {sync_id} did not finish (last {last})"
        await asyncio.sleep(0.02)


async def test_slow_sync_answers_202_at_once_and_still_completes(
    tmp_path: Path, gated: GatedSync
) -> None:
    async with serve(tmp_path) as svc:
        gated.gate.clear()  # from now on a sync takes as long as the test wants
        started = time.monotonic()
        response = await svc.client.post("/admin/reload", headers=svc.auth())
        assert time.monotonic() - started < 2
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "started" and body["done"] is False
        assert body["sync"]["trigger"] == "reload"
        assert body["sync"]["state"] in {"queued", "running"}
        assert "models" in body and "registry_error" in body  # what serves meanwhile
        await gated.entered_wait()
        listed = (await svc.client.get("/v1/models", headers=svc.auth())).json()
        assert listed["syncs"]["running"]["id"] == body["sync"]["id"]
        assert listed["syncs"]["running"]["state"] == "running"

        # "longer than the caller's timeout": nobody waits, the sync goes on and finishes
        await asyncio.sleep(0.3)
        gated.gate.set()
        await _until_finished(svc, body["sync"]["id"])
        listed = (await svc.client.get("/v1/models", headers=svc.auth())).json()
        assert listed["syncs"]["last"]["state"] == "finished"
        assert listed["syncs"]["last"]["error"] is None
        assert listed["syncs"]["running"] is None
        assert gated.calls == 2  # the start sync and the reload


async def test_wait_true_answers_the_result_or_202_at_its_timeout(
    tmp_path: Path, gated: GatedSync
) -> None:
    async with serve(tmp_path) as svc:
        response = await svc.client.post("/admin/reload?wait=true", headers=svc.auth())
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["done"] is True and body["sync"]["state"] == "finished"
        assert body["models"] == {"fake": {"call": 2}}  # the sync's own result

        gated.gate.clear()
        response = await svc.client.post("/admin/reload?wait=true&timeout=0.2", headers=svc.auth())
        assert response.status_code == 202, response.text
        timed_out = response.json()
        assert timed_out["done"] is False
        gated.gate.set()
        await _until_finished(svc, timed_out["sync"]["id"])  # not lost with its caller
        assert gated.calls == 3

        bad = await svc.client.post("/admin/reload?timeout=0", headers=svc.auth())
        assert bad.status_code == 422
        assert bad.json()["error"]["code"] == "invalid_input"
        # a parameter is named as one, not as pydantic's "query.timeout"
        assert bad.json()["error"]["message"] == (
            "query parameter 'timeout': Input should be greater than 0"
        )
        assert bad.json()["error"]["details"][0] == {
            "location": "timeout",
            "in": "query",
            "message": "Input should be greater than 0",
        }


async def test_concurrent_reloads_join_one_sync_and_never_overlap(
    tmp_path: Path, gated: GatedSync
) -> None:
    async with serve(tmp_path) as svc:
        calls_before = gated.calls
        gated.gate.clear()
        first = (await svc.client.post("/admin/reload", headers=svc.auth())).json()
        await gated.entered_wait()  # sync 1 is reading the registry: later requests may
        # have changed it since, so they must not be satisfied by it
        answers = await asyncio.gather(
            *(svc.client.post("/admin/reload", headers=svc.auth()) for _ in range(8))
        )
        bodies = [a.json() for a in answers]
        assert all(a.status_code == 202 for a in answers)
        follow_up = {b["sync"]["id"] for b in bodies}
        assert len(follow_up) == 1 and follow_up != {first["sync"]["id"]}
        assert sorted(b["status"] for b in bodies) == ["joined"] * 7 + ["queued"]
        listed = (await svc.client.get("/v1/models", headers=svc.auth())).json()
        assert listed["syncs"]["queued"]["joined"] == 7

        gated.gate.set()
        await _until_finished(svc, follow_up.pop())
        assert gated.calls - calls_before == 2  # nine requests, two syncs
        assert gated.max_active == 1


async def test_poller_and_reload_share_the_runner(tmp_path: Path, gated: GatedSync) -> None:
    async with serve(tmp_path, poll_interval_seconds=0.01) as svc:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            response = await svc.client.post("/admin/reload", headers=svc.auth())
            assert response.status_code == 202
            await asyncio.sleep(0.01)
        await _until_finished(svc, response.json()["sync"]["id"])
        assert gated.max_active == 1
        assert gated.calls > 2


async def test_shutdown_wakes_a_waiting_caller(tmp_path: Path, gated: GatedSync) -> None:
    from serving.main import create_app

    app = create_app(_settings(tmp_path))
    runner = app.state.services.syncs
    gated.gate.clear()
    run, how = runner.request("reload")
    assert how == "started"
    await gated.entered_wait()
    queued, how = runner.request("reload")
    assert how == "queued"
    await runner.close()
    assert run.done and queued.done
    assert queued.error and "shutting down" in queued.error
    assert await queued.wait(0.1)
    gated.gate.set()
