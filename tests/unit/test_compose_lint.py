"""docker-compose.yaml against the Compose schema and dclint's rules, and its .env.example.

dclint (npm, installed by tools/install-checkers) validates the file against the current
Compose specification and best-practice rules with no Docker engine; Debian's docker-compose
1.29 is too old for this file's syntax (``name``, ``configs.content``), so it is not the judge.
"""

from __future__ import annotations

import re

import pytest
from checkers import REPO_ROOT, checker, run_checker

pytestmark = pytest.mark.unit

COMPOSE = REPO_ROOT / "docker-compose.yaml"


def test_dclint_finds_no_error_and_no_warning() -> None:
    dclint = checker("dclint")
    result = run_checker([dclint, "--max-warnings", "0", "--color", "false", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_env_example_lists_every_variable_the_file_reads() -> None:
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    example = (REPO_ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert used == listed
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE.read_text()))
    for name in required:
        # Empty in the example, so `docker compose up` names it until it is filled in.
        assert re.search(rf"^{name}=$", example, flags=re.MULTILINE), name


def test_state_volumes_never_cover_the_code() -> None:
    import yaml

    compose = yaml.safe_load(COMPOSE.read_text())
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source in compose["volumes"]:
                assert not "/opt/mlwp/app".startswith(target), (name, volume)
