"""Storage: content addressing, sidecars, integrity checks, file:// roots."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from mlwp.data.storage import (
    DatasetIntegrityError,
    DatasetRef,
    Storage,
    StorageError,
    normalise_root,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None], "c": [0.5, 1.5, 2.5]})


def test_write_is_content_addressed(tmp_path: Path, frame: pd.DataFrame) -> None:
    storage = Storage(str(tmp_path))
    ref = storage.write_dataset(frame, project="churn", name="raw", source="data/x.csv")
    path = tmp_path / "churn" / "datasets" / "raw" / f"{ref.sha256}.parquet"
    assert path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ref.sha256
    assert ref.uri == path.as_uri()
    assert ref.rows == 3 and ref.columns == ["a", "b", "c"]


def test_same_data_same_uri_and_first_sidecar_kept(tmp_path: Path, frame: pd.DataFrame) -> None:
    storage = Storage(tmp_path.as_uri())
    first = storage.write_dataset(frame, project="p", name="d", source="one")
    created = storage.read_sidecar(first.uri)["created"]
    second = storage.write_dataset(frame.copy(), project="p", name="d", source="two")
    assert second.uri == first.uri
    assert storage.read_sidecar(first.uri)["created"] == created
    other = storage.write_dataset(frame.iloc[:2], project="p", name="d", source="three")
    assert other.sha256 != first.sha256
    assert len(storage.versions("p", "d")) == 2


def test_sidecar_content(tmp_path: Path, frame: pd.DataFrame) -> None:
    storage = Storage(str(tmp_path))
    ref = storage.write_dataset(frame, project="p", name="d", source="file:///src.csv")
    sidecar = storage.read_sidecar(ref.uri)
    assert sidecar["sha256"] == ref.sha256
    assert sidecar["rows"] == 3
    assert sidecar["columns"] == ["a", "b", "c"]
    assert sidecar["schema"]["a"] == "int64"
    assert sidecar["source"] == "file:///src.csv"
    assert (Path(ref.sidecar_uri.removeprefix("file://"))).is_file()


def test_round_trip_and_sha_check(tmp_path: Path, frame: pd.DataFrame) -> None:
    storage = Storage(str(tmp_path))
    ref = storage.write_dataset(frame, project="p", name="d", source="s")
    back = storage.read_dataset(ref.uri)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    # Tamper with the bytes: reading must refuse them and name both hashes.
    path = Path(ref.uri.removeprefix("file://"))
    other = Storage(str(tmp_path / "other")).write_dataset(
        frame.iloc[:1], project="p", name="d", source="s"
    )
    path.write_bytes(Path(other.uri.removeprefix("file://")).read_bytes())
    with pytest.raises(DatasetIntegrityError, match=ref.sha256):
        storage.read_dataset(ref.uri)
    assert len(storage.read_dataset(ref.uri, verify=False)) == 1


def test_update_sidecar_merges(tmp_path: Path, frame: pd.DataFrame) -> None:
    storage = Storage(str(tmp_path))
    ref = storage.write_dataset(frame, project="p", name="d", source="s")
    storage.update_sidecar(ref.uri, validation={"s1": {"success": True}})
    storage.update_sidecar(ref.uri, validation={"s2": {"success": False}})
    assert set(storage.read_sidecar(ref.uri)["validation"]) == {"s1", "s2"}


def test_ref_round_trip_and_missing_keys() -> None:
    ref = DatasetRef(
        uri="file:///x/" + "a" * 64 + ".parquet",
        sha256="a" * 64,
        rows=1,
        columns=["x"],
        name="d",
        project="p",
        sidecar_uri="file:///x.json",
        extra={"task_id": "t"},
    )
    assert DatasetRef.from_dict(ref.to_dict()) == ref
    with pytest.raises(StorageError, match="sha256"):
        DatasetRef.from_dict({"uri": "u"})


def test_bad_roots_and_names(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="gs"):
        normalise_root("gs://bucket/x")
    with pytest.raises(StorageError, match="bucket"):
        normalise_root("s3://")
    assert normalise_root("s3://bucket/prefix/") == "s3://bucket/prefix"
    with pytest.raises(StorageError, match="not a valid storage name"):
        Storage(str(tmp_path)).dataset_dir("p", "../escape")
    with pytest.raises(StorageError, match="does not exist"):
        Storage(str(tmp_path)).read_dataset(Storage(str(tmp_path)).dataset_uri("p", "d", "b" * 64))
    with pytest.raises(StorageError, match="sha256"):
        Storage(str(tmp_path)).read_dataset((tmp_path / "x.parquet").as_uri())
