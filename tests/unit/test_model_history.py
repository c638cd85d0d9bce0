"""The alias/traffic history read back from the audit trail, and which state a rollback picks
(issue #14): on a private SQLite trail, without MLflow (tests/integration/test_registry.py
runs the same against a real MLflow server)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mlwp import registry
from mlwp.registry import RegistryError, model_changes
from mlwp.security import audit

pytestmark = pytest.mark.unit

S1 = {"aliases": {"champion": "1"}, "traffic": {"champion": 100}}
S2 = {
    "aliases": {"champion": "1", "challenger": "2"},
    "traffic": {"champion": 90, "challenger": 10},
}
S3 = {
    "aliases": {"champion": "1", "challenger": "2"},
    "traffic": {"champion": 50, "challenger": 50},
}
S4 = {"aliases": {"champion": "2"}, "traffic": {"champion": 100}}


@pytest.fixture
def trail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[audit.AuditEvent]]:
    monkeypatch.setenv("MLWP_HOME", str(tmp_path))
    events = [
        audit.record(
            "workflow:churn.train",
            "model.deploy",
            "churn",
            {
                "from": {"aliases": {}, "traffic": {"champion": 100}},
                "to": S1,
                "alias": "champion",
                "kind": "workflow",
            },
        ),
        audit.record(
            "workflow:churn.train",
            "model.deploy",
            "churn",
            {"from": S1, "to": S2, "alias": "challenger", "kind": "workflow"},
        ),
        audit.record("apikey-admin", "apikey.create", "churn", {}),  # not a model change
        audit.record(
            "workflow:churn.train",
            "traffic.set",
            "churn",
            {"from": S2, "to": S3, "kind": "workflow", "reason": "rollout step 2/3"},
        ),
        audit.record("alice", "model.promote", "churn", {"from": S3, "to": S4, "kind": "person"}),
        audit.record("bob", "model.promote", "other", {"from": S1, "to": S4}),
    ]
    yield events


def test_history_is_the_models_changes_newest_first_with_ids(trail: list) -> None:
    changes = model_changes.history("churn")
    assert [c["action"] for c in changes] == [
        "model.promote",
        "traffic.set",
        "model.deploy",
        "model.deploy",
    ]
    assert [c["id"] for c in changes] == [trail[4].id, trail[3].id, trail[1].id, trail[0].id]
    assert changes[1]["details"]["reason"] == "rollout step 2/3"
    assert model_changes.history("churn", limit=1)[0]["actor"] == "alice"


def test_default_rollback_target_is_the_state_before_the_last_promotion(trail: list) -> None:
    state, described = model_changes.target_state("churn")
    assert state == S3
    assert str(trail[4].id) in described


def test_rollback_target_by_event_id_is_the_state_right_after_it(trail: list) -> None:
    assert model_changes.target_state("churn", trail[1].id)[0] == S2
    assert model_changes.target_state("churn", trail[0].id)[0] == S1
    with pytest.raises(RegistryError, match="is not a recorded alias or traffic change of 'churn'"):
        model_changes.target_state("churn", trail[2].id)  # an api key event
    with pytest.raises(RegistryError, match="is not a recorded"):
        model_changes.target_state("churn", trail[5].id)  # another model's


def test_rollback_target_by_time_is_the_state_in_force_then(trail: list) -> None:
    just_after = trail[3].timestamp + timedelta(microseconds=1)
    assert model_changes.target_state("churn", just_after)[0] == S3
    assert model_changes.target_state("churn", datetime.now(UTC))[0] == S4
    with pytest.raises(RegistryError, match="history starts later"):
        model_changes.target_state("churn", trail[0].timestamp - timedelta(days=1))


def test_a_rollback_to_a_future_time_is_refused(
    trail: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mlwp models rollback churn --to <a time not reached yet>` (a local time read as UTC,
    a mistyped year) took the current state as the one "in force then": it recorded a
    rollback that changed nothing and printed "rolled back to ...". Refused, naming it."""
    later = datetime.now(UTC) + timedelta(hours=2)
    with pytest.raises(RegistryError, match=r"--to .* is in the future; give a past time"):
        model_changes.target_state("churn", later)
    monkeypatch.setattr(model_changes, "snapshot", lambda name: S4)  # no MLflow here
    with pytest.raises(RegistryError, match="is in the future"):
        model_changes.rollback("alice", "churn", to=later.strftime("%Y-%m-%dT%H:%M"))


def test_parse_point_and_describe_state() -> None:
    assert model_changes.parse_point(" 42 ") == 42
    assert model_changes.parse_point("2026-01-31T09:00") == datetime(2026, 1, 31, 9, tzinfo=UTC)
    assert model_changes.parse_point("2026-01-31T09:00Z") == datetime(2026, 1, 31, 9, tzinfo=UTC)
    with pytest.raises(RegistryError, match=r"expected an event id .* got 'yesterday'"):
        model_changes.parse_point("yesterday")
    assert model_changes.describe_state(S2) == "champion v1 90%, challenger v2 10%"
    assert model_changes.describe_state({"aliases": {}, "traffic": {}}) == "none"
    assert model_changes.describe_state(None) == "-"


def test_nothing_to_roll_back_without_a_promotion(trail: list) -> None:
    with pytest.raises(RegistryError, match="'unknown' has nothing to roll back"):
        model_changes.target_state("unknown")


def test_a_model_whose_only_promotion_made_its_first_champion_says_so(trail: list) -> None:
    """On a fresh platform, after the first train run (deploy as champion, event 3) and a
    second run's deploy of a challenger, `mlwp models rollback churn` said "nothing to roll
    back (no promotion recorded)": the first deploy is a recorded promotion, with no state
    before it. The message names it and points at --to."""
    audit.record(
        "workflow:shop.train",
        "model.deploy",
        "shop",
        {
            "from": {"aliases": {}, "traffic": {"champion": 100}},
            "to": S1,
            "alias": "champion",
            "kind": "workflow",
        },
    )
    first = model_changes.history("shop")[0]["id"]
    with pytest.raises(RegistryError) as info:
        model_changes.target_state("shop")
    message = str(info.value)
    assert f"its only promotion, event {first} (model.deploy by workflow:shop.train)" in message
    assert "made its first champion" in message and "--to" in message
    assert "no promotion recorded" not in message


def test_the_cli_asks_serving_to_load_a_change_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`mlwp models rollback|promote|traffic` ask serving to reload and print what it answered,
    as the deploy task and the Models view do. On a fresh platform, `mlwp models rollback
    churn` printed "rolled back to champion v1 100%" while serving kept answering with v2
    until its next registry poll (30 s by default)."""
    from typer.testing import CliRunner

    from mlwp.cli import app
    from mlwp.registry import serving_client

    calls: list[tuple[tuple[object, ...], dict[str, object]]] = []

    def fake(*args: object, **kwargs: object) -> serving_client.ReloadOutcome:
        calls.append((args, kwargs))
        return serving_client.ReloadOutcome("serving", "serving shows churn@champion = 1", 0.4)

    monkeypatch.setattr(serving_client, "reload_and_wait", fake)
    monkeypatch.setattr(registry, "registered_model_exists", lambda name: True)
    monkeypatch.setattr(model_changes, "rollback", lambda *a, **k: S2)
    monkeypatch.setattr(model_changes, "promote", lambda *a, **k: S4)
    monkeypatch.setenv("MLWP_SERVING_ADMIN_KEY", "mlwp_admin")
    monkeypatch.setenv("MLWP_SERVING_PORT", "8123")
    runner = CliRunner()
    rolled = runner.invoke(app, ["models", "rollback", "churn"])
    assert rolled.exit_code == 0, rolled.output
    assert "serving: serving shows churn@champion = 1" in rolled.output
    ((args, kwargs),) = calls
    assert args == ("http://127.0.0.1:8123", "churn", "champion", "1", S2["traffic"])
    assert kwargs["api_key"] == "mlwp_admin"
    promoted = runner.invoke(app, ["models", "promote", "churn", "--json"])
    assert promoted.exit_code == 0, promoted.output
    assert '"state": "serving"' in promoted.output and calls[-1][0][3] == "2"

    # a state without a champion has nothing for serving to load: not asked
    calls.clear()
    monkeypatch.setattr(model_changes, "rollback", lambda *a, **k: {"aliases": {}, "traffic": {}})
    empty = runner.invoke(app, ["models", "rollback", "churn"])
    assert empty.exit_code == 0 and "serving: no champion to serve" in empty.output
    assert calls == []


def test_traffic_stands_when_the_aliases_for_serving_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`mlwp models traffic` read the aliases again after the split was set (for serving's
    reload) inside the command's error handling: an MLflow error there (a raw MlflowException,
    not an MlwpError) ended the command with a traceback and exit 1 although the split was
    set and recorded, so a person would set it again. The change stands, the command says
    so and that serving picks it up on its next poll."""
    from mlflow.exceptions import MlflowException
    from typer.testing import CliRunner

    from mlwp.cli import app
    from mlwp.registry import serving_client

    def unreachable(name: str) -> dict[str, str]:
        raise MlflowException("API request to /registered-models/get failed: 503")

    def not_asked(*args: object, **kwargs: object) -> serving_client.ReloadOutcome:
        raise AssertionError("serving asked without the aliases")

    monkeypatch.setattr(
        model_changes, "set_traffic", lambda *a, **k: {"champion": 90, "challenger": 10}
    )
    monkeypatch.setattr(registry, "aliases", unreachable)
    monkeypatch.setattr(registry, "registered_model_exists", lambda name: True)
    monkeypatch.setattr(serving_client, "reload_and_wait", not_asked)
    result = CliRunner().invoke(app, ["models", "traffic", "churn", "champion=90", "challenger=10"])
    assert result.exit_code == 0, result.output
    assert "churn: traffic champion 90%, challenger 10%" in result.output
    assert "serving: not asked to reload" in result.output
    assert "next registry poll" in result.output


def test_the_cli_says_which_key_is_missing_when_serving_refuses_the_reload(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without a serving admin key (none configured, no secrets.json in this MLWP_HOME) the
    CLI's reload is answered 401 and it printed only serving's answer ("missing API key:
    send 'Authorization: Bearer <key>'"), which a person who sent nothing cannot act on; it
    says where the key comes from and that the change stands."""
    from typer.testing import CliRunner

    from mlwp.cli import app
    from mlwp.registry import serving_client

    def refused(*args: object, **kwargs: object) -> serving_client.ReloadOutcome:
        assert kwargs["api_key"] is None
        return serving_client.ReloadOutcome(
            "refused", "answered 401 to POST http://127.0.0.1:8123/admin/reload: {}", 0.1
        )

    monkeypatch.setattr(serving_client, "reload_and_wait", refused)
    monkeypatch.setattr(registry, "registered_model_exists", lambda name: True)
    monkeypatch.setattr(model_changes, "rollback", lambda *a, **k: S2)
    monkeypatch.delenv("MLWP_SERVING_ADMIN_KEY", raising=False)
    monkeypatch.setenv("MLWP_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["models", "rollback", "churn"])
    assert result.exit_code == 0, result.output
    assert "answered 401" in result.output
    assert "MLWP_SERVING_ADMIN_KEY" in result.output and "next registry poll" in result.output


def test_the_cli_names_a_model_the_registry_does_not_hold(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`mlwp models promote|rollback|traffic nope` ended with MLflow's traceback
    (MlflowException: Registered Model with name=nope not found) and exit 1; `list nope`
    already said so in one line. All four do now, before anything is read or recorded (an
    MLflow registry in a SQLite file: no server). `history nope` said "no recorded alias or
    traffic changes" and exit 0, as for a model that exists."""
    from typer.testing import CliRunner

    from mlwp.cli import app

    monkeypatch.setenv("MLWP_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    runner = CliRunner()
    for command in (
        ["promote", "nope"],
        ["rollback", "nope"],
        ["rollback", "nope", "--to", "1"],
        ["traffic", "nope"],
        ["traffic", "nope", "champion=100"],
        ["list", "nope"],
        ["history", "nope"],
        ["history", "nope", "--json"],
    ):
        result = runner.invoke(app, ["models", *command])
        assert result.exit_code == 1, (command, result.output)
        assert "no registered model named 'nope'" in result.output, (command, result.output)
        assert isinstance(result.exception, SystemExit), (command, result.exception)
    assert model_changes.history("nope") == []  # nothing recorded


def test_the_models_view_says_which_key_is_missing_when_serving_refuses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Models view asks serving the same way the CLI does (one helper,
    ``serving_key.reload_serving``) and, without an admin key, showed only serving's bare
    401; its reload and its "what serving has loaded" both say where the key comes from."""
    import sys

    import httpx

    from mlwp.registry import serving_client

    monkeypatch.syspath_prepend(str(Path(__file__).parents[2] / "plugins"))
    sys.modules.pop("mlwp_models", None)
    import mlwp_models

    monkeypatch.delenv("MLWP_SERVING_ADMIN_KEY", raising=False)
    monkeypatch.setenv("MLWP_HOME", str(tmp_path))

    def refused(*args: object, **kwargs: object) -> serving_client.ReloadOutcome:
        assert kwargs["api_key"] is None
        return serving_client.ReloadOutcome("refused", "answered 401 to POST /admin/reload", 0.1)

    monkeypatch.setattr(serving_client, "reload_and_wait", refused)
    reloaded = mlwp_models._reload_serving("churn", {"aliases": {"champion": "2"}, "traffic": {}})
    assert "MLWP_SERVING_ADMIN_KEY" in reloaded["message"]
    assert "next registry poll" in reloaded["message"]

    def unauthorised(*args: object, **kwargs: object) -> httpx.Response:
        return httpx.Response(401, text='{"error": "missing API key"}')

    monkeypatch.setattr(httpx, "get", unauthorised)
    error = mlwp_models.serving_models()["error"]
    assert error.startswith("serving answered 401")
    assert "MLWP_SERVING_ADMIN_KEY" in error and "mlwp keys install-admin" in error


def test_a_change_that_changes_nothing_records_nothing(
    trail: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mlwp models traffic churn champion=100` when that was the split, `rollback --to <the
    event whose state is in force>` and `promote --version <the champion>` each recorded an
    event whose from equalled its to. They write and record nothing now and are marked
    unchanged (the default rollback still refuses "nothing to roll back")."""

    def no_write(*args: object, **kwargs: object) -> None:
        raise AssertionError("the registry was written")

    monkeypatch.setattr(model_changes, "snapshot", lambda name: S4)
    monkeypatch.setattr(registry, "validate_traffic", lambda name, traffic: dict(traffic))
    for write in ("set_traffic", "restore", "promote"):
        monkeypatch.setattr(registry, write, no_write)
    recorded = len(model_changes.history("churn"))

    split = model_changes.set_traffic("alice", "churn", {"champion": 100, "challenger": 0})
    assert model_changes.unchanged(split) and split == {"champion": 100, "challenger": 0}
    rolled = model_changes.rollback("alice", "churn", to=str(trail[4].id))
    assert model_changes.unchanged(rolled) and rolled == S4
    promoted = model_changes.promote("alice", "churn", "2")
    assert model_changes.unchanged(promoted) and promoted == S4
    assert len(model_changes.history("churn")) == recorded

    # a real change is not marked
    monkeypatch.setattr(registry, "restore", lambda name, state: dict(state))
    changed = model_changes.rollback("alice", "churn", to=str(trail[3].id))
    assert changed == S3 and not model_changes.unchanged(changed)
    assert len(model_changes.history("churn")) == recorded + 1

    # a workflow's step that sets the split in force is recorded all the same: a rollout's
    # first step is the start of its record, with its run (test_rollout's history)
    monkeypatch.setattr(registry, "set_traffic", lambda name, traffic: dict(traffic))
    step = model_changes.set_traffic(
        model_changes.workflow_actor("churn.release"), "churn", {"champion": 100},
        "step 1", kind="workflow",
    )  # fmt: skip
    assert not model_changes.unchanged(step)
    assert len(model_changes.history("churn")) == recorded + 2


def test_the_cli_and_the_models_view_say_unchanged(
    trail: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line, exit 0, serving not asked to reload; the Models view answers 200 with
    ``"unchanged": true``."""
    import sys

    from typer.testing import CliRunner

    from mlwp.cli import app
    from mlwp.registry import serving_client

    def not_asked(*args: object, **kwargs: object) -> None:
        raise AssertionError("serving asked to reload an unchanged state")

    monkeypatch.setattr(serving_client, "reload_and_wait", not_asked)
    monkeypatch.setattr(registry, "registered_model_exists", lambda name: True)
    monkeypatch.setattr(model_changes, "snapshot", lambda name: S4)
    monkeypatch.setattr(registry, "validate_traffic", lambda name, traffic: dict(traffic))
    monkeypatch.setattr(registry, "aliases", lambda name: S4["aliases"])
    monkeypatch.setattr(registry, "model_project", lambda name: "churn")
    recorded = len(model_changes.history("churn"))
    runner = CliRunner()
    traffic = runner.invoke(app, ["models", "traffic", "churn", "champion=100"])
    assert traffic.exit_code == 0, traffic.output
    assert traffic.output == "unchanged: churn traffic is already champion=100\n"
    rolled = runner.invoke(app, ["models", "rollback", "churn", "--to", str(trail[4].id)])
    assert rolled.exit_code == 0, rolled.output
    assert rolled.output == "unchanged: churn is already at champion v2 100%\n"
    promoted = runner.invoke(app, ["models", "promote", "churn", "--version", "2", "--json"])
    assert promoted.exit_code == 0, promoted.output
    assert '"unchanged": true' in promoted.output

    monkeypatch.syspath_prepend(str(Path(__file__).parents[2] / "plugins"))
    sys.modules.pop("mlwp_models", None)
    import mlwp_models

    class User:
        def get_name(self) -> str:
            return "alice"

    answer = mlwp_models.traffic(
        "churn", "churn", mlwp_models.TrafficBody(traffic={"champion": 100}), User()
    )
    assert answer["unchanged"] is True and answer["aliases"] == {"champion": "2"}
    assert answer["serving"]["state"] == "skipped"
    assert len(model_changes.history("churn")) == recorded


def test_history_and_versions_are_readable_at_80_columns(
    trail: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mlwp models history` printed 200 wide (every line wrapped in an 80-column terminal)
    and `mlwp models list churn` cut the dag run to "scheduled__2026-1…". At 80 columns no
    line is longer, the event ids, times and actions are whole and the dag run is never cut
    (it may fold)."""
    from typer.testing import CliRunner

    from mlwp.cli import app

    audit.record(
        "guardrail:churn.train",
        "model.rollback",
        "churn",
        {"from": S3, "to": S2, "kind": "guardrail", "reason": "error rate 4.1% > 1%"},
    )
    runner = CliRunner()
    history = runner.invoke(app, ["models", "history", "churn"], env={"COLUMNS": "80"})
    assert history.exit_code == 0, history.output
    lines = history.output.splitlines()
    assert max(len(line) for line in lines) <= 80, history.output
    text = history.output
    for change in model_changes.history("churn"):
        at = next(n for n, line in enumerate(lines) if line.startswith(f"{change['id']} "))
        assert change["action"] in lines[at], text
        assert lines[at + 1].startswith(change["timestamp"][:16].replace("T", " ")), text
    assert "champion v1 50%, challenger v2 50%" in text
    assert "-> champion v1 90%, challenger v2 10%" in text
    assert "(error rate 4.1% > 1%)" in text
    assert "guardrail:churn.train" in text and "(guardrail)" not in text
    assert "alice (person)" in text

    run_id = "scheduled__2026-01-26T00:00:00+00:00"
    described = {
        "name": "churn",
        "traffic": {"champion": 90, "challenger": 10},
        "versions": [
            {
                "version": str(n),
                "aliases": aliases,
                "airflow_run_id": run_id,
                "dataset_sha256": "a" * 64,
                "test_metrics": {"accuracy": 0.8, "roc_auc": 0.846, "log_loss": 0.41},
            }
            for n, aliases in ((2, ["challenger"]), (1, ["champion"]))
        ],
    }
    monkeypatch.setattr(registry, "registered_model_exists", lambda name: True)
    monkeypatch.setattr(registry, "describe", lambda name: described)
    listed = runner.invoke(app, ["models", "list", "churn"], env={"COLUMNS": "80"})
    assert listed.exit_code == 0, listed.output
    assert max(len(line) for line in listed.output.splitlines()) <= 80, listed.output
    assert "…" not in listed.output, listed.output
    # folded or not, every character of the run id is there, in order
    lines = listed.output.splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith("2 "))
    column = next(line for line in lines if "dag run" in line).index("dag run")
    folded = "".join(line[column:].split()[0] for line in lines[at : at + 2])
    assert folded == run_id, listed.output
    assert "roc_auc=0.8460" in listed.output and "challenger" in listed.output
