"""The platform audit trail in SQL: record, filter, list from the CLI, concurrent writers,
the import of a legacy JSON-lines trail; on SQLite here, on PostgreSQL in
tests/integration/test_audit_postgres.py."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlwp.cli import app
from mlwp.security.audit import (
    HEAD_REVISION,
    MIGRATIONS_DIR,
    AuditError,
    audit_path,
    import_jsonl,
    import_legacy_trail,
    list_events,
    record,
)

pytestmark = pytest.mark.unit


def test_record_then_list_round_trips(tmp_path: Path) -> None:
    before = datetime.now(UTC)
    event = record("alice", "model.promote", "churn", {"version": 3}, home=tmp_path)
    events = list_events(home=tmp_path)
    assert events == [event]
    assert events[0].actor == "alice"
    assert events[0].details == {"version": 3}
    assert before <= events[0].timestamp <= datetime.now(UTC)
    # In the installation's metadata database, not in a file beside it.
    assert (tmp_path / "airflow.db").is_file()
    assert not audit_path(tmp_path).exists()


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


def _legacy_line(actor: str, action: str, target: str, **details: object) -> str:
    return json.dumps(
        {
            "timestamp": "2026-11-01T10:00:00+00:00",
            "actor": actor,
            "action": action,
            "target": target,
            "details": details,
        }
    )


def test_legacy_jsonl_trail_is_imported_once(tmp_path: Path) -> None:
    record("carol", "role.sync", "Viewer", home=tmp_path)
    legacy = audit_path(tmp_path)
    legacy.write_text(
        _legacy_line("alice", "model.promote", "churn", version=3)
        + "\n\n"
        + _legacy_line("bob", "apikey.create", "key-1")
        + "\n"
    )
    assert import_jsonl(legacy, home=tmp_path) == 2
    assert import_jsonl(legacy, home=tmp_path) == 0  # idempotent
    events = list_events(home=tmp_path)
    assert [(e.actor, e.action) for e in events] == [
        ("carol", "role.sync"),
        ("alice", "model.promote"),
        ("bob", "apikey.create"),
    ]
    assert events[1].timestamp == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert events[1].details == {"version": 3}
    # What `mlwp up` does: import, then keep the file under another name.
    assert import_legacy_trail(tmp_path) == 0
    assert not legacy.exists() and legacy.with_name("audit.jsonl.imported").is_file()
    assert import_legacy_trail(tmp_path) is None


def test_corrupt_legacy_line_names_file_and_line_and_imports_nothing(tmp_path: Path) -> None:
    legacy = audit_path(tmp_path)
    legacy.write_text(_legacy_line("alice", "role.sync", "Admin") + "\n{not json\n")
    with pytest.raises(AuditError, match=r"audit\.jsonl:2: not a valid audit event"):
        import_jsonl(legacy, home=tmp_path)
    assert list_events(home=tmp_path) == []


def test_head_revision_is_the_newest_migration() -> None:
    scripts = sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*.py"))
    assert scripts[-1].startswith(f"{HEAD_REVISION}_")


def test_action_prefix_is_not_a_sql_pattern(tmp_path: Path) -> None:
    record("alice", "model_x.promote", "churn", home=tmp_path)
    assert list_events(home=tmp_path, action="model%") == []
    assert list_events(home=tmp_path, action="model") == []
    assert len(list_events(home=tmp_path, action="model_x")) == 1


def _record_many(home: str, worker: int) -> None:
    for index in range(50):
        record(
            f"user{worker}", "apikey.create", f"key-{index}", {"pad": "x" * 2000}, home=Path(home)
        )


def test_concurrent_processes_lose_no_event(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), n)) for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    events = list_events(home=tmp_path)
    assert len(events) == 200
    assert all(len(e.details["pad"]) == 2000 for e in events)


def test_threads_of_one_process_reading_a_new_trail_at_once_all_get_it(tmp_path: Path) -> None:
    # An api-server's first concurrent requests each migrate the new audit table; Alembic's
    # module-global proxies broke the runs of threads migrating at once (KeyError 'config').
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: list_events(home=tmp_path), range(8)))
    assert answers == [[]] * 8


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
