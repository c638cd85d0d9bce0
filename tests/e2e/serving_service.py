"""The real serving service as a process for e2e tests: ``python -m serving`` on a free port,
reading given models from the MLflow server, with its own key database (an admin key for
the deploy and rollout tasks' reload requests, a prediction key for the client)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_process import free_port, stop_process_group, wait_for_http

from mlwp.settings import REPO_ROOT


@dataclass
class Serving:
    """The serving process: its URL, a prediction key for the model, and its log."""

    url: str
    key: str
    log: Path

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=self.auth(), timeout=30)

    def predict(self, records: list[dict[str, Any]], **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/predict",
            json={"data": records},
            headers={**self.auth(), **headers},
            timeout=30,
        )

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


@contextmanager
def run_serving(
    model: str,
    tracking_uri: str,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: Mapping[str, str] | None = None,
) -> Iterator[Serving]:
    """Start serving for ``model`` (registry polling off: only reload requests bring new
    versions in; ``settings``: more ``MLWP_SERVING_*`` variables) and point the platform
    settings at it (``MLWP_SERVING_PORT``, ``MLWP_SERVING_ADMIN_KEY``) for the tasks' reload
    requests. It captures into the platform's storage root (``MLWP_STORAGE_ROOT``)."""
    from serving.keys.store import KeyStore, migrate

    home.mkdir(parents=True, exist_ok=True)
    database = f"sqlite:///{home / 'serving.db'}"
    migrate(database)
    store = KeyStore(database, cache_seconds=0)
    _, admin = store.create("airflow-deploy", ["admin"])
    _, client = store.create("e2e-client", [f"model:{model}"])
    store.close()

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWP_SERVING_")}
    env.update(
        MLWP_SERVING_HOME=str(home),
        MLWP_SERVING_DATABASE_URL=database,
        MLWP_SERVING_MLFLOW_TRACKING_URI=tracking_uri,
        MLWP_SERVING_MODELS=json.dumps([model]),
        MLWP_SERVING_DEFAULT_MODEL=model,
        MLWP_SERVING_POLL_INTERVAL_SECONDS="0",
        MLWP_SERVING_LOG_LEVEL="INFO",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p),
    )
    env.update(settings or {})
    log = home / "serving.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = Serving(f"http://127.0.0.1:{port}", client, log)
    try:
        try:
            wait_for_http(f"{service.url}/health/live", timeout=180, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"serving did not start: {exc}\n{service.output()}")
        monkeypatch.setenv("MLWP_SERVING_PORT", str(port))
        monkeypatch.setenv("MLWP_SERVING_ADMIN_KEY", admin)
        yield service
    finally:
        stop_process_group(proc)
