"""The background C tree builds: one at a time, logged, a failure or an unloaded version
neither ends the thread nor keeps a model alive (fake models: no compiler needed)."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from serving.models import manager
from serving.models.manager import TreeBuilds

pytestmark = pytest.mark.unit


class FakeModel:
    def __init__(self, gate: threading.Event | None = None, error: bool = False) -> None:
        self.gate, self.error = gate, error
        self.built_in: list[str] = []

    def build_native_trees(self, native_cache: Path) -> str:
        self.built_in.append(threading.current_thread().name)
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.error:
            raise RuntimeError("boom")
        return "C trees"


def _wait(builds: TreeBuilds) -> None:
    for _ in range(200):
        if builds.pending == 0:
            return
        time.sleep(0.05)
    raise TimeoutError("builds still pending")


def test_builds_run_one_at_a_time_in_order_and_are_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = mock.MagicMock()
    monkeypatch.setattr(manager, "log", log)
    builds = TreeBuilds()
    gate = threading.Event()
    first, failing, unloaded, last = (
        FakeModel(gate),
        FakeModel(error=True),
        FakeModel(),
        FakeModel(),
    )
    builds.submit("m", "1", first, tmp_path)  # type: ignore[arg-type]
    builds.submit("m", "2", failing, tmp_path)  # type: ignore[arg-type]
    builds.submit("m", "3", unloaded, tmp_path)  # type: ignore[arg-type]
    builds.submit("m", "4", last, tmp_path)  # type: ignore[arg-type]
    gone = weakref.ref(unloaded)
    del unloaded  # unloaded before its turn: skipped, not kept alive by the queue
    gc.collect()
    assert gone() is None
    time.sleep(0.2)
    assert first.built_in == ["mlwp-trees"] and failing.built_in == []  # one at a time
    assert builds.pending == 4
    gate.set()
    _wait(builds)
    outcomes = {
        c.kwargs["version"]: c.kwargs["outcome"]
        for c in log.info.call_args_list
        if c.args == ("trees_built",)
    }
    assert outcomes == {
        "1": "C trees",
        "2": "failed: RuntimeError: boom",
        "3": "skipped: the version was unloaded before its build",
        "4": "C trees",
    }
    assert last.built_in == ["mlwp-trees"]
    builds.close()
    builds.submit("m", "5", FakeModel(), tmp_path)  # type: ignore[arg-type]
    assert builds.pending == 0  # closed: nothing more is queued


def test_a_version_unloaded_during_its_build_is_freed_after(tmp_path: Path) -> None:
    builds = TreeBuilds()
    gate = threading.Event()
    model: Any = FakeModel(gate)
    builds.submit("m", "1", model, tmp_path)
    gone = weakref.ref(model)
    for _ in range(100):
        if model.built_in:
            break
        time.sleep(0.02)
    del model
    gate.set()
    _wait(builds)
    gc.collect()
    assert gone() is None
    builds.close()
