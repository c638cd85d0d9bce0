"""Lineage: where a model version came from, as its ``mlwp.<key>`` tags."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

TAG = "mlwp."
LINEAGE_KEYS = (
    "project",
    "workflow",
    "dag_id",
    "airflow_run_id",
    "task_id",
    "mlflow_run_id",
    "dataset_uri",
    "dataset_sha256",
    "gx_success",
    "gx_statistics",
    "code_version",
    "backend",
    "job_name",
)


def code_version(repo: Path | None = None) -> str | None:
    """``MLWP_CODE_VERSION`` if set, else the git commit of the repository (``+dirty`` if so)."""
    if os.environ.get("MLWP_CODE_VERSION"):
        return os.environ["MLWP_CODE_VERSION"]
    root = repo or Path(__file__).resolve().parents[2]  # the repository
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha or None


@dataclass
class Lineage:
    """Where a model version came from; becomes the version's ``mlwp.*`` tags."""

    project: str | None = None
    workflow: str | None = None
    dag_id: str | None = None
    airflow_run_id: str | None = None
    task_id: str | None = None
    mlflow_run_id: str | None = None
    dataset_uri: str | None = None
    dataset_sha256: str | None = None
    gx_success: bool | None = None
    gx_statistics: Mapping[str, Any] | None = None
    code_version: str | None = None
    backend: str | None = None
    job_name: str | None = None

    def tags(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in asdict(self).items():
            if value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, Mapping):
                text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
            else:
                text = str(value)
            out[f"{TAG}{key}"] = text[:5000]
        return out

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Lineage:
        values: dict[str, Any] = {}
        for key in LINEAGE_KEYS:
            text = tags.get(f"{TAG}{key}")
            if text is None:
                continue
            if key == "gx_success":
                values[key] = text == "true"
            elif key == "gx_statistics":
                values[key] = orjson.loads(text)
            else:
                values[key] = text
        return cls(**values)
