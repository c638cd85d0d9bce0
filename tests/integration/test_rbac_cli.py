"""``mlwp roles`` and ``mlwp users`` against a real, migrated Airflow metadata DB with FAB."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlwp.cli import app
from mlwp.security.audit import list_events
from mlwp.security.client import run_rbac
from mlwp.security.roles import DATA_SCIENTIST_PERMISSIONS, VIEWER_PERMISSIONS
from mlwp.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def platform_home(tmp_path_factory: pytest.TempPathFactory, migrated_airflow_db: Path) -> Path:
    home = tmp_path_factory.mktemp("rbac-cli")
    churn = home / "dags" / "projects" / "churn"
    churn.mkdir(parents=True)
    (churn / "workflow.yaml").write_text("project: churn\nowner: alice\nmembers: [bob]\n")
    shutil.copy(migrated_airflow_db, home / "airflow.db")
    return home


@pytest.fixture
def cli(platform_home: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("MLWP_HOME", str(platform_home))
    monkeypatch.setenv("MLWP_DAGS_FOLDER", str(platform_home / "dags"))
    monkeypatch.setenv("MLWP_ACTOR", "tester")
    monkeypatch.setenv("MLWP_NEW_USER_PASSWORD", "a-long-password-1")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    return CliRunner()


def _ok(cli: CliRunner, *args: str) -> str:
    result = cli.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_roles_and_users_lifecycle(cli: CliRunner, platform_home: Path) -> None:
    first = _ok(cli, "roles", "sync")
    assert "created role: DataScientist" in first
    assert "created role: project:churn" in first
    assert "user 'alice' does not exist yet" in first
    assert "roles already in sync" in _ok(cli, "roles", "sync")

    settings = Settings(home=platform_home, dags_folder=platform_home / "dags")
    shown = run_rbac("roles_show", {"roles": ["DataScientist", "Viewer"]}, settings)["roles"]
    assert {tuple(p) for p in shown["DataScientist"]} == DATA_SCIENTIST_PERMISSIONS
    assert {tuple(p) for p in shown["Viewer"]} == VIEWER_PERMISSIONS

    short = cli.invoke(
        app,
        ["users", "add", "alice", "--email", "alice@example.org"],
        env={"MLWP_NEW_USER_PASSWORD": "too-short"},
    )
    assert short.exit_code == 1
    assert "the password must have at least 12 characters" in short.output
    assert "created" in _ok(cli, "users", "add", "alice", "--email", "alice@example.org")
    refused = cli.invoke(
        app, ["users", "add", "vera", "--email", "v@example.org", "--role", "Viewer", "-p", "churn"]
    )
    assert refused.exit_code == 1
    assert "--project needs role Admin or DataScientist, not 'Viewer'" in refused.output
    again = cli.invoke(app, ["users", "add", "alice", "--email", "other@example.org"])
    assert again.exit_code == 1
    assert "user 'alice' already exists" in again.output

    # The definition names alice as churn's owner: sync makes her a member.
    assert "membership: alice +project:churn" in _ok(cli, "roles", "sync")
    users = json.loads(_ok(cli, "users", "list", "--json"))
    assert [(u["username"], u["roles"], u["projects"]) for u in users] == [
        ("alice", ["DataScientist"], ["churn"])
    ]
    assert "projects []" in _ok(cli, "users", "revoke", "alice", "churn")
    assert json.loads(_ok(cli, "users", "list", "--project", "churn", "--json")) == []
    assert "projects ['churn']" in _ok(cli, "users", "grant", "alice", "churn")
    _ok(cli, "users", "remove", "alice")
    assert json.loads(_ok(cli, "users", "list", "--json")) == []
    missing = cli.invoke(app, ["users", "remove", "alice"])
    assert missing.exit_code == 1
    assert "user 'alice' does not exist" in missing.output

    actions = [(e.actor, e.action, e.target) for e in list_events(home=platform_home)]
    assert ("tester", "role.sync", "roles") in actions
    for action in ("user.add", "user.revoke", "user.grant", "user.remove"):
        assert ("tester", action, "alice") in actions


def test_validate_says_who_is_unknown_and_which_role_is_still_to_come(
    cli: CliRunner, platform_home: Path
) -> None:
    from mlwp.cli.definitions import _people_problems
    from mlwp.definitions.loading import load_project
    from mlwp.settings import get_settings

    _ok(cli, "roles", "sync")
    fresh = platform_home / "dags" / "projects" / "fresh"
    fresh.mkdir(exist_ok=True)
    (fresh / "workflow.yaml").write_text(
        "project: fresh\nowner: nobody\nworkflows: {w: {tasks: {a: {type: approve}}}}\n"
    )
    project = load_project(fresh / "workflow.yaml")
    found = [str(p) for p in _people_problems([(fresh / "workflow.yaml", project)], get_settings())]
    assert any(
        line.startswith(f"{fresh / 'workflow.yaml'}:2:1: warning: owner: user 'nobody' is not")
        for line in found
    ), found
    assert any("role 'project:fresh' does not exist yet" in line for line in found), found
