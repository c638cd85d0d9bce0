"""The churn project through the real platform, as its team uses it: the shared steps of the
real-path tests (``test_real_path_*.py``).

Everything goes through what a user has: ``mlwp`` commands, Airflow's REST API with a JWT,
MLflow's REST API and the serving API. Nothing calls ``dag.test()``, nothing writes to a
database behind Airflow's back: the scheduler queues each task, the configured executor runs
it, and the DataScientist ``alice`` (the churn definition's owner and approver) answers the
approval in Airflow's "Required Actions" (``hitlDetails``) the way the UI does.

The order is the one a new team goes through, with the real definition
(``dags/projects/churn/workflow.yaml``) and two things a new user meets:

- DAGs are paused at creation (Airflow's default, kept): alice unpauses ``churn.train``.
  Its ``@weekly`` schedule, catchup off, then starts this week's run at once; with
  ``max_active_runs: 1`` the run alice triggers next waits, queued, behind it. That
  scheduled run is the platform's first model: alice approves it and it becomes the champion.
- ``churn.score`` is scheduled on the ``churn.train.features`` asset and predicts with the
  champion, so a score run started by the first training's features (no champion yet) would
  fail. alice unpauses ``churn.score`` once the first run's features are made (a paused DAG
  does not queue asset events): the triggered run's features then start it, after the
  champion exists.

The scheduled run deploys the first version as the champion (alias moved in MLflow, serving
reloaded and answering from it), and the score run started by the triggered run's features
succeeds with it. The triggered run goes on training after that, and is not waited for: on
the same data and seed it trains the same model, and the gate (``beat: champion``, strict)
never promotes an identical retrain, so its register would be skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from churn_workflow import CHURN
from platform_process import AirflowApi, RunningPlatform, mlwp, wait_until

TRAIN, SCORE = "churn.train", "churn.score"
MODEL = "churn"
APPROVER, APPROVER_PASSWORD = "alice", "correct-horse-battery-staple"
TRAIN_TASKS = ("extract", "validate", "features", "train", "evaluate", "register", "approve")
# One training run on a shared two-core CI machine has taken several minutes.
RUN_TIMEOUT = 600.0
# When alice may answer a request. Airflow 3.3 fails an approval answered before the
# scheduler has processed the exit of the task process that parked it in awaiting_input: the
# answer resumes the task under the same try number, and the late "process ended" event of
# that try then looks like the resumed try being killed externally
# (scheduler_job_runner.process_executor_events covers this race only for a deferred task
# moved back to scheduled), so the resumed approve task is failed, retried after
# retry_delay, and asks again. A person reading the request takes longer than that event
# (normally the next scheduler loop; 6 s after the pause on a loaded two-core machine); the
# test, which reads faster, answers once the scheduler's log shows the event processed
# ("TaskInstance Finished ... state=awaiting_input"), instead of sleeping a fixed 20 s.
PARKED_EVENT_TIMEOUT = 300.0
# How often the waits below ask the REST API: a second costs a few cheap requests, and each
# wait ends on average half an interval after what it waits for.
POLL_SECONDS = 1.0
ROUTING_KEYS = [f"customer-{i}" for i in range(20)]


def create_client_key(
    env: dict[str, str], *, name: str = "churn-app", scope: str = f"model:{MODEL}"
) -> str:
    """``mlwp keys create``: by default the key an application calls serving with."""
    made = mlwp(env, "keys", "create", name, "--scope", scope, "--json", timeout=600)
    assert made.returncode == 0, made.stdout + made.stderr
    token: str = orjson.loads(made.stdout)["token"]
    return token


@dataclass
class ChurnOutcome:
    """What the real-path run produced, for a variant's own extra checks."""

    scheduled_run: str
    triggered_run: str
    score_run: str
    champion: str
    api: AirflowApi


def add_approver(platform: RunningPlatform) -> None:
    """``mlwp users add``: alice, DataScientist in the churn project (password from env)."""
    added = mlwp(
        {**platform.env, "MLWP_NEW_USER_PASSWORD": APPROVER_PASSWORD},
        "users", "add", APPROVER, "--email", f"{APPROVER}@example.org",
        "--role", "DataScientist", "--project", "churn",
        timeout=600,
    )  # fmt: skip
    assert added.returncode == 0, added.stdout + added.stderr


def approver_api(platform: RunningPlatform) -> AirflowApi:
    """alice's JWT, once she can see both churn DAGs.

    The DAG processor grants the project role its DAGs as it stores them; FAB's auth manager
    caches a user's permissions for 30 s, so a first request made before that grant is
    refused until the entry expires: she waits, as a person refreshing the page would.
    """
    admin = AirflowApi(platform.url("airflow"), *platform.admin_login())

    def both_dags() -> bool | None:
        dags = {dag["dag_id"] for dag in admin.get("/dags", limit=100)["dags"]}
        return True if {TRAIN, SCORE} <= dags else None

    try:
        wait_until(
            "the churn DAGs in the admin's DAG list", both_dags, timeout=300, interval=POLL_SECONDS
        )
    finally:
        admin.close()
    api = AirflowApi(platform.url("airflow"), APPROVER, APPROVER_PASSWORD)

    def sees_both() -> bool | None:
        codes = {api.client.get(f"/dags/{dag_id}").status_code for dag_id in (TRAIN, SCORE)}
        return True if codes == {200} else None

    wait_until(
        f"{APPROVER} seeing {TRAIN} and {SCORE}", sees_both, timeout=120, interval=POLL_SECONDS
    )
    return api


def wait_for_run(
    api: AirflowApi, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT
) -> dict[str, Any]:
    """Wait for a run to end; fail with its task states when it did not succeed."""

    def ended() -> dict[str, Any] | None:
        run = api.dag_run(dag_id, run_id)
        return run if run["state"] in ("success", "failed") else None

    run = wait_until(f"{dag_id} run {run_id} to end", ended, timeout=timeout, interval=POLL_SECONDS)
    assert run["state"] == "success", (run_id, api.task_states(dag_id, run_id))
    return run


def wait_for_task(api: AirflowApi, run_id: str, task_id: str, state: str) -> None:
    def reached() -> bool | None:
        states = api.task_states(TRAIN, run_id)
        if states.get(task_id) in ("failed", "upstream_failed"):
            pytest.fail(f"{TRAIN} {run_id}: {task_id} failed: {states}")
        return True if states.get(task_id) == state else None

    wait_until(
        f"{TRAIN} {run_id}: {task_id} {state}", reached, timeout=RUN_TIMEOUT, interval=POLL_SECONDS
    )


def wait_for_parked_exit(platform: RunningPlatform, run_id: str) -> None:
    """Wait until the scheduler has processed the exit of the approve task's process that
    parked it in awaiting_input (see ``PARKED_EVENT_TIMEOUT``): its log line for that event."""
    finished = f"TaskInstance Finished: dag_id={TRAIN}, task_id=approve, run_id={run_id},"
    scheduler_log = platform.home / "logs" / "scheduler.log"

    def processed() -> bool | None:
        for line in scheduler_log.read_text(errors="replace").splitlines():
            if finished in line and "state=awaiting_input" in line:
                return True
        return None

    wait_until(
        f"the scheduler processing the parked approve task of {run_id}",
        processed,
        timeout=PARKED_EVENT_TIMEOUT,
        interval=0.5,
    )


def approve(platform: RunningPlatform, api: AirflowApi, run_id: str) -> dict[str, Any]:
    """Answer the run's approval request "Approve" as alice; the request as listed."""

    def pending() -> dict[str, Any] | None:
        states = api.task_states(TRAIN, run_id)
        failed = [task for task, state in states.items() if state in ("failed", "upstream_failed")]
        assert not failed, (run_id, states)
        listed = api.get(f"/dags/{TRAIN}/dagRuns/{run_id}/hitlDetails", response_received=False)
        details: list[dict[str, Any]] = listed["hitl_details"]
        return details[0] if details else None

    wait_until(f"the approval of {run_id}", pending, timeout=RUN_TIMEOUT, interval=POLL_SECONDS)
    wait_for_parked_exit(platform, run_id)
    # Listed again: the task writes its request while still running, so a request seen
    # before the scheduler processed the parking can carry the running state.
    request = pending()
    assert request is not None, run_id
    ti = request["task_instance"]
    assert (ti["dag_run_id"], ti["task_id"], ti["state"]) == (
        run_id,
        "approve",
        "awaiting_input",
    ), ti
    assert request["options"] == ["Approve", "Reject"]
    answered = api.patch(
        f"/dags/{TRAIN}/dagRuns/{run_id}/taskInstances/approve/{ti['map_index']}/hitlDetails",
        {"chosen_options": ["Approve"]},
    )
    assert answered["responded_by"]["name"] == APPROVER
    return request


def xcom(api: AirflowApi, dag_id: str, run_id: str, task_id: str) -> Any:
    entry = api.get(
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
        deserialize=True,
    )
    return entry["value"]


def registered_model(platform: RunningPlatform) -> dict[str, Any]:
    """The churn model as MLflow's REST API shows it: aliases and tags as dicts."""
    response = httpx.get(
        f"{platform.url('mlflow')}/api/2.0/mlflow/registered-models/get",
        params={"name": MODEL},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    model: dict[str, Any] = response.json()["registered_model"]
    return {
        "aliases": {a["alias"]: a["version"] for a in model.get("aliases", [])},
        "tags": {t["key"]: t["value"] for t in model.get("tags", [])},
    }


def model_versions(platform: RunningPlatform, model: str = MODEL) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{platform.url('mlflow')}/api/2.0/mlflow/model-versions/search",
        params={"filter": f"name='{model}'", "max_results": 100},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    versions: list[dict[str, Any]] = response.json().get("model_versions", [])
    return versions


def sample_record() -> dict[str, Any]:
    """One telco customer as an application sends it: raw features, no id, no label."""
    import pandas as pd

    frame = pd.read_csv(CHURN / "data" / "telco_churn.csv").head(1)
    records = orjson.loads(frame.drop(columns=["customer_id", "churn"]).to_json(orient="records"))
    record: dict[str, Any] = records[0]
    return record


def serving_answers(platform: RunningPlatform, key: str) -> dict[str, dict[str, Any]]:
    """POST /v1/models/churn/predict once per routing key; the answers by key."""
    record = sample_record()
    answers = {}
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for routing_key in ROUTING_KEYS:
            response = client.post(
                f"{platform.url('serving')}/v1/models/{MODEL}/predict",
                json={"data": [record]},
                headers={"X-Routing-Key": routing_key},
            )
            assert response.status_code == 200, response.text
            answers[routing_key] = response.json()
    return answers


def task_log(api: AirflowApi, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
    """A task's log through the REST API (what the UI's log tab reads), as text."""
    response = api.client.get(
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
        params={"full_content": True},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    lines = response.json()["content"]
    return "\n".join(
        line.get("event", "") if isinstance(line, dict) else str(line) for line in lines
    )


def run_churn(platform: RunningPlatform, client_key: str) -> ChurnOutcome:
    """The whole story of the module docstring, with its checks; see there."""
    add_approver(platform)
    api = approver_api(platform)
    # Paused at creation, Airflow's default: nothing runs until someone turns it on.
    assert api.get(f"/dags/{TRAIN}")["is_paused"] is True
    assert api.get(f"/dags/{SCORE}")["is_paused"] is True
    assert api.patch(f"/dags/{TRAIN}", {"is_paused": False})["is_paused"] is False

    def scheduled_run() -> str | None:
        runs = [r for r in api.dag_runs(TRAIN) if r["run_type"] == "scheduled"]
        return runs[0]["dag_run_id"] if runs else None

    first = wait_until("this week's scheduled run of churn.train", scheduled_run, timeout=180)
    triggered = api.post(f"/dags/{TRAIN}/dagRuns", {"logical_date": None, "note": "real-path test"})
    second = triggered["dag_run_id"]
    assert triggered["run_type"] == "manual"

    # The first run's features are made while churn.score is paused: no score run for them.
    wait_for_task(api, first, "features", "success")
    assert api.patch(f"/dags/{SCORE}", {"is_paused": False})["is_paused"] is False
    # max_active_runs 1: the triggered run waits for the scheduled one.
    assert api.dag_run(TRAIN, second)["state"] == "queued"

    request = approve(platform, api, first)
    assert "There is no champion yet" in request["body"], request["body"]
    wait_for_run(api, TRAIN, first)
    assert api.task_states(TRAIN, first) == {
        **dict.fromkeys(TRAIN_TASKS, "success"),
        "deploy": "success",
        # No champion to roll out against: the first version is the champion at once.
        **dict.fromkeys(("rollout_steps", "rollout_approval", "rollout"), "skipped"),
    }
    deployed = xcom(api, TRAIN, first, "deploy")
    # The first version deployed becomes the champion with all the traffic (there was none).
    assert deployed["alias"] == "champion", deployed
    assert deployed["traffic"] == {"champion": 100}, deployed
    assert deployed["serving_reloaded"] is True, deployed["serving"]
    champion = deployed["version"]
    assert api.get(f"/dags/{SCORE}/dagRuns")["dag_runs"] == []

    # MLflow: deploy moved the alias and set the traffic tag; the version names its run.
    model = registered_model(platform)
    assert model["aliases"] == {"champion": champion}, model
    assert orjson.loads(model["tags"]["mlwp.traffic"]) == {"champion": 100}
    runs_of = {
        v["version"]: {t["key"]: t["value"] for t in v.get("tags", [])}["mlwp.airflow_run_id"]
        for v in model_versions(platform)
    }
    assert runs_of == {champion: first}, runs_of

    # Serving answers from the deployed version, whatever the routing key.
    answers = serving_answers(platform, client_key)
    assert {(a["variant"], a["model_version"]) for a in answers.values()} == {
        ("champion", champion)
    }

    # churn.score: started by the triggered run's features, scored with the champion.
    def score_run() -> str | None:
        # Once started: Airflow 3.3's upstreamAssetEvents answers 500 while a run it lists
        # as created by an event has no start_date yet (AssetEventResponse validation).
        runs = [run for run in api.dag_runs(SCORE) if run["start_date"] is not None]
        return runs[0]["dag_run_id"] if runs else None

    score = wait_until("the churn.score run", score_run, timeout=RUN_TIMEOUT, interval=POLL_SECONDS)
    (score_meta,) = api.dag_runs(SCORE)
    assert score_meta["run_type"] == "asset_triggered"
    # Every features event since the last score run is listed (the first run's too, made
    # while churn.score was paused); the one that started the run is marked "triggering".
    events = api.get(f"/dags/{SCORE}/dagRuns/{score}/upstreamAssetEvents")["asset_events"]
    triggering = [
        (e["source_dag_id"], e["source_run_id"], e["source_task_id"])
        for e in events
        if any(r["run_id"] == score and r.get("triggering") for r in e["created_dagruns"])
    ]
    assert triggering == [(TRAIN, second, "features")], events
    wait_for_run(api, SCORE, score)
    predicted = xcom(api, SCORE, score, "predict")
    assert predicted["version"] == champion, predicted
    assert predicted["rows"] > 0, predicted

    # A task's log through the REST API.
    train = xcom(api, TRAIN, first, "train")
    log = task_log(api, TRAIN, first, "train", 1)
    assert f"MLflow run {train['run_id']}" in log, log[-3000:]
    return ChurnOutcome(first, second, score, champion, api)
