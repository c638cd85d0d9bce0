"""The Airflow UI with mlwp's additions, used as a person would: headless Chromium.

Debian's ``chromium`` driven by Playwright (``executable_path=/usr/bin/chromium``; Playwright
never downloads a browser here) against the real platform of ``tests/ui_platform.py``
(api-server with the plugins, MLflow server, serving). Screenshots of every page go to
``MLWP_TEST_ARTIFACTS`` (default ``.artifacts/`` at the repository root, not committed).

Without Chromium these tests are skipped with the reason, unless ``MLWP_REQUIRE_SERVICES=1``
(CI), where they fail: ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ui_platform import PASSWORD, Platform, model_name, monitor_look, run_platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("MLWP_TEST_ARTIFACTS", REPO_ROOT / ".artifacts")) / "ui"
# Pages answer slowly on a loaded machine; a person would wait too.
WAIT_MS = 120_000
MODEL = model_name("ui")

# A DAG whose real RegisterOperator registers a version from the champion's MLflow run, so
# its task instance carries the extra links (airflow dag file).
LINKS_DAG = '''\
"""Register a version of the UI test model from an existing run (airflow dag file)."""
from airflow.sdk import DAG, task

from mlwp.security.roles import project_access_control
from operators.register import RegisterOperator

with DAG(
    "churn.links",
    schedule=None,
    access_control=project_access_control("churn"),
    tags=["mlwp", "project:churn"],
) as dag:

    @task(task_id="train")
    def train():
        return {{
            "run_id": "{run_id}",
            "model_uri": "runs:/{run_id}/model",
            "metrics": {{"roc_auc": 0.85}},
            "evaluation": {{"metrics": {{"roc_auc": 0.85}}, "champion": None}},
            "task_id": "train",
        }}

    train() >> RegisterOperator(task_id="register", model="{model}", project="churn")
'''

# A run of churn.train whose approve task waits for an answer under a four-eyes policy naming
# alice only: the state mlwp's ApproveOperator leaves behind, without running a scheduler.
PENDING_APPROVAL = """
from airflow._shared.timezones import timezone
from airflow.models.hitl import HITLDetail
from airflow.models.serialized_dag import SerializedDagModel
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState, TaskInstanceState
from airflow.utils.types import DagRunTriggeredByType, DagRunType

with create_session() as session:
    run = SerializedDagModel.get_dag("churn.train", session=session).create_dagrun(
        run_id="pending",
        run_after=timezone.utcnow(),
        run_type=DagRunType.MANUAL,
        triggered_by=DagRunTriggeredByType.TEST,
        triggering_user_name="root",
        state=DagRunState.RUNNING,
        session=session,
    )
    ti = run.get_task_instance("approve", session=session)
    ti.state = TaskInstanceState.DEFERRED
    session.add(HITLDetail(ti_id=ti.id, options=["Approve", "Reject"],
                           subject="Promote the new churn model?",
                           body="Approvers: alice; the user who triggered the run may not "
                                "approve it.", multiple=False, params={}))
    session.flush()
    XComModel.set(key="approval_policy", value={"approvers": ["alice"], "min_approvals": 1,
                  "allow_self_approval": False, "allow_admins": False},
                  dag_id="churn.train", task_id="approve", run_id="pending", session=session)
"""


def _chromium_or_skip() -> None:
    if Path(CHROMIUM).is_file():
        return
    reason = f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)"
    if os.environ.get("MLWP_REQUIRE_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def platform(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, migrated_airflow_db: Path
) -> Iterator[Platform]:
    _chromium_or_skip()
    home = tmp_path_factory.mktemp("ui-browser")
    dag_files = {"ui_links.py": LINKS_DAG}
    with run_platform(
        home, mlflow_server, MODEL, migrated_airflow_db, dag_files=dag_files
    ) as running:
        airflow = str(Path(sys.executable).parent / "airflow")
        log = (home / "dag-test.log").open("ab")
        for argv in (
            [airflow, "dags", "test", "churn.links"],
            [sys.executable, "-c", PENDING_APPROVAL],
        ):
            done = subprocess.run(
                argv,
                env=running.env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
            assert done.returncode == 0, (home / "dag-test.log").read_text()[-4000:]
        log.close()
        # A look of the real monitor, so the view has monitoring results to show.
        monitor_look(running, home / "monitor-storage")
        yield running


@pytest.fixture(scope="module")
def browser(platform: Platform) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def logged_in(browser: Any, platform: Platform, username: str) -> Any:
    """A new browser session of ``username``, logged in through Airflow's login page."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.goto(f"{platform.airflow_url}/")
    page.wait_for_selector("input[name=username]")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("[type=submit]")
    page.wait_for_url(lambda url: "/login" not in url)
    return page


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_models(page: Any, platform: Platform) -> Any:
    """The Models view showing MODEL, picked from the list (the registry is the test
    session's MLflow server: other tests' models are listed too)."""
    page.goto(f"{platform.airflow_url}/plugin/models")
    frame = page.frame_locator("iframe")
    frame.locator(f"button.model-link[data-model='{MODEL}']").click()
    frame.locator("#model-name").filter(has_text=MODEL).wait_for()
    return frame


def wait_for_served(platform: Platform, expected: dict[str, str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while platform.served() != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"serving shows {platform.served()}, expected {expected}")
        time.sleep(0.5)


def test_a_member_sees_what_serves_and_promotes_from_the_models_view(
    platform: Platform, browser: Any
) -> None:
    page = logged_in(browser, platform, "alice")
    frame = open_models(page, platform)
    serving = frame.locator("#serving")
    assert serving.locator("tr[data-alias=champion] .served-version").inner_text() == "v1"
    assert serving.locator("tr[data-alias=challenger] .served-version").inner_text() == "v2"
    assert frame.locator("#traffic").inner_text() == "champion 90%, challenger 10%"
    assert frame.locator("#refusal").count() == 0
    # The latest monitor look: its decision, each variant's share of the traffic and metrics.
    assert frame.locator("#decision").inner_text() in (
        "challenger_better",
        "challenger_worse",
        "no_difference_yet",
    )
    variants = frame.locator("#monitoring-variants")
    assert "90.0%" in variants.locator("tr[data-variant=champion]").inner_text()
    assert "accuracy" in variants.locator("tr[data-variant=challenger]").inner_text()
    shot(page, "models-view")

    frame.locator("#reason").fill("v2 beats v1 on roc_auc")
    frame.locator("button.promote[data-version='2']").click()
    frame.locator("#message.info").wait_for()
    wait_for_served(platform, {"champion": "2"})
    frame.locator("#serving tr[data-alias=champion] .served-version", has_text="v2").wait_for()
    assert frame.locator("#traffic").inner_text() == "champion 100%"
    history = frame.locator("#history tr").nth(1).inner_text()
    assert "alice" in history and "model.promote" in history and "v2 beats v1" in history
    # Any recorded state can be restored from its row (mlwp models rollback --to <id>).
    assert frame.locator("#history button.rollback-to").first.is_enabled()
    shot(page, "models-view-promoted")

    # The view follows the Airflow UI's theme: dark when Airflow is dark.
    page.evaluate("() => { localStorage.setItem('theme', 'dark'); }")
    page.reload()
    frame = page.frame_locator("iframe")
    frame.locator("#model-name").wait_for()
    deadline = time.monotonic() + 30
    theme = None
    while time.monotonic() < deadline:
        theme = frame.locator("html").get_attribute("data-theme")
        if theme == "dark":
            break
        time.sleep(0.5)
    assert theme == "dark"
    shot(page, "models-view-dark")
    page.context.close()


def test_a_viewer_is_refused_the_same_action(platform: Platform, browser: Any) -> None:
    page = logged_in(browser, platform, "vera")
    frame = open_models(page, platform)
    refusal = frame.locator("#refusal").inner_text()
    assert refusal.startswith("user 'vera' may not change models of project 'churn'")
    assert frame.locator("button.promote").first.is_disabled()
    assert frame.locator("#history button.rollback-to").first.is_disabled()
    shot(page, "models-view-viewer")
    # The buttons only mirror the decision: the API refuses the request itself.
    answer = frame.locator("body").evaluate(
        """async (body, model) => {
            const r = await fetch(`api/projects/churn/models/${model}/promote`, {
                method: "POST", headers: {"Content-Type": "application/json"},
                body: JSON.stringify({version: "1"})});
            return {status: r.status, detail: (await r.json()).detail};
        }""",
        MODEL,
    )
    assert answer["status"] == 403 and answer["detail"].startswith("user 'vera' may not")
    page.context.close()


def test_the_register_task_links_to_its_mlflow_model_version(
    platform: Platform, browser: Any
) -> None:
    with platform.api("alice") as api:
        (run,) = api.get("/api/v2/dags/churn.links/dagRuns").json()["dag_runs"]
        links = api.get(
            f"/api/v2/dags/churn.links/dagRuns/{run['dag_run_id']}/taskInstances/register/links"
        )
        assert links.status_code == 200, links.text
    version = httpx.get(
        f"{platform.mlflow_url}/api/2.0/mlflow/registered-models/get",
        params={"name": MODEL},
        timeout=30,
    ).json()["registered_model"]["latest_versions"][-1]["version"]
    assert links.json()["extra_links"]["MLflow model version"] == (
        f"{platform.mlflow_url}/#/models/{MODEL}/versions/{version}"
    ), links.json()
    page = logged_in(browser, platform, "alice")
    # Airflow 3.3's React UI shows a task instance's extra links as buttons (an <a> each,
    # opening in a new tab when cross-origin) under "Extra Links" on the task instance's
    # Details tab; the task page itself opens on the Logs tab, which has none.
    page.goto(
        f"{platform.airflow_url}/dags/churn.links/runs/{run['dag_run_id']}/tasks/register/details"
    )
    link = page.get_by_role("link", name="MLflow model version")
    link.wait_for()
    shot(page, "register-task-extra-links")
    with page.context.expect_page() as opened:
        link.click()
    mlflow_page = opened.value
    mlflow_page.wait_for_load_state()
    assert mlflow_page.url == f"{platform.mlflow_url}/#/models/{MODEL}/versions/{version}"
    mlflow_page.get_by_text(re.compile(f"Version {version}")).first.wait_for()
    shot(mlflow_page, "mlflow-model-version")
    page.context.close()


def test_only_the_named_approver_answers_the_approval(platform: Platform, browser: Any) -> None:
    url = f"{platform.airflow_url}/dags/churn.train/runs/pending/tasks/approve/required_actions"
    for username, expected in (
        ("bob", "user 'bob' is not an approver of this promotion"),
        ("alice", None),
    ):
        page = logged_in(browser, platform, username)
        page.goto(url)
        page.get_by_role("button", name="Approve").wait_for()
        shot(page, f"approval-{username}")
        with page.expect_response(lambda r: r.request.method == "PATCH") as answered:
            page.get_by_role("button", name="Approve").click()
        response = answered.value
        if expected:
            assert response.status == 403
            # The refusal the UI received; Airflow's UI shows its own error toast for it.
            assert response.json()["detail"].startswith(expected)
        else:
            assert response.status == 200, response.text()
        shot(page, f"approval-{username}-answered")
        page.context.close()
    with platform.api("alice") as api:
        detail = api.get(
            "/api/v2/dags/churn.train/dagRuns/pending/taskInstances/approve/-1/hitlDetails"
        ).json()
    assert detail["response_received"] is True
    assert detail["responded_by_user"]["name"] == "alice"
