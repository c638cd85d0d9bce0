"""Extract: read CSV or Parquet from the project folder, ``file://`` or ``s3://``, then store it.

SQL extraction is done by the Airflow operator through the Postgres provider's hook (which
returns a DataFrame) and then goes through :func:`store_extract`, the same write path.
"""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from mlwp.errors import MlwpError
from mlwp.storage import DatasetRef, Storage, filesystem

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("csv", "parquet")

# Options of pandas.read_csv / read_parquet a definition may set; anything else is refused so
# that a typo does not silently do nothing.
CSV_OPTIONS = frozenset(
    {
        "sep",
        "delimiter",
        "header",
        "names",
        "usecols",
        "dtype",
        "na_values",
        "keep_default_na",
        "skiprows",
        "nrows",
        "encoding",
        "decimal",
        "thousands",
        "comment",
        "quotechar",
        "parse_dates",
        "true_values",
        "false_values",
    }
)
PARQUET_OPTIONS = frozenset({"columns", "filters"})


class ExtractError(MlwpError):
    """A source cannot be read: missing, unsupported or malformed."""

    code = "extract_error"


def infer_format(source: str, fmt: str | None = None) -> str:
    """Return the explicit format, else the one the source's suffix names, else csv."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ExtractError(
                f"format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}",
                code="bad_format",
            )
        return fmt
    suffixes = PurePosixPath(urlparse(source).path).suffixes
    if ".parquet" in suffixes or ".pq" in suffixes:
        return "parquet"
    return "csv"


def resolve_source(source: str, project_dir: str | Path | None) -> str:
    """Turn a definition's ``source`` into a URI: relative paths are under the project folder.

    A relative path may not climb out of the project folder (``../``).
    """
    text = source.strip()
    if not text:
        raise ExtractError("the extract source is empty", code="bad_source")
    scheme = urlparse(text).scheme
    if scheme in ("s3", "file"):
        return text
    if scheme and len(scheme) > 1:
        raise ExtractError(
            f"source {source!r} has scheme {scheme!r}; use a path relative to the project "
            "folder, file:// or s3://",
            code="bad_source",
        )
    path = Path(text).expanduser()
    if not path.is_absolute():
        if project_dir is None:
            raise ExtractError(
                f"source {source!r} is relative but no project folder is known",
                code="bad_source",
            )
        base = Path(project_dir).resolve()
        path = (base / path).resolve()
        if not path.is_relative_to(base):
            raise ExtractError(
                f"source {source!r} points outside the project folder {base}",
                code="bad_source",
            )
    return path.resolve().as_uri()


def read_frame(
    uri: str,
    fmt: str,
    read_options: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Read one CSV or Parquet object into a DataFrame, naming the source on any failure."""
    import pandas as pd

    options = dict(read_options or {})
    allowed = CSV_OPTIONS if fmt == "csv" else PARQUET_OPTIONS
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ExtractError(
            f"read_options {', '.join(unknown)} are not supported for {fmt}; "
            f"allowed: {', '.join(sorted(allowed))}",
            code="bad_read_options",
        )
    fs, path = filesystem(uri, **(storage_options or {}))
    try:
        with fs.open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError as exc:
        raise ExtractError(f"source {uri} does not exist", code="source_not_found") from exc
    try:
        if fmt == "csv":
            return pd.read_csv(io.BytesIO(data), **options)
        return pd.read_parquet(io.BytesIO(data), engine="pyarrow", **options)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ExtractError(f"cannot read {uri} as {fmt}: {exc}", code="bad_source_data") from exc


def extract_frame(
    source: str,
    *,
    project_dir: str | Path | None = None,
    fmt: str | None = None,
    read_options: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, str]:
    """Read ``source`` and return the frame and the resolved source URI."""
    uri = resolve_source(source, project_dir)
    frame = read_frame(uri, infer_format(source, fmt), read_options)
    if frame.columns.size == 0:
        raise ExtractError(f"source {uri} has no columns", code="empty_source")
    return frame, uri


def store_extract(
    frame: pd.DataFrame,
    *,
    storage: Storage,
    project: str,
    name: str,
    source: str,
) -> DatasetRef:
    """Write an extracted frame as a dataset (column names kept as strings)."""
    frame = frame.rename(columns=str)
    duplicated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if duplicated:
        raise ExtractError(
            f"source {source} has duplicated columns: {', '.join(duplicated)}",
            code="duplicated_columns",
        )
    return storage.write_dataset(frame, project=project, name=name, source=source)


def extract(
    source: str,
    *,
    storage: Storage,
    project: str,
    name: str,
    project_dir: str | Path | None = None,
    fmt: str | None = None,
    read_options: dict[str, Any] | None = None,
) -> DatasetRef:
    """Read ``source`` (CSV or Parquet) and store it as dataset ``name`` of ``project``."""
    frame, uri = extract_frame(source, project_dir=project_dir, fmt=fmt, read_options=read_options)
    return store_extract(frame, storage=storage, project=project, name=name, source=uri)
