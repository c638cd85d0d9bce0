"""docs/security.md publishes the role-by-action matrix computed from the role table."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from mlwp.cli import app
from mlwp.security.roles import render_matrix_markdown
from mlwp.settings import REPO_ROOT

pytestmark = pytest.mark.unit

BLOCK = re.compile(
    r"<!-- BEGIN GENERATED: role matrix \(mlwp roles matrix\) -->\n(.*?)"
    r"<!-- END GENERATED: role matrix -->",
    re.S,
)


def test_security_doc_matrix_is_up_to_date() -> None:
    text = (REPO_ROOT / "docs" / "security.md").read_text()
    match = BLOCK.search(text)
    assert match, "docs/security.md lost its generated matrix block"
    assert match.group(1) == render_matrix_markdown(), "regenerate with `mlwp roles matrix`"


def test_roles_matrix_command_prints_the_same_table() -> None:
    result = CliRunner().invoke(app, ["roles", "matrix"])
    assert result.exit_code == 0
    assert result.output == render_matrix_markdown()
