"""The Models view's API against a real platform (tests/ui_platform.py): who sees what, who
may promote, roll back and change traffic, what serving loads afterwards, and the audit trail.

Every request is a real HTTP request to a real api-server with the FAB auth manager, which
loads the repository's plugins; MLflow and serving are real processes too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ui_platform import Platform, model_name, monitor_look, run_platform

# Starting three real servers takes minutes on a loaded machine.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


MODEL = model_name("models-view")


@pytest.fixture(scope="module")
def platform(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, migrated_airflow_db: Path
) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("models-view")
    with run_platform(home, mlflow_server, MODEL, migrated_airflow_db) as running:
        yield running


def wait_for_served(platform: Platform, expected: dict[str, str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while platform.served() != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"serving shows {platform.served()}, expected {expected}")
        time.sleep(0.5)


def change(
    platform: Platform, user: str | None, action: str, body: dict[str, object]
) -> httpx.Response:
    with platform.api(user) as api:
        return api.post(f"/mlwp/api/projects/churn/models/{MODEL}/{action}", json=body)


def test_the_view_is_a_plugin_of_the_airflow_ui(platform: Platform) -> None:
    # The UI builds its navigation from this list: every role may read it (docs/ui.md).
    with platform.api("vera") as api:
        listed = api.get("/api/v2/plugins")
        page = api.get("/mlwp/models")
    assert listed.status_code == 200, listed.text
    plugins = listed.json()["plugins"]
    (plugin,) = [p for p in plugins if p["name"] == "mlwp_models"]
    (view,) = plugin["external_views"]
    assert (view["name"], view["href"], view["url_route"]) == ("Models", "/mlwp/models", "models")
    assert page.status_code == 200 and "<h1>Models</h1>" in page.text


def test_everyone_logged_in_reads_models_with_what_they_may_do(platform: Platform) -> None:
    for user, may in (("alice", True), ("dana", False), ("vera", False), ("root", True)):
        with platform.api(user) as api:
            listed = api.get("/mlwp/api/models")
            assert listed.status_code == 200, listed.text
            (churn,) = [p for p in listed.json()["projects"] if p["project"] == "churn"]
            assert MODEL in [m["name"] for m in churn["models"]]
            assert churn["can_change"] is may, user
            detail = api.get(f"/mlwp/api/models/{MODEL}").json()
        assert detail["can_change"] is may
        assert detail["project"] == "churn"
    assert detail["aliases"] == {"champion": "1", "challenger": "2"}
    assert detail["traffic"] == {"champion": 90, "challenger": 10}
    by_version = {v["version"]: v for v in detail["versions"]}
    assert by_version["2"]["test_metrics"] == {"roc_auc": 0.86}
    assert by_version["2"]["lineage"]["dag_id"] == "churn.train"
    # What serving has loaded, from its GET /v1/models.
    served = {v["alias"]: str(v["version"]) for v in detail["serving"]["model"]["variants"]}
    assert served == {"champion": "1", "challenger": "2"}
    assert detail["serving"]["error"] is None
    assert detail["links"]["versions"]["1"] == f"{platform.mlflow_url}/#/models/{MODEL}/versions/1"


def test_anonymous_requests_are_refused(platform: Platform) -> None:
    with platform.api(None) as api:
        assert api.get("/mlwp/api/models").status_code == 401
    assert change(platform, None, "promote", {}).status_code == 401


@pytest.mark.parametrize("user", ["vera", "dana"])
def test_viewers_and_non_members_are_refused_every_change(platform: Platform, user: str) -> None:
    for action, body in (
        ("promote", {"version": "2"}),
        ("rollback", {}),
        ("traffic", {"traffic": {"champion": 50, "challenger": 50}}),
    ):
        response = change(platform, user, action, body)
        assert response.status_code == 403, (user, action)
        assert response.json()["detail"] == (
            f"user {user!r} may not change models of project 'churn': only Admins and "
            "DataScientist members of the project (role project:churn) may promote, roll back "
            "or change traffic"
        )
    wait_for_served(platform, {"champion": "1", "challenger": "2"}, timeout=5)


def test_a_member_changes_traffic_promotes_and_rolls_back(
    platform: Platform, tmp_path: Path
) -> None:
    from mlwp.security.audit import list_events

    bad = change(platform, "alice", "traffic", {"traffic": {"champion": 70, "challenger": 20}})
    assert bad.status_code == 409, bad.text
    assert "sum to 100" in bad.json()["detail"]

    split = change(
        platform,
        "alice",
        "traffic",
        {"traffic": {"champion": 50, "challenger": 50}, "reason": "more evidence"},
    )
    assert split.status_code == 200, split.text
    assert split.json()["traffic"] == {"champion": 50, "challenger": 50}

    promoted = change(platform, "alice", "promote", {"version": "2", "reason": "v2 wins"})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["aliases"] == {"champion": "2"}
    # Serving was asked to reload at once (on a loaded machine it may still be loading).
    assert promoted.json()["serving"]["state"] in ("serving", "timeout")
    wait_for_served(platform, {"champion": "2"})

    rolled = change(platform, "alice", "rollback", {"reason": "latency"})
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["aliases"] == {"champion": "1", "challenger": "2"}
    wait_for_served(platform, {"champion": "1", "challenger": "2"})

    # Written to the audit trail with actor, reason and from -> to, and shown as history.
    events = [e for e in list_events(home=platform.home, target=MODEL)]
    assert [(e.actor, e.action, e.details.get("reason")) for e in events] == [
        ("alice", "traffic.set", "more evidence"),
        ("alice", "model.promote", "v2 wins"),
        ("alice", "model.rollback", "latency"),
    ]
    assert events[1].details["from"]["aliases"] == {"champion": "1", "challenger": "2"}
    assert events[1].details["to"] == {"aliases": {"champion": "2"}, "traffic": {"champion": 100}}
    with platform.api("vera") as api:
        history = api.get(f"/mlwp/api/models/{MODEL}").json()["history"]
    assert [h["action"] for h in history] == ["model.rollback", "model.promote", "traffic.set"]


def test_a_model_of_another_project_is_not_changed_through_this_one(platform: Platform) -> None:
    with platform.api("root") as api:
        response = api.post(f"/mlwp/api/projects/fraud/models/{MODEL}/promote", json={})
    assert response.status_code == 404
    assert response.json()["detail"] == (
        f"model {MODEL!r} belongs to project 'churn', not to 'fraud'"
    )


def test_a_member_rolls_back_to_any_event_of_the_history(platform: Platform) -> None:
    """As `mlwp models rollback --to <event id>`: the state right after that change."""
    with platform.api("vera") as api:
        history = api.get(f"/mlwp/api/models/{MODEL}").json()["history"]
    (split,) = [h for h in history if h["action"] == "traffic.set"]
    refused = change(platform, "vera", "rollback", {"to": str(split["id"])})
    assert refused.status_code == 403, refused.text
    back = change(platform, "alice", "rollback", {"to": str(split["id"]), "reason": "as then"})
    assert back.status_code == 200, back.text
    assert back.json()["traffic"] == {"champion": 50, "challenger": 50}
    unknown = change(platform, "alice", "rollback", {"to": "no-such-point"})
    assert unknown.status_code == 409 and "--to" in unknown.json()["detail"], unknown.text
    restored = change(platform, "alice", "traffic", {"traffic": {"champion": 90, "challenger": 10}})
    assert restored.status_code == 200, restored.text


def test_the_view_shows_the_latest_monitor_look(platform: Platform, tmp_path: Path) -> None:
    """The monitor (mlwp.monitoring.monitor.run_monitor, for real) analyses captured,
    labelled predictions of both variants and logs the look to MLflow; the view then shows
    its decision, per-variant traffic, labels and metrics with intervals, and links the run."""
    with platform.api("vera") as api:
        before = api.get(f"/mlwp/api/models/{MODEL}").json()
    assert before["monitoring"] is None
    outcome = monitor_look(platform, tmp_path / "storage")
    with platform.api("vera") as api:
        monitoring = api.get(f"/mlwp/api/models/{MODEL}").json()["monitoring"]
    assert monitoring["run_id"] == outcome.run_id
    assert monitoring["url"] == (
        f"{platform.mlflow_url}/#/experiments/{outcome.experiment_id}/runs/{outcome.run_id}"
    )
    assert monitoring["decision"] == outcome.result["comparison"]["decision"]
    assert monitoring["versions"] == before["aliases"]
    metrics = monitoring["metrics"]
    assert metrics["traffic.champion.requests"] == 360
    assert metrics["traffic.challenger.requests"] == 40
    assert metrics["labels.champion.coverage"] == 1.0
    assert metrics["champion.accuracy.low"] <= metrics["champion.accuracy"]
    assert metrics["champion.accuracy"] <= metrics["champion.accuracy.high"]
