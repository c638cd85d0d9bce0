"""Datasets in one storage abstraction over ``file://`` and ``s3://`` (fsspec).

A dataset is a Parquet file named by the sha256 of its bytes, with a JSON sidecar beside it::

    <root>/<project>/datasets/<name>/<sha256>.parquet
    <root>/<project>/datasets/<name>/<sha256>.json     rows, columns, schema, source, sha256,
                                                        created, validation (once validated)

Data larger than a worker's memory is stored with the same names, the ``.parquet`` being a
folder of partition files (:mod:`mlwp.data.partitions`).

Content addressing makes writes idempotent: writing the same frame twice yields the same
URI, and a retried task never produces a second copy. Reading a dataset back recomputes the
sha256 and refuses a file whose bytes no longer match its name.

Only the Airflow-free core lives here: operators call it, so does a SageMaker container.
pandas and pyarrow are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import orjson

from mlwp.errors import MlwpError

if TYPE_CHECKING:
    import fsspec
    import pandas as pd

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
SUPPORTED_SCHEMES = ("file", "s3")


class StorageError(MlwpError):
    """A storage location cannot be used, or an object is missing."""

    code = "storage_error"


class DatasetIntegrityError(StorageError):
    """A dataset's bytes do not match the sha256 in its name."""

    code = "dataset_integrity_error"


@dataclass(frozen=True)
class DatasetRef:
    """A small, JSON-serialisable pointer to a stored dataset (what XCom carries)."""

    uri: str
    sha256: str
    rows: int
    columns: list[str]
    name: str
    project: str
    sidecar_uri: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the document passed between tasks: URI, sha256, shape, sidecar."""
        document: dict[str, Any] = {
            "uri": self.uri,
            "sha256": self.sha256,
            "rows": self.rows,
            "columns": list(self.columns),
            "name": self.name,
            "project": self.project,
            "sidecar_uri": self.sidecar_uri,
        }
        document.update(self.extra)
        return document

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> DatasetRef:
        """Rebuild a reference from :meth:`to_dict`'s output, naming a missing key."""
        known = ("uri", "sha256", "rows", "columns", "name", "project", "sidecar_uri")
        missing = [key for key in known if key not in document]
        if missing:
            raise StorageError(
                f"dataset document lacks {', '.join(missing)}: {sorted(document)!r}",
                code="bad_dataset_document",
            )
        return cls(
            uri=str(document["uri"]),
            sha256=str(document["sha256"]),
            rows=int(document["rows"]),
            columns=[str(column) for column in document["columns"]],
            name=str(document["name"]),
            project=str(document["project"]),
            sidecar_uri=str(document["sidecar_uri"]),
            extra={key: value for key, value in document.items() if key not in known},
        )


def normalise_root(root: str) -> str:
    """Return ``root`` as a URI without a trailing slash; plain paths become ``file://``."""
    text = root.strip()
    if not text:
        raise StorageError("the storage root is empty", code="bad_storage_root")
    parsed = urlparse(text)
    if parsed.scheme in ("", "file") and not text.startswith("s3://"):
        from pathlib import Path

        path = Path(parsed.path if parsed.scheme == "file" else text).expanduser().resolve()
        return path.as_uri()
    if parsed.scheme not in SUPPORTED_SCHEMES:
        raise StorageError(
            f"storage root {root!r} has scheme {parsed.scheme!r}; "
            f"supported schemes are {', '.join(SUPPORTED_SCHEMES)}",
            code="bad_storage_root",
        )
    if parsed.scheme == "s3" and not parsed.netloc:
        raise StorageError(f"storage root {root!r} names no bucket", code="bad_storage_root")
    return text.rstrip("/")


def filesystem(uri: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the fsspec filesystem serving ``uri`` and the path inside it."""
    import fsspec.core

    scheme = urlparse(uri).scheme or "file"
    if scheme not in SUPPORTED_SCHEMES:
        raise StorageError(
            f"{uri!r} has scheme {scheme!r}; supported schemes are {', '.join(SUPPORTED_SCHEMES)}",
            code="bad_uri",
        )
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    return fs, path


def _check_name(kind: str, value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise StorageError(
            f"{kind} {value!r} is not a valid storage name (letters, digits, '_', '.', '-')",
            code="bad_name",
        )
    return value


def _schema_of(frame: pd.DataFrame) -> dict[str, str]:
    return {str(column): str(dtype) for column, dtype in frame.dtypes.items()}


def frame_to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Serialise ``frame`` to Parquet deterministically (same frame, same bytes)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, engine="pyarrow", index=False, compression="snappy")
    return buffer.getvalue()


class Storage:
    """Datasets and their sidecars under one root (``file://`` or ``s3://``)."""

    def __init__(self, root: str, **storage_options: Any) -> None:
        self.root = normalise_root(root)
        self.storage_options = storage_options

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    # ------------------------------------------------------------------ locations

    def dataset_dir(self, project: str, name: str) -> str:
        """URI of the folder holding every version of dataset ``name`` of ``project``."""
        project = _check_name("project", project)
        return f"{self.root}/{project}/datasets/{_check_name('dataset name', name)}"

    def dataset_uri(self, project: str, name: str, sha256: str) -> str:
        """URI of the Parquet file of one dataset version."""
        return f"{self.dataset_dir(project, name)}/{sha256}.parquet"

    @staticmethod
    def sidecar_uri_of(dataset_uri: str) -> str:
        """URI of the JSON sidecar beside a dataset's Parquet file."""
        if not dataset_uri.endswith(".parquet"):
            raise StorageError(f"{dataset_uri!r} is not a .parquet dataset URI", code="bad_uri")
        return dataset_uri[: -len(".parquet")] + ".json"

    @staticmethod
    def sha256_of_uri(dataset_uri: str) -> str:
        """The sha256 a dataset URI is named by, checked for shape."""
        stem = dataset_uri.rsplit("/", 1)[-1].removesuffix(".parquet")
        if not SHA256_PATTERN.match(stem):
            raise StorageError(
                f"{dataset_uri!r} is not named <sha256>.parquet, so it cannot be verified",
                code="bad_uri",
            )
        return stem

    # ------------------------------------------------------------------ bytes

    def _fs(self, uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
        return filesystem(uri, **self.storage_options)

    def exists(self, uri: str) -> bool:
        fs, path = self._fs(uri)
        return bool(fs.exists(path))

    def read_bytes(self, uri: str) -> bytes:
        """Return the bytes at ``uri``, naming it when it is missing."""
        fs, path = self._fs(uri)
        try:
            with fs.open(path, "rb") as handle:
                data: bytes = handle.read()
        except FileNotFoundError as exc:
            raise StorageError(f"{uri} does not exist", code="not_found") from exc
        return data

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write ``data`` at ``uri`` (parent folders created), replacing what was there."""
        fs, path = self._fs(uri)
        parent = path.rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        # Write then move so a reader never sees half a file on local disks.
        temporary = f"{path}.tmp-{hashlib.sha256(data).hexdigest()[:8]}"
        with fs.open(temporary, "wb") as handle:
            handle.write(data)
        fs.mv(temporary, path)

    def read_json(self, uri: str) -> dict[str, Any]:
        document = orjson.loads(self.read_bytes(uri))
        if not isinstance(document, dict):
            raise StorageError(f"{uri} does not hold a JSON object", code="bad_json")
        return document

    def write_json(self, uri: str, document: dict[str, Any]) -> None:
        self.write_bytes(
            uri,
            orjson.dumps(
                document,
                option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY,
            ),
        )

    def upload_folder(self, local_folder: str, uri: str) -> None:
        """Copy a local folder tree (data docs, reports) to ``uri``."""
        from pathlib import Path

        base = Path(local_folder)
        for item in sorted(base.rglob("*")):
            if item.is_file():
                relative = item.relative_to(base).as_posix()
                self.write_bytes(f"{uri.rstrip('/')}/{relative}", item.read_bytes())

    # ------------------------------------------------------------------ datasets

    def write_dataset(
        self,
        frame: pd.DataFrame,
        *,
        project: str,
        name: str,
        source: str,
        metadata: dict[str, Any] | None = None,
    ) -> DatasetRef:
        """Store ``frame`` as a content-addressed Parquet dataset with its sidecar.

        Writing identical data again returns the same reference and keeps the first
        sidecar's ``created`` time (and any validation result already recorded).
        """
        data = frame_to_parquet_bytes(frame)
        sha256 = hashlib.sha256(data).hexdigest()
        uri = self.dataset_uri(project, name, sha256)
        sidecar_uri = self.sidecar_uri_of(uri)
        if not self.exists(uri):
            self.write_bytes(uri, data)
        if self.exists(sidecar_uri):
            sidecar = self.read_json(sidecar_uri)
        else:
            sidecar = {
                "uri": uri,
                "sha256": sha256,
                "project": project,
                "name": name,
                "rows": len(frame),
                "columns": [str(column) for column in frame.columns],
                "schema": _schema_of(frame),
                "bytes": len(data),
                "source": source,
                "created": datetime.now(UTC).isoformat(),
            }
            if metadata:
                sidecar["metadata"] = metadata
            self.write_json(sidecar_uri, sidecar)
        return DatasetRef(
            uri=uri,
            sha256=sha256,
            rows=len(frame),
            columns=[str(column) for column in frame.columns],
            name=name,
            project=project,
            sidecar_uri=sidecar_uri,
        )

    def read_dataset(self, uri: str, *, verify: bool = True) -> pd.DataFrame:
        """Load a dataset, first checking its bytes against the sha256 in its name."""
        import pandas as pd

        expected = self.sha256_of_uri(uri) if verify else ""
        fs, path = self._fs(uri)
        if fs.isdir(path):  # a partitioned dataset (mlwp.data.partitions): its files, verified
            from mlwp.data.partitions import read_partitioned

            return read_partitioned(self, uri, verify=verify)
        data = self.read_bytes(uri)
        if verify:
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise DatasetIntegrityError(
                    f"{uri} is corrupt or was modified: its sha256 is {actual}, "
                    f"its name says {expected}"
                )
        return pd.read_parquet(io.BytesIO(data), engine="pyarrow")

    def read_sidecar(self, dataset_uri: str) -> dict[str, Any]:
        """Return the JSON sidecar of a dataset."""
        return self.read_json(self.sidecar_uri_of(dataset_uri))

    def update_sidecar(self, dataset_uri: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into a dataset's sidecar (nested dicts merged one level deep)."""
        sidecar = self.read_sidecar(dataset_uri)
        for key, value in fields.items():
            current = sidecar.get(key)
            if isinstance(current, dict) and isinstance(value, dict):
                sidecar[key] = {**current, **value}
            else:
                sidecar[key] = value
        self.write_json(self.sidecar_uri_of(dataset_uri), sidecar)
        return sidecar

    def versions(self, project: str, name: str) -> list[dict[str, Any]]:
        """Sidecars of every stored version of a dataset, newest first."""
        directory = self.dataset_dir(project, name)
        fs, path = self._fs(directory)
        if not fs.exists(path):
            return []
        sidecars = []
        for entry in fs.ls(path, detail=False):
            stem = str(entry).rsplit("/", 1)[-1]
            if stem.endswith(".json") and SHA256_PATTERN.match(stem.removesuffix(".json")):
                sidecars.append(self.read_json(f"{directory}/{stem}"))
        return sorted(sidecars, key=lambda item: str(item.get("created", "")), reverse=True)


def default_storage(root: str | None = None) -> Storage:
    """The storage at ``root``, else ``MLWP_STORAGE_ROOT`` (settings), else ``<home>/storage``."""
    if root:
        return Storage(root)
    from mlwp.settings import get_settings

    return Storage(get_settings().storage_uri)
