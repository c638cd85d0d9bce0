"""`mlwp predict` reads the rows a user has at hand: JSON records or a CSV file."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import typer

from mlwp.cli.run import read_rows
from mlwp.settings import REPO_ROOT

pytestmark = pytest.mark.unit


def test_rows_from_json_records_or_a_data_body(tmp_path: Path) -> None:
    example = read_rows(REPO_ROOT / "dags" / "projects" / "churn" / "data" / "example_rows.json")
    assert len(example) == 3 and "churn" not in example[0] and "tenure" in example[0]
    listed = tmp_path / "rows.json"
    listed.write_bytes(orjson.dumps([{"a": 1}]))
    assert read_rows(listed) == [{"a": 1}]


def test_rows_from_csv_are_typed_and_empty_cells_are_missing(tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("tenure,monthly,contract,total\n3,29.85,Month-to-month,\n")
    assert read_rows(rows) == [{"tenure": 3, "monthly": 29.85, "contract": "Month-to-month"}]


def test_anything_else_is_refused_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "rows.json"
    bad.write_bytes(orjson.dumps({"rows": []}))
    with pytest.raises(typer.BadParameter, match=r"rows\.json: expected a list of records"):
        read_rows(bad)
