"""The real path on the laptop default: ``mlwp up`` (LocalExecutor, SQLite, local folders),
the churn project trained, approved, deployed, served and scored through the scheduler.

See ``real_path.py`` for the story and what each step proves; here only the platform is
chosen: a fresh ``MLWP_HOME``, free ports, the embedded defaults (``mlwp up`` makes the
deploy task's serving key itself), and the key an application calls serving with, made
with ``mlwp keys create`` before the start.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from platform_process import clean_environment, running_platform
from real_path import create_client_key, run_churn

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


def test_churn_through_the_scheduler_with_local_executor(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = clean_environment(home)
    client_key = create_client_key(env)
    with running_platform(env, home) as platform:
        outcome = run_churn(platform, client_key)
        # The executor really was LocalExecutor: the task instances say so.
        ti = outcome.api.get(
            f"/dags/churn.train/dagRuns/{outcome.scheduled_run}/taskInstances/train"
        )
        assert ti["executor"] in (None, "LocalExecutor"), ti
        outcome.api.close()
    assert platform.proc.returncode == 0, platform.output()[-5000:]
