"""``mlwp keys create|list|revoke`` against the SQLite key store under MLWP_HOME."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from mlwp.cli import app

pytestmark = pytest.mark.unit


def test_create_list_revoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLWP_HOME", str(tmp_path))
    monkeypatch.delenv("MLWP_SERVING_HOME", raising=False)
    runner = CliRunner()
    created = runner.invoke(
        app,
        ["keys", "create", "checkout", "-s", "model:churn", "--rate-limit", "50/second", "--json"],
    )
    assert created.exit_code == 0, created.output
    key = orjson.loads(created.stdout)
    assert key["scopes"] == ["model:churn"] and key["token"].startswith("mlwp_")

    from serving.keys.store import KeyStore

    store = KeyStore(f"sqlite:///{tmp_path / 'serving.db'}", cache_seconds=0)
    assert store.verify(key["token"]) is not None

    listed = runner.invoke(app, ["keys", "list", "--json"])
    assert [orjson.loads(line)["key_id"] for line in listed.stdout.splitlines()] == [key["key_id"]]
    assert key["token"] not in listed.stdout
    # the table, in 80 columns, shows the whole id (which revoke takes) and the scopes:
    # they were cut to "c13dd491eb…" and "feedback:c…"
    table = runner.invoke(app, ["keys", "list"], env={"COLUMNS": "80"})
    assert key["key_id"] in table.stdout and "model:churn" in table.stdout, table.stdout

    revoked = runner.invoke(app, ["keys", "revoke", key["key_id"]])
    assert revoked.exit_code == 0 and "revoked key" in revoked.stdout
    assert store.verify(key["token"]) is None
    again = runner.invoke(app, ["keys", "revoke", key["key_id"]])
    assert again.exit_code == 2 and "already revoked" in again.output

    bad = runner.invoke(app, ["keys", "create", "x", "-s", "everything"])
    assert bad.exit_code == 2 and "invalid scope 'everything'" in bad.output
    store.close()
