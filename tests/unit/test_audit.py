"""The platform audit trail: record, filter, list from the CLI, concurrent appends."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlwp.audit import AuditError, audit_path, list_events, record
from mlwp.cli import app

pytestmark = pytest.mark.unit


def test_record_then_list_round_trips(tmp_path: Path) -> None:
    before = datetime.now(UTC)
    event = record("alice", "model.promote", "churn", {"version": 3}, home=tmp_path)
    events = list_events(home=tmp_path)
    assert events == [event]
    assert events[0].actor == "alice"
    assert events[0].details == {"version": 3}
    assert before <= events[0].timestamp <= datetime.now(UTC)
    assert oct(audit_path(tmp_path).stat().st_mode & 0o777) == "0o600"


def test_filters_by_actor_action_prefix_target_since_and_limit(tmp_path: Path) -> None:
    record("alice", "model.promote", "churn", home=tmp_path)
    record("bob", "traffic.set", "churn", {"champion": 90, "challenger": 10}, home=tmp_path)
    record("alice", "apikey.create", "key-1", home=tmp_path)
    assert [e.action for e in list_events(home=tmp_path, actor="alice")] == [
        "model.promote",
        "apikey.create",
    ]
    assert [e.actor for e in list_events(home=tmp_path, action="traffic")] == ["bob"]
    assert list_events(home=tmp_path, action="model.prom") == []  # prefix is per dotted part
    assert len(list_events(home=tmp_path, target="churn")) == 2
    assert [e.target for e in list_events(home=tmp_path, limit=1)] == ["key-1"]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert list_events(home=tmp_path, since=future) == []


def test_bad_input_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="actor must be a non-empty"):
        record(" ", "role.sync", "Admin", home=tmp_path)
    with pytest.raises(AuditError, match="action must be a non-empty"):
        record("alice", "", "Admin", home=tmp_path)
    with pytest.raises(AuditError, match="not JSON-serialisable"):
        record("alice", "role.sync", "Admin", {"when": object()}, home=tmp_path)


def test_corrupt_line_names_file_and_line(tmp_path: Path) -> None:
    record("alice", "role.sync", "Admin", home=tmp_path)
    with audit_path(tmp_path).open("a") as handle:
        handle.write("{not json\n")
    with pytest.raises(AuditError, match=r"audit\.jsonl:2: not a valid audit event"):
        list_events(home=tmp_path)


def _record_many(home: str, worker: int) -> None:
    for index in range(50):
        record(
            f"user{worker}", "apikey.create", f"key-{index}", {"pad": "x" * 2000}, home=Path(home)
        )


def test_concurrent_processes_never_interleave_lines(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), n)) for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    assert len(list_events(home=tmp_path)) == 200


def test_cli_lists_events_as_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLWP_HOME", str(tmp_path))
    record("alice", "traffic.set", "churn", {"champion": 80}, home=tmp_path)
    record("bob", "role.sync", "DataScientist", home=tmp_path)
    result = CliRunner().invoke(app, ["audit", "list", "--json", "--actor", "alice"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [(e["actor"], e["action"], e["target"]) for e in lines] == [
        ("alice", "traffic.set", "churn")
    ]
    table = CliRunner().invoke(app, ["audit", "list"])
    assert table.exit_code == 0
    assert "role.sync" in table.output
