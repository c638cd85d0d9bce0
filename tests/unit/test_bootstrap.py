"""First-run set-up steps that need no Airflow database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mlwp.errors import PlatformError
from mlwp.platform import bootstrap
from mlwp.settings import Settings


def test_a_too_short_admin_password_stops_the_start_with_the_reason(tmp_path: Path) -> None:
    # operators.rbac refuses it before touching the database; nothing is written. `mlwp up`
    # has migrated the database by then: a file with Airflow's version table stands for it
    # (user commands check for that first, mlwp.security.client.require_airflow_database).
    settings = Settings(home=tmp_path / "home", admin_password="short")
    settings.home.mkdir()
    with sqlite3.connect(settings.home / "airflow.db") as database:
        database.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
    log = tmp_path / "init.log"
    with pytest.raises(PlatformError, match="at least 12 characters") as refused:
        bootstrap.ensure_admin(settings, log)
    assert str(log) in refused.value.message
    assert "at least 12 characters" in log.read_text()
    assert not settings.credentials_file.exists()


def test_a_stop_ends_a_running_set_up_step_at_once(tmp_path: Path) -> None:
    """Ctrl-C during the roles sync used to wait for the step (up to its 10-minute bound)."""
    import sys
    import threading
    import time

    outcome: list[BaseException] = []

    def step() -> None:
        try:
            bootstrap._run_logged(
                "a long step", [sys.executable, "-c", "import time; time.sleep(120)"], {}, log
            )
        except PlatformError as exc:
            outcome.append(exc)

    log = tmp_path / "init.log"
    runner = threading.Thread(target=step)
    runner.start()
    deadline = time.monotonic() + 30
    while not bootstrap._running_steps and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    bootstrap.stop_running_steps()
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert time.monotonic() - started < 10
    assert outcome and "a long step failed with code -15" in str(outcome[0])
    assert not bootstrap._running_steps
