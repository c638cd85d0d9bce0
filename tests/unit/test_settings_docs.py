"""docs/settings.md lists every MLWP_* setting, as generated from the settings models."""

from __future__ import annotations

import pytest

from mlwp import settings_docs
from mlwp.settings import REPO_ROOT, Settings
from serving.core.config import ServingSettings

pytestmark = pytest.mark.unit


def test_docs_settings_md_is_the_generated_page() -> None:
    page = (REPO_ROOT / "docs" / "settings.md").read_text()
    assert page == settings_docs.render(), (
        "docs/settings.md is stale: run `python -m mlwp.settings_docs > docs/settings.md`"
    )


def test_every_setting_is_listed_with_a_meaning() -> None:
    page = settings_docs.render()
    for prefix, model in (("MLWP_", Settings), ("MLWP_SERVING_", ServingSettings)):
        for name in model.model_fields:
            row = next(
                (line for line in page.splitlines() if f"`{prefix}{name.upper()}`" in line), None
            )
            assert row is not None, f"{prefix}{name.upper()} is missing"
            assert not row.endswith("| - |"), f"{prefix}{name.upper()} has no meaning"
