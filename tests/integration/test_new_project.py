"""A project added while `mlwp up` runs gets its DAGs and its role without a manual step.

Before: the new project's DAGs named ``project:<p>`` in access_control before the role
existed, so serialization failed, Airflow recorded an import error for the loader file and
marked every DAG of it stale, until someone ran `mlwp roles sync` by hand.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest
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
    platform = start_platform(clean_environment(home, MLWP_DAGS_FOLDER=str(dags)), home)
    try:
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
                pairs = {
                    (p["action"]["name"], p["resource"]["name"]) for p in role.json()["actions"]
                }
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
    finally:
        platform.proc.send_signal(signal.SIGINT)
        platform.proc.wait(timeout=180)
