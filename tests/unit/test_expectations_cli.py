"""`mlwp expectations suggest|check` on real files with real GX."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mlwp.cli import app

pytestmark = pytest.mark.unit


def test_suggest_writes_a_suite_that_check_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "orders.csv"
    pd.DataFrame({"amount": [1.5, 2.0, 3.25], "status": ["new", "paid", "paid"]}).to_csv(
        data, index=False
    )
    folder = tmp_path / "expectations"
    monkeypatch.setenv("MLWP_EXPECTATIONS_FOLDER", str(folder))
    runner = CliRunner()
    result = runner.invoke(app, ["expectations", "suggest", str(data)])
    assert result.exit_code == 0, result.output
    suite = json.loads((folder / "orders.json").read_text())
    assert suite["name"] == "orders"
    sets = [e for e in suite["expectations"] if e["type"] == "expect_column_values_to_be_in_set"]
    assert sets[0]["kwargs"] == {"column": "status", "value_set": ["new", "paid"]}
    # Refuses to overwrite without --force.
    again = runner.invoke(app, ["expectations", "suggest", str(data)])
    assert again.exit_code == 1 and "--force" in again.output
    assert runner.invoke(app, ["expectations", "check", str(data), "orders"]).exit_code == 0
    pd.DataFrame({"amount": [1.5], "status": ["refunded"]}).to_csv(data, index=False)
    failed = runner.invoke(app, ["expectations", "check", str(data), "orders"])
    assert failed.exit_code == 1
    assert "expect_column_values_to_be_in_set on column 'status'" in failed.output
    assert "'refunded'" in failed.output
