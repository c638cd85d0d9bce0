"""mlwp/security/client.py: a user or role command before Airflow's database exists says so."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mlwp.security.client import require_airflow_database, run_rbac
from mlwp.security.roles import SecurityError
from mlwp.settings import Settings


def test_before_the_first_up_a_command_names_the_fix_and_creates_nothing(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    with pytest.raises(SecurityError, match=r"does not exist yet: start the platform once") as e:
        run_rbac("people", {"users": ["alice"]}, settings)
    assert e.value.code == "database_not_set_up"
    assert "`mlwp up`" in e.value.message and "mlwp airflow db migrate" in e.value.message
    assert not (tmp_path / "home" / "airflow.db").exists()


def test_a_database_without_airflows_tables_is_named(tmp_path: Path) -> None:
    database = tmp_path / "airflow.db"
    sqlite3.connect(database).close()
    with pytest.raises(SecurityError, match=rf"{database}\S* has no tables yet"):
        require_airflow_database(f"sqlite:///{database}")
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
    require_airflow_database(f"sqlite:///{database}?timeout=30")


def test_an_unreachable_database_is_one_line_with_its_password_hidden() -> None:
    url = "postgresql+psycopg2://mlwp:secret@127.0.0.1:1/airflow"
    with pytest.raises(SecurityError, match="is unreachable") as caught:
        require_airflow_database(url)
    assert "secret" not in caught.value.message
    assert "\n" not in caught.value.message
