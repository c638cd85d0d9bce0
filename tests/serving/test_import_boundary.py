"""The serving service never imports Airflow or operators/ (its image has neither)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

PROBE = """
import sys, tempfile
from serving.core.config import ServingSettings
from serving.main import create_app
import serving.lambda_handler  # noqa: F401  (builds the app too)
create_app(ServingSettings(home=tempfile.mkdtemp(), poll_interval_seconds=0))
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('airflow', 'operators', 'pandas'))
print(','.join(bad))
"""


def test_serving_imports_neither_airflow_nor_operators_nor_pandas(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "MLWP_HOME": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ""
