"""Per-partition validation combined into one verdict, with real GX against the whole frame."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlwp.data.partitions import partitions_of, write_partitioned
from mlwp.data.storage import Storage
from mlwp.data.validation import SuiteError, ValidationFailed, validate_frame
from mlwp.data.validation_partitions import combine_partitions, partition_frames, validate_partition

pytestmark = pytest.mark.unit

SUITE: dict[str, Any] = {
    "name": "parts",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a", "mostly": 0.9}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "a", "min_value": 0, "max_value": 10, "mostly": 0.99},
        },
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "c", "value_set": ["x", "y", "z"]},
        },
        {
            "type": "expect_column_pair_values_a_to_be_greater_than_b",
            "kwargs": {"column_A": "a", "column_B": "b", "mostly": 0.1},
        },
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "a", "min_value": 4}},
        {"type": "expect_column_stdev_to_be_between", "kwargs": {"column": "a", "max_value": 3}},
        {"type": "expect_column_min_to_be_between", "kwargs": {"column": "b", "min_value": 0}},
        {"type": "expect_column_max_to_be_between", "kwargs": {"column": "b", "max_value": 9}},
        {"type": "expect_column_sum_to_be_between", "kwargs": {"column": "b", "min_value": 1}},
        {
            "type": "expect_column_proportion_of_non_null_values_to_be_between",
            "kwargs": {"column": "a", "min_value": 0.9},
        },
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}},
        {"type": "expect_table_columns_to_match_set", "kwargs": {"column_set": ["a", "b", "c"]}},
    ],
}


def _frame(rows: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(16)
    frame = pd.DataFrame(
        {
            "a": rng.normal(5, 2, rows),
            "b": rng.integers(0, 10, rows),
            "c": rng.choice(["x", "y", "z"], rows),
        }
    )
    frame.loc[rng.random(rows) < 0.05, "a"] = np.nan
    return frame


def _store(storage: Storage, frame: pd.DataFrame, rows_per_partition: int) -> str:
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    ref = write_partitioned(
        storage,
        table.to_reader(max_chunksize=500),
        project="p",
        name="extract",
        source="test",
        rows_per_partition=rows_per_partition,
    )
    return ref.uri


def _validate_by_partition(storage: Storage, uri: str, suites: Path, suite: str = "parts") -> Any:
    spec = json.loads((suites / f"{suite}.json").read_text())
    documents = []
    for index, partition in enumerate(partitions_of(storage, uri)):
        # chunks of 300 rows: partitions of 500 or 1,000 rows merge several (and a short one)
        frames = partition_frames(storage, uri, partition, chunk_rows=300)
        documents.append(
            {**validate_partition(frames, spec, partition=partition.path), "index": index}
        )
    return combine_partitions(storage, uri, suite, documents, expectations_folder=suites)


@pytest.fixture
def suites(tmp_path: Path) -> Path:
    folder = tmp_path / "expectations"
    folder.mkdir()
    (folder / "parts.json").write_text(json.dumps(SUITE))
    return folder


def _key(result: dict[str, Any]) -> str:
    config = result["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    return config["type"] + json.dumps(kwargs, sort_keys=True)


def test_partitions_combine_to_the_whole_frame_verdict(suites: Path, tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "storage"))
    frame = _frame()
    uri = _store(storage, frame, rows_per_partition=1000)
    report = _validate_by_partition(storage, uri, suites)
    whole = {_key(r): r for r in validate_frame(frame, SUITE).result["results"]}

    assert len(report.result["results"]) == len(SUITE["expectations"])
    for combined in report.result["results"]:
        expected = whole[_key(combined)]
        assert combined["success"] == expected["success"], _key(combined)
        for name in ("observed_value", "element_count", "missing_count", "unexpected_count"):
            if name in expected["result"]:
                assert combined["result"][name] == pytest.approx(expected["result"][name]), name
    # 42 values of `a` outside [0, 10]: 1.5% > 1% of the non-null rows
    assert not report.success
    (failure,) = report.failures
    assert failure.expectation == "expect_column_values_to_be_between"
    assert failure.partitions is not None and failure.partitions.startswith("in 3 of 3")
    # one result and one data-docs report for the whole dataset, recorded in the sidecar
    assert storage.exists(str(report.result_uri))
    assert report.docs_uri is not None and storage.exists(report.docs_uri)
    record = storage.read_sidecar(uri)["validation"]["parts"]
    assert record["partitions"] == 3 and record["success"] is False
    assert report.result["meta"]["rows"] == 3000


def test_a_bad_partition_is_named_with_its_expectation(suites: Path, tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "storage"))
    frame = _frame(2000)
    frame["a"] = frame["a"].fillna(5.0).clip(lower=0.0, upper=10.0)
    frame.loc[1500, "c"] = "unknown"
    uri = _store(storage, frame, rows_per_partition=500)
    report = _validate_by_partition(storage, uri, suites)

    assert not report.success
    (failure,) = report.failures
    assert failure.expectation == "expect_column_values_to_be_in_set"
    assert failure.unexpected_count == 1
    assert failure.unexpected_values == ["unknown"]
    message = ValidationFailed(report).message
    assert "expect_column_values_to_be_in_set on column 'c'" in message
    assert "in 1 of 4 partitions: part-3.parquet (1)" in message


def test_a_suite_that_does_not_combine_is_refused_naming_its_expectations(
    suites: Path, tmp_path: Path
) -> None:
    spec = {
        "name": "keys",
        "expectations": [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}},
            {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "b"}},
            {"type": "expect_column_median_to_be_between", "kwargs": {"column": "a"}},
        ],
    }
    with pytest.raises(SuiteError) as caught:
        validate_partition([_frame(10)], spec, partition="part-0.parquet")
    assert caught.value.code == "suite_not_combinable"
    assert "expectations[1] (expect_column_values_to_be_unique)" in caught.value.message
    assert "expectations[2] (expect_column_median_to_be_between)" in caught.value.message


def test_a_validated_chunk_is_freed_without_waiting_for_the_garbage_collector() -> None:
    """GX's context is a web of reference cycles: a frame it kept would live until Python's
    rare full collection, so a worker validating partition after partition grew with rows."""
    import gc
    import weakref

    from mlwp.data.validation import FrameValidator

    validator = FrameValidator(SUITE)
    frame = _frame()
    report = validator.validate(frame)
    assert report.evaluated == len(SUITE["expectations"])
    freed = weakref.ref(frame)
    gc.disable()
    try:
        del frame
        assert freed() is None
    finally:
        gc.enable()
    assert not validator.context.validation_results_store.list_keys()
