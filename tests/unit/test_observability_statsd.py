"""mlwp's task metrics through Airflow's real StatsD client, parsed and mapped.

A fresh Python process with the platform's metrics settings (StatsD on, tags InfluxDB-style,
no legacy names) calls ``MlwpOperator.stat`` as the operators do: the validation failure
counter, the training timing, the monitor task's gauges. The packets reach a UDP listener
of this test and go through observability/statsd/mapping.yaml; every ``mlwp_*`` name the
dashboards and alert rules use must come out, with project, workflow and task labels (and the
model for the monitor's). Airflow's own metrics of a real scheduler run are checked the same
way in tests/integration/test_first_run.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time

from checkers import REPO_ROOT
from observability_names import Packet, dashboard_exprs, map_packet, metric_names, rule_exprs

EMIT = """
from types import SimpleNamespace
from operators._common import MlwpOperator

task = SimpleNamespace(project="churn", workflow="monitor", task_id="monitor")
MlwpOperator.stat(task, "incr", "validate.failed")
MlwpOperator.stat(task, "timing", "train.seconds", 1234.5)
MlwpOperator.stat(task, "gauge", "register.registered", 1)
for name, value in {"drift_share": 0.25, "drifted": 1.0, "srm_p_value": 0.5,
                    "srm_mismatch": 0.0, "comparison_p_value": 0.04, "labelled_rows": 100.0,
                    "label_coverage.champion": 0.8}.items():
    MlwpOperator.stat(task, "gauge", f"monitor.churn.{name}", value)
"""


def test_operator_metrics_arrive_under_the_names_the_dashboards_use() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__METRICS__")},
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(sock.getsockname()[1]),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
        "AIRFLOW__METRICS__LEGACY_NAMES_ON": "False",
    }
    done = subprocess.run(
        [sys.executable, "-c", EMIT], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(lines) < 10:  # the ten stats sent above
        with contextlib.suppress(TimeoutError):
            received = sock.recv(65535).decode().splitlines()
            lines += [line for line in received if line.startswith("airflow.mlwp.")]
    sock.close()
    mapped = {}
    for line in lines:
        found = map_packet(Packet.parse(line))
        assert found is not None, f"no mapping names {line!r}"
        for name in found.series_names():
            mapped[name] = found.labels
    assert mapped["mlwp_validate_failed_total"] == {
        "project": "churn", "workflow": "monitor", "task": "monitor",
    }  # fmt: skip
    assert "mlwp_train_seconds_bucket" in mapped
    assert mapped["mlwp_monitor_drift_share"]["model"] == "churn"
    assert mapped["mlwp_monitor_label_coverage"] == {
        "project": "churn", "workflow": "monitor", "task": "monitor",
        "model": "churn", "variant": "champion",
    }  # fmt: skip
    used = {
        name
        for _, _, expr in [*dashboard_exprs(), *rule_exprs()]
        for name in metric_names(expr)
        if name.startswith("mlwp_") and not name.startswith("mlwp_serving_")
    }
    assert used
    assert used <= set(mapped), sorted(used - set(mapped))
