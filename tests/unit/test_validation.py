"""GX validation with real Great Expectations on small frames; suite loading; suggestion."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mlwp.data.storage import Storage
from mlwp.data.validation import (
    SuiteError,
    load_suite,
    suggest_suite,
    validate_dataset,
    validate_frame,
)
from mlwp.settings import REPO_ROOT

pytestmark = pytest.mark.unit

SUITE = {
    "name": "small",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "a", "min_value": 0, "max_value": 10},
        },
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "b", "value_set": ["x", "y"]},
        },
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}},
    ],
}


@pytest.fixture
def suites(tmp_path: Path) -> Path:
    folder = tmp_path / "expectations"
    folder.mkdir()
    (folder / "small.json").write_text(json.dumps(SUITE))
    return folder


def test_good_frame_passes(suites: Path) -> None:
    report = validate_frame(
        pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), "small", expectations_folder=suites
    )
    assert report.success
    assert report.statistics == {
        "evaluated": 4,
        "successful": 4,
        "unsuccessful": 0,
        "success_percent": 100.0,
    }


def test_bad_frame_names_each_failure(suites: Path) -> None:
    frame = pd.DataFrame({"a": [1.0, None, 99.0, 2.0], "b": ["x", "zzz", "y", "x"]})
    report = validate_frame(frame, "small", expectations_folder=suites)
    assert not report.success
    assert report.unsuccessful == 3
    failures = {(f.expectation, f.column): f for f in report.failures}
    assert failures[("expect_column_values_to_be_in_set", "b")].unexpected_values == ["zzz"]
    assert failures[("expect_column_values_to_be_between", "a")].unexpected_values == [99.0]
    assert failures[("expect_column_values_to_not_be_null", "a")].unexpected_count == 1
    message = report.failure_message()
    assert "3 of 4 expectations failed" in message
    assert "expect_column_values_to_be_in_set on column 'b'" in message and "'zzz'" in message


def test_missing_column_is_a_named_failure(suites: Path) -> None:
    report = validate_frame(pd.DataFrame({"a": [1]}), "small", expectations_folder=suites)
    failure = next(f for f in report.failures if f.column == "b")
    assert failure.exception and "b" in failure.exception


def test_validate_dataset_stores_result_docs_and_sidecar(suites: Path, tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "store"))
    ref = storage.write_dataset(
        pd.DataFrame({"a": [1, 2], "b": ["x", "q"]}), project="p", name="raw", source="s"
    )
    report = validate_dataset(storage, ref.uri, "small", expectations_folder=suites)
    assert not report.success
    assert report.result_uri and storage.read_json(report.result_uri)["success"] is False
    assert report.docs_uri and report.docs_uri.endswith("docs/index.html")
    assert b"<html" in storage.read_bytes(report.docs_uri).lower()
    recorded = storage.read_sidecar(ref.uri)["validation"]["small"]
    assert recorded["success"] is False and recorded["statistics"]["unsuccessful"] == 1


def test_suite_errors(tmp_path: Path, suites: Path) -> None:
    with pytest.raises(SuiteError, match=r"nope.json does not exist \(available: small\)"):
        load_suite("nope", suites)
    (suites / "broken.json").write_text('{"expectations": [{"kwargs": {}}]}')
    with pytest.raises(SuiteError, match=r"expectations\[0\] needs a 'type'"):
        load_suite("broken", suites)
    (suites / "unknown.json").write_text('{"expectations": [{"type": "expect_magic"}]}')
    with pytest.raises(SuiteError, match=r"expectations\[0\] \(expect_magic\) is invalid"):
        validate_frame(pd.DataFrame({"a": [1]}), "unknown", expectations_folder=suites)


def test_suggested_suite_accepts_its_data_and_catches_drift() -> None:
    frame = pd.DataFrame({"n": [1.0, 2.0, None, 4.0], "c": ["u", "v", "u", "v"], "k": [0, 1, 1, 0]})
    spec = suggest_suite(frame, "drafted")
    types = {(e["type"], e["kwargs"].get("column")) for e in spec["expectations"]}
    assert ("expect_column_values_to_be_in_set", "c") in types
    assert ("expect_column_values_to_be_between", "n") in types
    assert validate_frame(frame, spec).success
    drifted = frame.assign(c=["u", "v", "w", "v"])
    assert not validate_frame(drifted, spec).success


@pytest.mark.parametrize(
    ("csv", "suite"),
    [
        ("dags/projects/churn/data/telco_churn.csv", "telco_churn_raw"),
        ("dags/projects/credit/data/credit_data.csv", "credit_raw"),
    ],
)
def test_shipped_suites_accept_the_example_data(csv: str, suite: str) -> None:
    report = validate_frame(
        pd.read_csv(REPO_ROOT / csv), suite, expectations_folder=REPO_ROOT / "expectations"
    )
    assert report.success, report.failure_message()
    assert report.evaluated >= 15
