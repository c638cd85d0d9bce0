"""The checking tools tests run (helm, kubectl, dclint, checkov, hadolint, actionlint...).

``tools/install-checkers`` puts the npm- and tool-environment-based ones in ``.tools/bin``;
the PyPI ones in uv.lock are beside this Python. A test that needs a missing tool is skipped
with the command that installs it, or fails when ``MLWP_REQUIRE_SERVICES=1`` (CI), where a
missing tool means the installer did not run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_BIN = Path(os.environ.get("MLWP_TOOLS_DIR", REPO_ROOT / ".tools")) / "bin"
VENV_BIN = Path(sys.executable).parent


def checker(name: str) -> str:
    """Path of the checking tool ``name``: .tools/bin, then this environment, then PATH."""
    # ~/.local/bin: where the Makefile's `pip install --user uv` puts uv.
    for folder in (TOOLS_BIN, VENV_BIN, Path.home() / ".local" / "bin"):
        candidate = folder / name
        if candidate.exists() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is not None:
        return found
    missing(
        f"{name} is not installed: run tools/install-checkers {name} "
        "(or `uv sync --frozen` for the PyPI ones)"
    )


def c_compiler() -> str:
    """The C compiler serving builds a model's trees with (``$CC``, ``cc``, ``gcc``)."""
    found = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if found:
        return found
    missing("no C compiler (cc or gcc) to build the trees with: install gcc")


def missing(message: str) -> NoReturn:
    """Skip a test whose tool is missing, or fail it when ``MLWP_REQUIRE_SERVICES=1`` (CI)."""
    if os.environ.get("MLWP_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} (MLWP_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


def run_checker(
    argv: Sequence[str], *, cwd: Path = REPO_ROOT, timeout: float = 300, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a checking tool; the caller asserts on its return code and output."""
    return subprocess.run(
        list(argv),
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        input=input,
    )
