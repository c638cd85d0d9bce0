"""Streaming extract into partitioned datasets (mlwp.data.partitions, mlwp.data.extract)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlwp.data import extract
from mlwp.data.extract import ExtractError, cursor_reader, extract_partitioned, write_reader
from mlwp.data.partitions import PartitionedReader, manifest_sha256, partitions_of
from mlwp.data.storage import DatasetIntegrityError, Storage

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


@pytest.mark.parametrize("in_memory", [True, False], ids=["read-once", "streamed"])
@pytest.mark.parametrize("damage", ["byte", "garbage", "longer"])
def test_a_partition_is_verified_before_its_first_batch(
    project_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: bool, damage: str
) -> None:
    """Whether the file is read once (hashed beside the first batch's decoding) or hashed
    then read, no batch of a file that is not the manifest's comes out, and the error says
    so, also when the bytes do not even parse."""
    from mlwp.data import partitions

    if not in_memory:
        monkeypatch.setattr(partitions, "IN_MEMORY_BYTES", 0)
    storage = Storage(str(tmp_path / "store"))
    ref = extract_partitioned(
        "rows.csv", storage=storage, project="p", name="raw", project_dir=project_dir,
        rows_per_partition=2_000,
    )  # fmt: skip
    reader = PartitionedReader(storage, ref.uri)
    partition = reader.partitions[1]
    assert sum(b.num_rows for b in reader.batches(partition, batch_rows=500)) == 2_000
    path = Path(ref.uri.removeprefix("file://")) / partition.path
    data = bytearray(path.read_bytes())
    if damage == "byte":  # a value inside the first data page, same length, still Parquet
        data[100] ^= 0xFF
    elif damage == "garbage":  # same length, not Parquet at all
        data[:] = bytes(len(data))
    else:
        data += b"\0"
    path.write_bytes(bytes(data))
    batches = reader.batches(partition, batch_rows=500, threads=False)
    with pytest.raises(DatasetIntegrityError, match=r"part-1\.parquet is corrupt or was modified"):
        next(batches)


def test_streaming_options_and_type_errors(
    project_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

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
    monkeypatch.setattr(extract, "CSV_BLOCK_BYTES", 4096)
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


def test_streamed_csv_types_and_row_groups_do_not_depend_on_block_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Types come from the file's head (CSV_BLOCK_BYTES, cut after its last whole row, in any
    encoding); the small blocks read after it give the same rows in 65,536-row row groups."""
    import pyarrow.parquet as pq

    folder = tmp_path / "project"
    folder.mkdir()
    rows = 70_000
    text = "name,score\n" + "".join(f"Ré{i},{i / 4}\n" for i in range(rows))
    (folder / "latin.csv").write_bytes(text.encode("latin-1"))
    (folder / "utf16.csv").write_bytes(text.encode("utf-16"))
    storage = Storage(str(tmp_path / "store"))
    # a head of 1,001 bytes ends inside a row and, for UTF-16, inside a character
    monkeypatch.setattr(extract, "CSV_BLOCK_BYTES", 1_001)
    monkeypatch.setattr(extract, "CSV_STREAM_BLOCK_BYTES", 4_096)
    for name, encoding in (("latin.csv", "latin-1"), ("utf16.csv", "utf-16")):
        ref = extract_partitioned(
            name, storage=storage, project="p", name=name[:-4], project_dir=folder,
            rows_per_partition=100_000, read_options={"encoding": encoding},
        )  # fmt: skip
        back = storage.read_dataset(ref.uri)
        assert back["name"].iloc[-1] == f"Ré{rows - 1}" and back["score"].dtype == "float64"
        (part,) = partitions_of(storage, ref.uri)
        metadata = pq.read_metadata(ref.uri.removeprefix("file://") + "/" + part.path)
        groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        assert groups == [65_536, rows - 65_536]
    with pytest.raises(ExtractError, match="encoding 'klingon' is not an encoding"):
        extract_partitioned(
            "latin.csv", storage=storage, project="p", name="x", project_dir=folder,
            rows_per_partition=1_000, read_options={"encoding": "klingon"},
        )  # fmt: skip


def test_column_layout_follows_each_files_first_row_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dictionaries for the columns that repeat in a file's first row group (fractional
    numbers too), none for (nearly) unique ones, unique integers delta-encoded; the same
    rows give the same files whatever the CSV's blocks."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    rows = 6_000
    frame = pd.DataFrame(
        {
            "id": np.arange(10_000, 10_000 + rows),  # unique, sequential
            "plan": rng.choice(["basic", "pro", "team"], rows),
            "price": rng.choice([9.99, 19.99, 49.5], rows),  # repeating fractions
            "spend": rng.normal(50, 10, rows),  # (nearly) unique fractions
            "code": [f"c-{i:06d}" for i in rng.permutation(rows)],  # unique text
            "seats": rng.integers(1, 20, rows),  # repeating integers
        }
    )
    folder = tmp_path / "project"
    folder.mkdir()
    frame.to_csv(folder / "rows.csv", index=False)
    storage = Storage(str(tmp_path / "store"))
    ref = extract_partitioned(
        "rows.csv", storage=storage, project="p", name="raw", project_dir=folder,
        rows_per_partition=4_000,
    )  # fmt: skip
    pd.testing.assert_frame_equal(storage.read_dataset(ref.uri), frame)
    for part in partitions_of(storage, ref.uri):
        metadata = pq.read_metadata(ref.uri.removeprefix("file://") + "/" + part.path)
        group = metadata.row_group(0)
        encodings = {
            group.column(i).path_in_schema: set(group.column(i).encodings)
            for i in range(group.num_columns)
        }
        for name in ("plan", "price", "seats"):
            assert "RLE_DICTIONARY" in encodings[name], (name, encodings[name])
        for name in ("id", "spend", "code"):
            assert "RLE_DICTIONARY" not in encodings[name], (name, encodings[name])
        assert "DELTA_BINARY_PACKED" in encodings["id"]
    monkeypatch.setattr(extract, "CSV_STREAM_BLOCK_BYTES", 4_096)
    again = extract_partitioned(
        "rows.csv", storage=storage, project="p", name="raw", project_dir=folder,
        rows_per_partition=4_000,
    )  # fmt: skip
    assert again.sha256 == ref.sha256


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


def test_a_partitioned_extract_to_s3_lands_at_its_address_in_one_try(
    s3_bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "rows.csv"
    pd.DataFrame({"x": range(50), "plan": ["a", "b"] * 25}).to_csv(source, index=False)
    storage = Storage(f"s3://{s3_bucket}/storage")
    for partition_by in (None, ["plan"]):
        ref = extract_partitioned(
            source.as_uri(),
            storage=storage,
            project="p",
            name=f"rows-{bool(partition_by)}",
            rows_per_partition=20,
            partition_by=partition_by,
        )
        fs, path = storage._fs(storage.dataset_dir("p", f"rows-{bool(partition_by)}"))
        assert not [key for key in fs.find(path) if ".staging-" in key]
        assert PartitionedReader(storage, ref.uri).partitions
        assert storage.read_dataset(ref.uri)["x"].sort_values().tolist() == list(range(50))
