"""A project added while `mlwp up` runs gets its DAGs and its role without a manual step.

Before: the new project's DAGs named ``project:<p>`` in access_control before the role
existed, so serialization failed, Airflow recorded an import error for the loader file and
marked every DAG of it stale, until someone ran `mlwp roles sync` by hand.

The same platform proves Airflow's StatsD output (issue #17): `mlwp up` sends it (on in every
mode) to a UDP listener of this test, and the packets of the real scheduler run of
``hello.say`` are parsed and put through observability/statsd/mapping.yaml: the names the
dashboards and alert rules use come out, labelled with dag_id and task_id. With
``MLWP_OTEL_ENDPOINT`` pointed at an in-process OTLP receiver, Airflow's own OpenTelemetry
spans of that run arrive too.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from observability_names import (
    Mapped,
    Packet,
    dashboard_exprs,
    map_packet,
    metric_names,
    rule_exprs,
)
from otlp_receiver import OtlpReceiver
from platform_process import RunningPlatform
from test_platform_up import REPO_ROOT, clean_environment, start_platform, token, wait_for_churn_dag

HELLO = """\
project: hello
owner: admin
workflows:
  say:
    schedule: "@daily"
    tasks:
      greet: {type: python, callable: "builtins:dict", kwargs: {greeting: hi}}
"""


# Names of the dashboards and rules a successful run does not produce: they count failures.
NOT_FROM_A_SUCCESSFUL_RUN = {
    "airflow_ti_failures_total",  # a failed try
}


@contextmanager
def statsd_listener() -> Iterator[tuple[int, list[str]]]:
    """A UDP socket on a free port collecting StatsD lines, as the exporter would receive them."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    lines: list[str] = []
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                data = sock.recv(65535)
            except TimeoutError:
                continue
            lines.extend(line for line in data.decode().splitlines() if line)

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], lines
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


def _mapped(lines: list[str]) -> list[Mapped]:
    return [m for m in (map_packet(Packet.parse(line)) for line in list(lines)) if m is not None]


def _copy_dags(target: Path) -> Path:
    dags = target / "dags"
    (dags / "projects").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "dags" / "mlwp_projects.py", dags)
    shutil.copytree(REPO_ROOT / "dags" / "projects" / "churn", dags / "projects" / "churn")
    return dags


def _add_project(dags: Path, name: str) -> None:
    """A copy of the credit project under another name, written as a user would save it."""
    source = REPO_ROOT / "dags" / "projects" / "credit"
    staging = dags.parent / f".{name}"
    shutil.copytree(source, staging)
    text = (staging / "workflow.yaml").read_text().replace("project: credit", f"project: {name}")
    (staging / "workflow.yaml").write_text(text.replace("owner: alice", "owner: admin"))
    staging.rename(dags / "projects" / name)


@pytest.mark.integration
@pytest.mark.slow
# A start, two parse cycles, a roles sync and a task run: minutes on a loaded machine.
@pytest.mark.timeout(2400)
def test_a_project_added_while_running_gets_its_role_within_one_parse_cycle(
    tmp_path: Path,
) -> None:
    dags = _copy_dags(tmp_path)
    home = tmp_path / "home"
    receiver = OtlpReceiver()
    with statsd_listener() as (statsd_port, statsd_lines):
        env = clean_environment(
            home,
            MLWP_DAGS_FOLDER=str(dags),
            MLWP_STATSD_PORT=str(statsd_port),
            MLWP_OTEL_ENDPOINT=receiver.url,
        )
        platform = start_platform(env, home)
        try:
            _added_project_and_run(platform, dags, home)
            _statsd_of_the_run(statsd_lines)
            # Airflow's traces of the run (docs/observability.md, "Traces").
            spans = receiver.wait_for(
                lambda s: s["attributes"].get("airflow.dag_id") == "hello.say", timeout=60
            )
            assert any(s["resource"].get("service.name") == "mlwp-airflow" for s in spans), spans
        finally:
            platform.proc.send_signal(signal.SIGINT)
            platform.proc.wait(timeout=180)
            receiver.close()


def _statsd_of_the_run(lines: list[str]) -> None:
    """The run's StatsD packets, mapped: the names and labels the dashboards read."""
    deadline = time.monotonic() + 60
    wanted = {"airflow_ti_finish_total", "airflow_dagrun_duration_seconds"}
    while True:
        mapped = _mapped(lines)
        hello = {m.name for m in mapped if m.labels.get("dag_id") == "hello.say"}
        if wanted <= hello or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert lines, "no StatsD packet arrived"
    finished = [m for m in mapped if m.name == "airflow_ti_finish_total"]
    assert any(
        m.labels.get("dag_id") == "hello.say"
        and m.labels.get("task_id") == "greet"
        and m.labels.get("state") == "success"
        for m in finished
    ), [m.labels for m in finished]
    runs = [m for m in mapped if m.name == "airflow_dagrun_duration_seconds"]
    assert any(
        m.labels.get("dag_id") == "hello.say" and m.labels.get("state") == "success" for m in runs
    ), [m.labels for m in runs]
    produced = {name for m in mapped for name in m.series_names()}
    used = {
        name
        for _, _, expr in [*dashboard_exprs(), *rule_exprs()]
        for name in metric_names(expr)
        if name.startswith("airflow_")
    }
    missing = used - produced - NOT_FROM_A_SUCCESSFUL_RUN
    sent = sorted({Packet.parse(line).name for line in lines})
    assert not missing, f"dashboards/rules name {sorted(missing)}; the run sent {sent}"


def _added_project_and_run(platform: RunningPlatform, dags: Path, home: Path) -> None:
    base = platform.url("airflow")
    headers = {"Authorization": f"Bearer {token(platform)}"}
    assert wait_for_churn_dag(platform, headers)
    _add_project(dags, "fraud")
    added = time.monotonic()
    seen_errors: list[object] = []
    granted = False
    # One parse cycle of the loader is 30 s (min_file_process_interval); allow the
    # roles sync's few seconds and a loaded machine on top.
    while time.monotonic() - added < 240:
        errors = httpx.get(f"{base}/api/v2/importErrors", headers=headers, timeout=30)
        seen_errors += errors.json()["import_errors"]
        role = httpx.get(f"{base}/auth/fab/v1/roles/project:fraud", headers=headers)
        if role.status_code == 200:
            pairs = {(p["action"]["name"], p["resource"]["name"]) for p in role.json()["actions"]}
            granted = ("can_edit", "DAG:fraud.train") in pairs
        if granted:
            break
        time.sleep(3)
    assert not seen_errors, seen_errors
    waited = time.monotonic() - added
    assert granted, f"project:fraud has no can_edit on DAG:fraud.train after {waited:.0f}s"
    dag = httpx.get(f"{base}/api/v2/dags/fraud.train", headers=headers, timeout=30)
    assert dag.status_code == 200, dag.text
    assert dag.json()["is_stale"] is False
    churn = httpx.get(f"{base}/api/v2/dags/churn.train", headers=headers, timeout=30)
    assert churn.json()["is_stale"] is False
    log = (home / "logs" / "roles-sync.log").read_text()
    assert "created role: project:fraud" in log
    assert "user 'bob' does not exist yet" in log

    # `mlwp run` on a new daily workflow: unpausing it starts the run of the latest
    # interval (catchup is off), which `mlwp run` follows instead of queueing a second.
    hello = dags / "projects" / "hello"
    hello.mkdir()
    (hello / "workflow.yaml").write_text(HELLO)
    deadline = time.monotonic() + 240
    while httpx.get(f"{base}/api/v2/dags/hello.say", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "hello.say never appeared"
        time.sleep(3)
    ran = platform.mlwp("run", "hello.say", timeout=600)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "unpaused hello.say" in ran.stdout
    assert "following it rather than queueing a second run" in ran.stdout
    assert re.search(r"greet +success", ran.stdout), ran.stdout
    runs = httpx.get(f"{base}/api/v2/dags/hello.say/dagRuns", headers=headers).json()
    assert runs["total_entries"] == 1  # no manual run queued behind the scheduled one
