"""``mlwp config``: the generated files a container deployment writes in its init step."""

from __future__ import annotations

import configparser
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlwp.cli import app
from mlwp.platform.webserver_config import webserver_config_text
from mlwp.settings import Settings

pytestmark = pytest.mark.unit


def test_webserver_config_is_written_into_airflow_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("MLWP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLWP_AUTH_RATE_LIMIT_STORAGE", "redis://redis:6379/2")
    result = CliRunner().invoke(app, ["config", "webserver"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "airflow" / "webserver_config.py"
    expected = webserver_config_text(
        Settings(home=tmp_path / "home"), rate_limit_storage_uri="redis://redis:6379/2"
    )
    assert written.read_text() == expected
    assert stat.S_IMODE(written.stat().st_mode) == 0o600


def test_a_bad_rate_limit_is_refused_with_its_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLWP_HOME", str(tmp_path))
    result = CliRunner().invoke(
        app, ["config", "webserver", "--output", str(tmp_path / "w.py"), "--rate-limit", "often"]
    )
    assert result.exit_code == 1
    assert "'often'" in result.output
    assert not (tmp_path / "w.py").exists()


def test_mlflow_auth_config_takes_its_database_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLWP_MLFLOW_AUTH_DATABASE_URI", "postgresql://u:p@db/mlflow_auth")
    target = tmp_path / "auth" / "basic_auth.ini"
    result = CliRunner().invoke(app, ["config", "mlflow-auth", "--output", str(target)])
    assert result.exit_code == 0, result.output
    parser = configparser.ConfigParser()
    parser.read(target)
    assert parser["mlflow"]["database_uri"] == "postgresql://u:p@db/mlflow_auth"
    assert parser["mlflow"]["admin_username"] == "admin"
    assert "admin_password" not in parser["mlflow"]
