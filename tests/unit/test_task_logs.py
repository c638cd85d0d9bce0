"""Task logs stay clean: library output at its real level, no deprecation warning per task.

Before: a task's stderr is logged at ERROR by Airflow's supervisor, and MLflow wrote its
informational lines ("Registered model ... already exists. Creating a new version") to stderr
through its own handler; every task started with Airflow's deprecation warning for
``airflow.security.permissions``, imported by ``DAG(access_control=...)``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from mlwp.platform.airflow_config import airflow_environment
from mlwp.settings import REPO_ROOT, Settings
from operators.compiler import load_projects

pytestmark = pytest.mark.unit

PROBE = """
import json, logging, mlflow
logger = logging.getLogger("mlflow.store.model_registry")
root = logging.getLogger("mlflow")
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append((record.levelname, record.getMessage()))
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.INFO)
logger.info("Registered model 'churn' already exists. Creating a new version of this model...")
print(json.dumps({"records": records, "handlers": len(root.handlers), "propagate": root.propagate}))
"""


def test_mlflow_logs_reach_airflows_logging_at_their_level_not_stderr(tmp_path: Path) -> None:
    env = {**airflow_environment(Settings(home=tmp_path)), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=REPO_ROOT,
    )
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["propagate"] is True and seen["handlers"] == 0
    assert seen["records"] == [
        ["INFO", "Registered model 'churn' already exists. Creating a new version of this model..."]
    ]
    assert "Registered model" not in result.stderr


def test_a_task_runs_dag_is_built_without_deprecation_warnings() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = load_projects(
            REPO_ROOT / "dags" / "projects",
            dag_id="churn.train",
            expectations_dir=REPO_ROOT / "expectations",
        )
    assert list(result.dags) == ["churn.train"]
    assert result.dags["churn.train"].access_control is None
    deprecations = [
        str(w.message) for w in caught if issubclass(w.category, DeprecationWarning | FutureWarning)
    ]
    assert deprecations == []


def test_mlflows_registration_notes_are_logged_at_info_not_printed_to_stderr(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """mlflow.register_model prints "Created version ..." to stderr (its eprint), which the
    task supervisor logged at ERROR; mlwp.registry logs it at INFO, anything else at WARNING."""
    import logging

    from mlflow.utils.logging_utils import eprint

    from mlwp.registry.registration import _notes_to_log

    with caplog.at_level(logging.INFO, logger="mlwp.registry"), _notes_to_log():
        eprint("Created version '3' of model 'churn'.")
        eprint("something unexpected")
    assert capsys.readouterr().err == ""
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "Created version '3' of model 'churn'."),
        ("WARNING", "something unexpected"),
    ]


def test_tasks_draw_no_mlflow_progress_bar() -> None:
    """MLflow's artifact progress bars go to stderr, which a task logs at ERROR."""
    import os

    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    import operators._common  # noqa: F401 - sets the default for every task process

    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is False
