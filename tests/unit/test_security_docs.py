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


APPROVALS = re.compile(
    r"<!-- BEGIN GENERATED: approval matrix -->\n(.*?)<!-- END GENERATED: approval matrix -->",
    re.S,
)


def test_security_doc_four_eyes_matrix_is_up_to_date() -> None:
    from mlwp.security.approvals import render_approval_matrix_markdown

    text = (REPO_ROOT / "docs" / "security.md").read_text()
    match = APPROVALS.search(text)
    assert match, "docs/security.md lost its generated approval matrix block"
    assert match.group(1) == render_approval_matrix_markdown()
