"""Extract: sources relative to the project folder, file:// URIs, formats, bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mlwp.data.extract import ExtractError, extract, infer_format, resolve_source
from mlwp.data.storage import Storage

pytestmark = pytest.mark.unit


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    pd.DataFrame({"x": [1, 2], "y": ["a", "b"]}).to_csv(folder / "data" / "d.csv", index=False)
    pd.DataFrame({"x": [1.5]}).to_parquet(folder / "data" / "d.parquet")
    return folder


def test_relative_csv_and_parquet(project_dir: Path, tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "store"))
    ref = extract("data/d.csv", storage=storage, project="p", name="raw", project_dir=project_dir)
    assert ref.rows == 2 and ref.columns == ["x", "y"]
    assert storage.read_sidecar(ref.uri)["source"] == (project_dir / "data" / "d.csv").as_uri()
    ref = extract(
        "data/d.parquet", storage=storage, project="p", name="pq", project_dir=project_dir
    )
    assert storage.read_dataset(ref.uri)["x"].tolist() == [1.5]


def test_file_uri_and_read_options(project_dir: Path, tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "store"))
    uri = (project_dir / "data" / "d.csv").as_uri()
    ref = extract(uri, storage=storage, project="p", name="raw", read_options={"usecols": ["y"]})
    assert ref.columns == ["y"]
    with pytest.raises(ExtractError, match="read_options sepp"):
        extract(uri, storage=storage, project="p", name="raw", read_options={"sepp": ";"})


def test_missing_and_escaping_sources(project_dir: Path, tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "store"))
    with pytest.raises(ExtractError, match=r"does not exist"):
        extract("data/nope.csv", storage=storage, project="p", name="raw", project_dir=project_dir)
    with pytest.raises(ExtractError, match="outside the project folder"):
        resolve_source("../secrets.csv", project_dir)
    with pytest.raises(ExtractError, match="scheme 'gs'"):
        resolve_source("gs://bucket/x.csv", project_dir)
    with pytest.raises(ExtractError, match="no project folder"):
        resolve_source("data/d.csv", None)


def test_malformed_parquet_names_source(project_dir: Path, tmp_path: Path) -> None:
    (project_dir / "data" / "bad.parquet").write_text("not parquet")
    with pytest.raises(ExtractError, match=r"bad\.parquet as parquet"):
        extract(
            "data/bad.parquet",
            storage=Storage(str(tmp_path / "s")),
            project="p",
            name="raw",
            project_dir=project_dir,
        )


def test_infer_format() -> None:
    assert infer_format("s3://b/x.parquet") == "parquet"
    assert infer_format("x.csv") == "csv"
    assert infer_format("x.txt", "parquet") == "parquet"
    with pytest.raises(ExtractError, match="json"):
        infer_format("x", "json")
