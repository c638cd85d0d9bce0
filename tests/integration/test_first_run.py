"""A new user's first run, on one `mlwp up` (embedded SQLite defaults): from the start to a
prediction from a model they trained, as the README tells it.

One platform for the whole module (each `mlwp up` costs minutes of a CI budget), used in the
order a new user goes:

1. `mlwp up` serves Airflow (FAB login, JWT, the churn DAG), MLflow and serving, as separate
   processes; `mlwp status` sees them; a second `up` is refused.
2. A project added while it runs gets its role within one parse cycle, with no import error
   (before: an import error until `mlwp roles sync` by hand), and `mlwp run` on its daily
   workflow follows the run that unpausing starts instead of queueing a second one.
3. The README's "First prediction" commands, read out of README.md (and found in
   docs/first-run.md) and run as written, from the repository folder: `mlwp run churn.train
   --approve` trains the example churn model through the scheduler (LocalExecutor), answers
   its approval as the admin, deploys it and ends with the version serving now answers from;
   `mlwp predict churn --file ...` gets predictions from it, with the key `mlwp up` made.
4. That clean churn run logged no line at ERROR and no deprecation warning in any task log
   (before: MLflow's informational stderr at ERROR, five Airflow deprecation warnings per
   task), and the deploy's reload was authorised (before: 401 missing_api_key).
5. Ctrl-C stops every process and leaves no platform state behind.

The same platform proves Airflow's StatsD output (issue #17): `mlwp up` sends it (on in every
mode) to a UDP listener of this module, and the packets of the real scheduler run of
``hello.say`` are parsed and put through observability/statsd/mapping.yaml: the names the
dashboards and alert rules use come out, labelled with dag_id and task_id. With
``MLWP_OTEL_ENDPOINT`` pointed at an in-process OTLP receiver, Airflow's own OpenTelemetry
spans of that run arrive too.

The DAG folder is a copy of the repository's loader and churn project (the test adds
projects to it); everything else is what a user has.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
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
from platform_process import REPO_ROOT, RunningPlatform, clean_environment, start_platform
from test_platform_up import check_platform_serves, token, wait_for_churn_dag

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README = REPO_ROOT / "README.md"
FIRST_RUN = REPO_ROOT / "docs" / "first-run.md"
HELLO = """\
project: hello
owner: admin
workflows:
  say:
    schedule: "@daily"
    tasks:
      greet: {type: python, callable: "builtins:dict", kwargs: {greeting: hi}}
"""
# What the first prediction's commands learned, for the log checks after them.
OUTCOME: dict[str, Any] = {}
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


def first_prediction_commands() -> list[str]:
    """The commands of the README's "First prediction" section, as written."""
    text = README.read_text()
    section = text.split("\n## First prediction\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, "README.md: the First prediction section has no sh block"
    return [line.strip() for line in blocks[0].splitlines() if line.strip()]


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


@pytest.fixture(scope="module")
def signals() -> Iterator[tuple[int, list[str], OtlpReceiver]]:
    """Where the platform sends StatsD (a UDP listener) and OpenTelemetry (OTLP receiver)."""
    receiver = OtlpReceiver()
    try:
        with statsd_listener() as (statsd_port, statsd_lines):
            yield statsd_port, statsd_lines, receiver
    finally:
        receiver.close()


@pytest.fixture(scope="module")
def platform(
    tmp_path_factory: pytest.TempPathFactory, signals: tuple[int, list[str], OtlpReceiver]
) -> Iterator[RunningPlatform]:
    root = tmp_path_factory.mktemp("first-run")
    dags = _copy_dags(root)
    home = root / "home"
    statsd_port, _, receiver = signals
    env = clean_environment(
        home,
        MLWP_DAGS_FOLDER=str(dags),
        MLWP_STATSD_PORT=str(statsd_port),
        MLWP_OTEL_ENDPOINT=receiver.url,
    )
    running = start_platform(env, home)
    running.env["TEST_DAGS_FOLDER"] = str(dags)
    try:
        yield running
    finally:
        running.stop()


def headers(platform: RunningPlatform) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(platform)}"}


def test_up_serves_airflow_mlflow_and_serving(platform: RunningPlatform) -> None:
    check_platform_serves(platform)


def test_a_change_waiting_for_the_database_holds_up_no_other_request(
    platform: RunningPlatform,
) -> None:
    """A change through the REST API waits for SQLite's write lock in a worker thread, not on
    the api-server's event loop (operators/api_server.py): another request is answered while
    it waits. Before, Airflow's action log waited on the loop, so the api-server answered
    nothing until the lock was free; when one of its own requests held the lock, waiting for
    the loop to close its session, every request stalled for the 30 s busy timeout and the
    change failed with 500 "database is locked" (a CI run's trigger did).

    The lock is held here by another connection, as a task's transaction would, and released
    well within that timeout, so the platform's other processes only wait.
    """
    base = platform.url("airflow")
    auth = headers(platform)
    holder = sqlite3.connect(platform.home / "airflow.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with ThreadPoolExecutor(1) as pool:
            change = pool.submit(
                httpx.post,
                f"{base}/api/v2/variables",
                json={"key": "mlwp_lock_probe", "value": "waited"},
                headers=auth,
                timeout=120,
            )
            time.sleep(2)  # the change's action-log insert now waits for the lock
            assert not change.done(), change.result().text
            try:
                version = httpx.get(f"{base}/api/v2/version", headers=auth, timeout=8)
            except httpx.TimeoutException:
                pytest.fail("the api-server answered nothing while a change waited for the lock")
            assert version.status_code == 200, version.text
            holder.execute("ROLLBACK")
            created = change.result()
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
    assert created.status_code == 201, created.text


def test_a_project_added_while_running_gets_its_role_within_one_parse_cycle(
    platform: RunningPlatform,
) -> None:
    base = platform.url("airflow")
    auth = headers(platform)
    dags = Path(platform.env["TEST_DAGS_FOLDER"])
    assert wait_for_churn_dag(platform, auth)
    _add_project(dags, "fraud")
    added = time.monotonic()
    seen_errors: list[object] = []
    granted = False
    # One parse cycle of the loader is 30 s (min_file_process_interval); allow the roles
    # sync's few seconds and a loaded machine on top.
    while time.monotonic() - added < 240:
        errors = httpx.get(f"{base}/api/v2/importErrors", headers=auth, timeout=30)
        seen_errors += errors.json()["import_errors"]
        role = httpx.get(f"{base}/auth/fab/v1/roles/project:fraud", headers=auth, timeout=30)
        if role.status_code == 200:
            pairs = {(p["action"]["name"], p["resource"]["name"]) for p in role.json()["actions"]}
            granted = ("can_edit", "DAG:fraud.train") in pairs
        if granted:
            break
        time.sleep(3)
    assert not seen_errors, seen_errors
    waited = time.monotonic() - added
    assert granted, f"project:fraud has no can_edit on DAG:fraud.train after {waited:.0f}s"
    dag = httpx.get(f"{base}/api/v2/dags/fraud.train", headers=auth, timeout=30)
    assert dag.status_code == 200, dag.text
    assert dag.json()["is_stale"] is False
    churn = httpx.get(f"{base}/api/v2/dags/churn.train", headers=auth, timeout=30)
    assert churn.json()["is_stale"] is False
    log = (platform.home / "logs" / "roles-sync.log").read_text()
    assert "created role: project:fraud" in log
    assert "user 'bob' does not exist yet" in log

    # `mlwp run` on a new daily workflow: unpausing it starts the run of the latest interval
    # (catchup is off), which `mlwp run` follows instead of queueing a second.
    hello = dags / "projects" / "hello"
    hello.mkdir()
    (hello / "workflow.yaml").write_text(HELLO)
    deadline = time.monotonic() + 240
    while httpx.get(f"{base}/api/v2/dags/hello.say", headers=auth).status_code != 200:
        assert time.monotonic() < deadline, "hello.say never appeared"
        time.sleep(3)
    ran = platform.mlwp("run", "hello.say", timeout=600)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "unpaused hello.say" in ran.stdout
    assert "following it rather than queueing a second run" in ran.stdout
    assert re.search(r"greet +success", ran.stdout), ran.stdout
    runs = httpx.get(f"{base}/api/v2/dags/hello.say/dagRuns", headers=auth).json()
    assert runs["total_entries"] == 1  # no manual run queued behind the scheduled one


def test_the_scheduler_run_sends_the_statsd_and_traces_the_dashboards_read(
    platform: RunningPlatform, signals: tuple[int, list[str], OtlpReceiver]
) -> None:
    """The StatsD packets and OpenTelemetry spans of the hello.say run above (issue #17)."""
    _, lines, receiver = signals
    _statsd_of_the_run(lines)
    # Airflow's traces of the run (docs/observability.md, "Traces").
    spans = receiver.wait_for(
        lambda s: s["attributes"].get("airflow.dag_id") == "hello.say", timeout=60
    )
    assert any(s["resource"].get("service.name") == "mlwp-airflow" for s in spans), spans


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


def test_validate_warns_about_people_the_running_platform_does_not_know(
    platform: RunningPlatform, tmp_path: Path
) -> None:
    """Before: `mlwp validate` passed a definition whose owner was no Airflow user."""
    folder = tmp_path / "ghosts"
    folder.mkdir()
    (folder / "workflow.yaml").write_text(
        HELLO.replace("project: hello", "project: ghosts").replace(
            "owner: admin", "owner: casper\nmembers: [admin]"
        )
    )
    checked = platform.mlwp("validate", str(folder), timeout=600)
    assert checked.returncode == 0, checked.stdout + checked.stderr  # warnings do not fail
    assert "owner: user 'casper' is not an Airflow user" in checked.stdout, checked.stdout
    assert "mlwp users add casper --role DataScientist --project ghosts" in checked.stdout
    assert "user 'admin'" not in checked.stdout  # the admin `mlwp up` made is known
    assert "role 'project:ghosts' does not exist yet" in checked.stdout
    assert "0 problems, 2 warnings" in checked.stderr, checked.stderr


def test_the_docs_agree_on_the_first_prediction_commands() -> None:
    commands = first_prediction_commands()
    assert [shlex.split(c)[:2] for c in commands] == [
        [".venv/bin/mlwp", "run"],
        [".venv/bin/mlwp", "predict"],
    ]
    guide = FIRST_RUN.read_text()
    for command in commands:
        assert command in guide, f"docs/first-run.md does not show `{command}`"


def test_the_readmes_first_prediction_commands_run_as_written(platform: RunningPlatform) -> None:
    run_command, predict_command = first_prediction_commands()
    # From the repository folder, in a second terminal of the user who ran `mlwp up`.
    ran = subprocess.run(
        ["bash", "-c", run_command],
        env=platform.env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=800,
        check=False,
    )
    out = ran.stdout
    assert ran.returncode == 0, out + ran.stderr
    assert "unpaused churn.train" in out
    # The weekly schedule started this week's run on unpause; mlwp run followed it.
    assert "following it rather than queueing a second run" in out
    for task in ("extract", "validate", "features", "train", "evaluate", "register", "deploy"):
        assert re.search(rf"^  {task} +success", out, flags=re.MULTILINE), (task, out)
    assert re.search(r"^  approve +approved \(--approve\)", out, flags=re.MULTILINE), out
    assert "registered: churn version 1" in out, out
    # The first version deployed is the champion with all the traffic, and serving loaded it
    # when asked: the deploy's reload was authorised by the key `mlwp up` made.
    # (a problem would follow the line as "(serving: <why>)")
    deployed = "deployed: churn@champion -> version 1, traffic champion 100%"
    assert re.search(rf"^{re.escape(deployed)}$", out, flags=re.MULTILINE), out
    assert re.search(
        r"^serving churn: champion v1 100% at http://\S+/v1/models/churn/predict$",
        out,
        flags=re.MULTILINE,
    ), out
    run_id = re.search(r"^unpausing started the scheduled run (\S+)", out, flags=re.MULTILINE)
    assert run_id is not None, out
    OUTCOME["run_id"] = run_id.group(1)

    predicted = subprocess.run(
        ["bash", "-c", predict_command],
        env=platform.env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    answer = orjson.loads(predicted.stdout)
    rows_file = REPO_ROOT / shlex.split(predict_command)[-1]
    rows = orjson.loads(rows_file.read_bytes())["data"]
    assert len(answer["predictions"]) == len(rows) == len(answer["probabilities"])
    assert set(answer["predictions"]) <= {"No", "Yes"}  # the churn column's own labels
    assert (answer["model_version"], answer["variant"]) == ("1", "champion")


def task_log_lines(platform: RunningPlatform, dag_id: str, run_id: str) -> list[tuple[str, Any]]:
    """(file, line) of every task log of a run: JSON lines, as Airflow 3 writes them."""
    folder = platform.home / "logs" / "airflow" / f"dag_id={dag_id}" / f"run_id={run_id}"
    files = sorted(folder.glob("task_id=*/**/*.log"))
    assert files, f"no task log under {folder}"
    lines = []
    for path in files:
        for raw in path.read_text().splitlines():
            if raw.strip():
                try:
                    lines.append((path.parent.name, orjson.loads(raw)))
                except orjson.JSONDecodeError:
                    lines.append((path.parent.name, raw))
    return lines


def test_the_clean_churn_run_logs_no_error_and_no_deprecation_warning(
    platform: RunningPlatform,
) -> None:
    if "run_id" not in OUTCOME:
        pytest.fail("the churn run of the README's commands did not complete")
    lines = task_log_lines(platform, "churn.train", OUTCOME["run_id"])
    tasks = {task for task, _ in lines}
    assert len(tasks) >= 8, tasks  # extract ... deploy, each logged
    errors, deprecations = [], []
    for task, line in lines:
        level = str(line.get("level", "")).lower() if isinstance(line, dict) else ""
        text = orjson.dumps(line).decode() if isinstance(line, dict) else line
        if level in ("error", "critical") or (not level and re.search(r"\bERROR\b", text)):
            errors.append((task, text[:300]))
        if "deprecat" in text.lower():
            deprecations.append((task, text[:300]))
    found = [f"ERROR {task}: {text}" for task, text in errors]
    found += [f"DEPRECATION {task}: {text}" for task, text in deprecations]
    assert not found, "\n".join(found)
    # The deploy's reload was authorised (before: "Serving answered 401 ... missing_api_key").
    every = "\n".join(orjson.dumps(line).decode() for _, line in lines)
    assert "missing_api_key" not in every and "answered 401" not in every


def test_ctrl_c_stops_every_process_and_leaves_no_state(platform: RunningPlatform) -> None:
    children = psutil.Process(platform.proc.pid).children(recursive=True)
    platform.proc.send_signal(signal.SIGINT)
    assert platform.proc.wait(timeout=180) == 0, platform.output()[-5000:]
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], [p.cmdline() for p in alive if p.is_running()]
    assert not (platform.home / "platform.json").exists()
    after = platform.mlwp("status")
    assert after.returncode == 1
    assert "not running" in after.stdout
