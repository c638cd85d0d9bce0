"""Streaming extract into partitioned datasets (mlwp.partitions, mlwp.etl streaming path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlwp.etl import ExtractError, cursor_reader, extract_partitioned, write_reader
from mlwp.partitions import PartitionedReader, manifest_sha256, partitions_of
from mlwp.storage import DatasetIntegrityError, Storage

pytestmark = pytest.mark.unit


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = 5_000
    data = pd.DataFrame(
        {
            "id": np.arange(rows),
            "plan": rng.choice(["basic", "pro", "team"], rows),
            "spend": rng.normal(50, 10, rows),
        }
    )
    data.loc[3, "spend"] = np.nan
    return data


@pytest.fixture
def project_dir(tmp_path: Path, frame: pd.DataFrame) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    frame.to_csv(folder / "rows.csv", index=False)
    frame.to_parquet(folder / "rows.parquet")
    return folder


def test_csv_streams_into_content_addressed_partitions(
    project_dir: Path, tmp_path: Path, frame: pd.DataFrame
) -> None:
    storage = Storage(str(tmp_path / "store"))
    ref = extract_partitioned(
        "rows.csv", storage=storage, project="p", name="raw", project_dir=project_dir,
        rows_per_partition=2_000,
    )  # fmt: skip
    parts = partitions_of(storage, ref.uri)
    assert [p.rows for p in parts] == [2_000, 2_000, 1_000]
    assert ref.sha256 == manifest_sha256(parts) and ref.uri.endswith(f"{ref.sha256}.parquet")
    sidecar = storage.read_sidecar(ref.uri)
    assert sidecar["rows"] == 5_000 and sidecar["layout"] == "partitioned"
    assert sidecar["source"] == (project_dir / "rows.csv").as_uri()
    assert sidecar["schema"]["spend"] == "float64"
    pd.testing.assert_frame_equal(storage.read_dataset(ref.uri), frame, check_dtype=False)
    again = extract_partitioned(
        "rows.csv", storage=storage, project="p", name="raw", project_dir=project_dir,
        rows_per_partition=2_000,
    )  # fmt: skip
    assert again.uri == ref.uri  # idempotent: the same rows land at the same address
    assert len(storage.versions("p", "raw")) == 1


def test_partition_by_keeps_column_and_type(
    project_dir: Path, tmp_path: Path, frame: pd.DataFrame
) -> None:
    storage = Storage(str(tmp_path / "store"))
    ref = extract_partitioned(
        "rows.parquet", storage=storage, project="p", name="byplan", project_dir=project_dir,
        partition_by=["plan"],
    )  # fmt: skip
    paths = [p.path for p in partitions_of(storage, ref.uri)]
    assert paths == ["plan=basic/part-0.parquet", "plan=pro/part-0.parquet",
                     "plan=team/part-0.parquet"]  # fmt: skip
    back = storage.read_dataset(ref.uri).sort_values("id", ignore_index=True)
    assert list(back.columns) == ["id", "plan", "spend"]
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    with pytest.raises(ExtractError, match="partition_by plna: no such column"):
        extract_partitioned(
            "rows.csv", storage=storage, project="p", name="x", project_dir=project_dir,
            partition_by=["plna"],
        )  # fmt: skip


def test_modified_partition_is_refused(project_dir: Path, tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "store"))
    ref = extract_partitioned(
        "rows.csv", storage=storage, project="p", name="raw", project_dir=project_dir,
        rows_per_partition=2_000,
    )  # fmt: skip
    part = Path(ref.uri.removeprefix("file://")) / "part-1.parquet"
    pd.DataFrame({"id": [1]}).to_parquet(part)
    with pytest.raises(DatasetIntegrityError, match=r"part-1\.parquet is corrupt"):
        storage.read_dataset(ref.uri)


def test_streaming_options_and_type_errors(
    project_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlwp import etl

    storage = Storage(str(tmp_path / "store"))
    ref = extract_partitioned(
        "rows.csv", storage=storage, project="p", name="few", project_dir=project_dir,
        rows_per_partition=100, read_options={"nrows": 250, "usecols": ["id", "plan"]},
    )  # fmt: skip
    assert ref.rows == 250 and ref.columns == ["id", "plan"]
    with pytest.raises(ExtractError, match="thousands are not supported when the extract"):
        extract_partitioned(
            "rows.csv", storage=storage, project="p", name="x", project_dir=project_dir,
            rows_per_partition=100, read_options={"thousands": ","},
        )  # fmt: skip
    # A column whose first block is all numbers and a later value is text: the error says
    # which column and how to fix it.
    lines = ["a,b"] + [f"{i},{i}" for i in range(3000)] + ["3000,oops"]
    (project_dir / "late.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(etl, "CSV_BLOCK_BYTES", 4096)
    with pytest.raises(ExtractError, match=r"read_options\.dtype"):
        extract_partitioned(
            "late.csv", storage=storage, project="p", name="late", project_dir=project_dir,
            rows_per_partition=1000,
        )  # fmt: skip
    fixed = extract_partitioned(
        "late.csv", storage=storage, project="p", name="late", project_dir=project_dir,
        rows_per_partition=1000, read_options={"dtype": {"b": "str"}},
    )  # fmt: skip
    assert storage.read_dataset(fixed.uri)["b"].iloc[-1] == "oops"


class _Cursor:
    """A DB-API cursor over fixed rows with PostgreSQL type oids (int4, text, numeric)."""

    description = [("id", 23), ("plan", 25), ("spend", 1700)]

    def __init__(self, rows: list[tuple[object, ...]]) -> None:
        self.rows = rows

    def fetchmany(self, size: int) -> list[tuple[object, ...]]:
        batch, self.rows = self.rows[:size], self.rows[size:]
        return batch


def test_cursor_rows_become_typed_partitions(tmp_path: Path) -> None:
    from decimal import Decimal

    storage = Storage(str(tmp_path / "store"))
    rows = [(i, "pro" if i % 2 else None, Decimal("1.5") * i) for i in range(10)]
    ref = write_reader(
        cursor_reader(_Cursor(rows), batch_rows=3), storage=storage, project="p", name="sql",
        source="postgres://x select", rows_per_partition=4, partition_by=None,
    )  # fmt: skip
    assert [p.rows for p in PartitionedReader(storage, ref.uri).partitions] == [4, 4, 2]
    back = storage.read_dataset(ref.uri)
    assert back["spend"].tolist() == [1.5 * i for i in range(10)]
    assert back["plan"].isna().sum() == 5 and str(back["id"].dtype) == "int32"
