"""The scheduler plugin that starts the preloaded forkserver when the scheduler starts."""

from __future__ import annotations

import importlib.util
import multiprocessing
from multiprocessing import forkserver
from typing import Any

import pytest

from mlwp.settings import REPO_ROOT

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def plugin() -> Any:
    spec = importlib.util.spec_from_file_location(
        "mlwp_forkserver_plugin", REPO_ROOT / "plugins" / "mlwp_forkserver.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    calls: list[bool] = []
    monkeypatch.setattr(forkserver, "ensure_running", lambda: calls.append(True))
    return calls


def a_job() -> Any:
    from airflow.jobs.job import Job

    return Job.__new__(Job)  # the type is what counts; no database row needed


@pytest.mark.parametrize("method", ["forkserver", "fork", "spawn", None])
def test_only_a_job_using_a_forkserver_starts_it(
    plugin: Any, started: list[bool], monkeypatch: pytest.MonkeyPatch, method: str | None
) -> None:
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: method)
    assert plugin.start_forkserver_early(a_job()) is (method == "forkserver")
    assert started == ([True] if method == "forkserver" else [])


def test_a_task_process_never_starts_one(
    plugin: Any, started: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Task processes inherit the forkserver start method, but they are not jobs.
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "forkserver")
    plugin.ForkserverWarmup().on_starting(component=object())
    assert started == []


def test_the_plugin_registers_the_listener(plugin: Any) -> None:
    listeners = plugin.MlwpForkserverPlugin.listeners
    assert [type(listener).__name__ for listener in listeners] == ["ForkserverWarmup"]
