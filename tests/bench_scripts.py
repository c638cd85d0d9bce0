"""The benchmarks' scripts as modules, for tests of their pure helpers: they are run as
scripts (``python bench/serving/run.py``), not imported as a package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(relative: str) -> Any:
    """The script at ``bench/<relative>``, executed as a module of its own."""
    path = BENCH / relative
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module
