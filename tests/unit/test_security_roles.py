"""The role table, project discovery and the generated FAB web config, without Airflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlwp.errors import ConfigurationError
from mlwp.platform.webserver_config import webserver_config_text, write_webserver_config
from mlwp.security.projects import discover_projects
from mlwp.security.roles import (
    ACTIONS_BY_NAME,
    ADMIN_PERMISSIONS,
    DATA_SCIENTIST_PERMISSIONS,
    VIEWER_PERMISSIONS,
    SecurityError,
    dag_project,
    is_allowed,
    project_access_control,
    project_role,
    user_permissions,
)
from mlwp.settings import Settings

pytestmark = pytest.mark.unit


def test_roles_are_nested_and_writes_on_dags_stay_with_admin() -> None:
    assert VIEWER_PERMISSIONS < DATA_SCIENTIST_PERMISSIONS < ADMIN_PERMISSIONS
    assert not {p for p in VIEWER_PERMISSIONS if p[0] in {"can_create", "can_delete"}}
    assert ("can_edit", "DAGs") not in DATA_SCIENTIST_PERMISSIONS
    assert ("can_read", "Users") not in DATA_SCIENTIST_PERMISSIONS
    assert ("can_edit", "DAGs") in ADMIN_PERMISSIONS


def test_project_role_and_access_control() -> None:
    assert project_role("churn") == "project:churn"
    assert project_access_control("churn") == {"project:churn": {"DAGs": {"can_read", "can_edit"}}}
    assert dag_project("churn.train") == "churn"


@pytest.mark.parametrize("bad", ["Churn", "1churn", "", "a b", "x" * 64, "churn.train"])
def test_bad_project_names_are_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(SecurityError, match=r"invalid project name .*lower-case"):
        project_role(bad)


@pytest.mark.parametrize("bad", ["churn", ".train", "churn."])
def test_dag_ids_must_name_a_project(bad: str) -> None:
    with pytest.raises(SecurityError, match=r"is not '<project>\.<workflow>'"):
        dag_project(bad)


def test_unknown_roles_are_an_error_not_silence() -> None:
    with pytest.raises(SecurityError, match="unknown role 'Datascientist'"):
        user_permissions(["Datascientist"], {})


def test_member_permissions_open_only_their_project() -> None:
    perms = user_permissions(
        ["DataScientist", "project:churn"], {"churn.train": "churn", "fraud.train": "fraud"}
    )
    trigger = ACTIONS_BY_NAME["trigger_dag"]
    assert is_allowed(perms, trigger, "churn.train")
    assert not is_allowed(perms, trigger, "fraud.train")
    assert is_allowed(perms, ACTIONS_BY_NAME["view_dag"], "fraud.train")
    with pytest.raises(SecurityError, match="give its dag_id"):
        is_allowed(perms, trigger, None)


def _definition(root: Path, folder: str, text: str) -> None:
    (root / "projects" / folder).mkdir(parents=True, exist_ok=True)
    (root / "projects" / folder / "workflow.yaml").write_text(text)


def test_discover_projects_reads_owner_and_members(tmp_path: Path) -> None:
    _definition(tmp_path, "churn", "project: churn\nowner: alice\nmembers: [bob, alice]\n")
    (tmp_path / "projects" / "fraud").mkdir(parents=True)  # a folder without a definition yet
    found = discover_projects(tmp_path)
    assert set(found) == {"churn", "fraud"}
    assert found["churn"].owner == "alice"
    assert found["churn"].members == ("bob", "alice")
    assert found["fraud"].owner is None


def test_discover_projects_errors_name_the_file(tmp_path: Path) -> None:
    _definition(tmp_path, "churn", "project: churn\nmembers: bob\n")
    with pytest.raises(SecurityError, match=r"workflow\.yaml: members: expected a list"):
        discover_projects(tmp_path)
    _definition(tmp_path, "churn", "project: [churn\n")
    with pytest.raises(SecurityError, match=r"workflow\.yaml: not valid YAML"):
        discover_projects(tmp_path)
    _definition(tmp_path, "churn", "project: Churn\n")
    with pytest.raises(SecurityError, match=r"churn: invalid project name 'Churn'"):
        discover_projects(tmp_path)


def test_webserver_config_is_valid_python_with_the_settings(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, jwt_expiration_seconds=900)
    path = write_webserver_config(settings, auth_rate_limit="3 per 10 second")
    assert path == settings.airflow_home / "webserver_config.py"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    namespace: dict[str, object] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    assert namespace["AUTH_RATE_LIMITED"] is True
    assert namespace["AUTH_RATE_LIMIT"] == "3 per 10 second"
    assert namespace["AUTH_ROLE_PUBLIC"] is None
    assert namespace["AUTH_USER_REGISTRATION"] is False
    assert namespace["PERMANENT_SESSION_LIFETIME"] == 900
    assert namespace["SESSION_COOKIE_SECURE"] is False


def test_webserver_config_refuses_a_bad_rate_limit(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="auth_rate_limit 'often'"):
        webserver_config_text(Settings(home=tmp_path), auth_rate_limit="often")
