"""First-run set-up steps that need no Airflow database."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlwp.errors import PlatformError
from mlwp.platform import bootstrap
from mlwp.settings import Settings


def test_a_too_short_admin_password_stops_the_start_with_the_reason(tmp_path: Path) -> None:
    # operators.rbac refuses it before touching the database; nothing is written.
    settings = Settings(home=tmp_path / "home", admin_password="short")
    log = tmp_path / "init.log"
    with pytest.raises(PlatformError, match="at least 12 characters") as refused:
        bootstrap.ensure_admin(settings, log)
    assert str(log) in refused.value.message
    assert "at least 12 characters" in log.read_text()
    assert not settings.credentials_file.exists()
