"""Pools declared by definitions are created by `mlwp roles sync`, once, in a real Airflow DB."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlwp.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEFINITION = """\
project: placed
owner: alice
pools:
  sagemaker: {slots: SLOTS, description: concurrent SageMaker jobs}
workflows:
  train:
    tasks:
      extract: {type: extract, source: s3://bucket/x.csv, pool: sagemaker}
"""


def pools(home: Path) -> dict[str, tuple[int, str]]:
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute("select pool, slots, description from slot_pool").fetchall()
    return {name: (slots, description) for name, slots, description in rows}


def test_roles_sync_creates_declared_pools_and_never_resizes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_airflow_db: Path
) -> None:
    home = tmp_path / "home"
    folder = home / "dags" / "projects" / "placed"
    folder.mkdir(parents=True)
    definition = folder / "workflow.yaml"
    definition.write_text(DEFINITION.replace("SLOTS", "2"))
    shutil.copy(migrated_airflow_db, home / "airflow.db")
    monkeypatch.setenv("MLWP_HOME", str(home))
    monkeypatch.setenv("MLWP_DAGS_FOLDER", str(home / "dags"))
    monkeypatch.setenv("MLWP_ACTOR", "tester")

    first = CliRunner().invoke(app, ["roles", "sync"])
    assert first.exit_code == 0, first.output
    assert "created pool: sagemaker (2 slots, declared by project placed)" in first.output
    assert pools(home)["sagemaker"] == (2, "concurrent SageMaker jobs")
    assert "default_pool" in pools(home)

    # An admin resized it in Airflow; the definition says otherwise: reported, not applied.
    definition.write_text(DEFINITION.replace("SLOTS", "5"))
    again = CliRunner().invoke(app, ["roles", "sync"])
    assert again.exit_code == 0, again.output
    assert "created pool" not in again.output
    assert "pool 'sagemaker' has 2 slots in Airflow, project 'placed' declares 5" in again.output
    assert pools(home)["sagemaker"][0] == 2
