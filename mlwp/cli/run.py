"""``mlwp run`` and ``mlwp predict``: a workflow from trigger to outcome, then a prediction.

``mlwp run <project>.<workflow>`` does through Airflow's REST API what a user does in the UI:
unpause the DAG if needed, trigger it, and follow the run, printing each task as it changes
state; it prints the approval link when a run waits for a person (``--approve`` answers it
as the logged-in user, for development), and ends with the registered version, the alias
deployed and what serving answers for the model. The exit code is 0 for a successful run,
1 otherwise.

Airflow's own behaviour decides one thing here: unpausing a scheduled DAG (``catchup`` is off
in mlwp) makes the scheduler create the run of the latest finished interval at once, and with
``max_active_runs: 1`` a manual run would queue behind it. ``mlwp run`` follows that
scheduled run instead of triggering a second one.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer

from mlwp.cli.models import split_text

app = typer.Typer(no_args_is_help=False)

ACTIVE = ("queued", "running")
POLL_SECONDS = 2.0
# How long ``--approve`` lets a request stand before answering it. Airflow 3.3 fails an
# approval answered before the scheduler has processed the exit of the task process that
# parked the task in awaiting_input: that late "process ended" event then looks like the
# resumed try killed externally, and the approve task is failed and retried after its
# retry_delay (docs/platform.md, the real-path tests). The event comes within a scheduler
# loop or two; on a loaded two-core machine it has come 6 s after the request.
APPROVE_AFTER_SECONDS = 15.0


class RunError(Exception):
    """The platform refused or failed a step of ``mlwp run``."""


class Airflow:
    """A small client of Airflow's REST API (JWT from ``/auth/token``)."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=30)
        response = self.http.post("/auth/token", json={"username": username, "password": password})
        if response.status_code not in (200, 201):
            raise RunError(f"login as {username!r} at {self.base_url} failed: {response.text}")
        self.http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        # Reads are retried: a busy api-server timing out once must not end the follow.
        attempts = 4 if method == "GET" else 1
        for attempt in range(attempts):
            try:
                response = self.http.request(method, f"/api/v2{path}", **kwargs)
                break
            except httpx.TransportError:
                if attempt == attempts - 1:
                    raise
                time.sleep(POLL_SECONDS)
        if response.status_code >= 400:
            raise RunError(f"{method} {path}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json() if response.content else None


def _login(settings: Any, username: str | None) -> tuple[str, str]:
    from mlwp.platform.bootstrap import read_credentials

    stored = read_credentials(settings.credentials_file)
    user = username or (stored.username if stored else settings.admin_username)
    password = os.environ.get("MLWP_PASSWORD")
    if password is None and stored is not None and stored.username == user:
        password = stored.password
    if password is None:
        password = typer.prompt(f"Airflow password of {user}", hide_input=True)
    return user, password


def _seconds(ti: dict[str, Any]) -> str:
    duration = ti.get("duration")
    return f"{duration:6.1f}s" if isinstance(duration, int | float) else "       "


def _scheduled_run_on_unpause(api: Airflow, dag_id: str, dag: dict[str, Any]) -> str | None:
    """The run the scheduler starts when a scheduled DAG is unpaused, if one is due."""
    due = dag.get("next_dagrun_run_after")
    if not dag.get("timetable_summary") or not due:
        return None
    if datetime.fromisoformat(due.replace("Z", "+00:00")) > datetime.now(UTC):
        return None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = api.request(
            "GET",
            f"/dags/{dag_id}/dagRuns",
            params={"run_type": "scheduled", "state": list(ACTIVE), "limit": 1},
        )["dag_runs"]
        if runs:
            return str(runs[0]["dag_run_id"])
        time.sleep(1)
    return None


def follow(api: Airflow, dag_id: str, run_id: str, *, approve: bool, echo: Any) -> str:
    """Print task state changes until the run ends; answer or point at approvals. Returns
    the run's final state."""
    seen: dict[str, str] = {}
    # Requests already pointed at or answered, per try: a retried approve task asks again.
    pointed: set[tuple[str, int]] = set()
    waiting_since: dict[tuple[str, int], float] = {}
    started = time.monotonic()
    while True:
        run = api.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        tis = api.request(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100}
        )["task_instances"]
        for ti in sorted(tis, key=lambda t: (t.get("start_date") or "~", t["task_id"])):
            state = ti.get("state") or "none"
            if seen.get(ti["task_id"]) == state:
                continue
            seen[ti["task_id"]] = state
            if state != "none":
                echo(f"  {ti['task_id']:<16} {state:<15} {_seconds(ti)}")
        for ti in tis:
            request = (ti["task_id"], int(ti.get("try_number") or 0))
            if ti.get("state") != "awaiting_input" or request in pointed:
                continue
            since = waiting_since.setdefault(request, time.monotonic())
            if approve and time.monotonic() - since < APPROVE_AFTER_SECONDS:
                continue
            pointed.add(request)
            _approval(api, dag_id, run_id, ti, approve=approve, echo=echo)
        if run["state"] not in ACTIVE:
            echo(f"run {run_id}: {run['state']} after {time.monotonic() - started:.0f}s")
            return str(run["state"])
        time.sleep(POLL_SECONDS)


def _approval(
    api: Airflow, dag_id: str, run_id: str, ti: dict[str, Any], *, approve: bool, echo: Any
) -> None:
    path = (
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/"
        f"{ti.get('map_index', -1)}/hitlDetails"
    )
    link = f"{api.base_url}/dags/{dag_id}/runs/{run_id}/tasks/{ti['task_id']}/required_actions"
    if approve:
        try:
            api.request("PATCH", path, json={"chosen_options": ["Approve"]})
        except RunError as exc:
            # The definition's four-eyes rules decide (mlwp.security.approvals): say why and
            # wait for an approver who may answer.
            echo(f"  {ti['task_id']:<16} --approve refused: {exc}")
            echo(f"  waiting for an approval: {link}")
            return
        echo(f"  {ti['task_id']:<16} approved (--approve)")
        return
    echo(f"  waiting for an approval: {link}")


def _xcom(api: Airflow, dag_id: str, run_id: str, task_id: str, key: str) -> Any:
    """A task's XCom value (JSON decoded), or None when it has none."""
    try:
        value = api.request(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"deserialize": True},
        )["value"]
    except RunError:
        return None
    return orjson.loads(value) if isinstance(value, str) else value


def _outcome(api: Airflow, dag_id: str, run_id: str, echo: Any) -> str | None:
    """Print what the run registered and deployed; return the deployed model's name."""
    model = None
    tis = api.request(
        "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100}
    )["task_instances"]
    for ti in tis:
        if ti.get("operator") == "RegisterOperator" and ti.get("state") == "skipped":
            # the gate refused the version (a retrain no better than the champion): a run
            # that succeeded without a word about registering looked like a silent failure
            gate = _xcom(api, dag_id, run_id, ti["task_id"], "gate")
            summary = gate.get("summary") if isinstance(gate, dict) else None
            echo(f"not registered ({ti['task_id']} skipped): {summary or 'see its log'}")
            continue
        if ti.get("state") != "success" or ti.get("operator") not in (
            "RegisterOperator",
            "DeployOperator",
            "MonitorOperator",
        ):
            continue
        value = _xcom(api, dag_id, run_id, ti["task_id"], "return_value")
        if value is None:
            continue
        if ti["operator"] == "MonitorOperator":
            # a monitor run ended with "success" and not a word of what the look found
            for line in monitor_summary(value):
                echo(line)
        elif ti["operator"] == "RegisterOperator":
            echo(f"registered: {value.get('model')} version {value.get('version')}")
        else:
            model = value.get("model")
            serving = value.get("serving") or {}
            line = f"deployed: {model}@{value.get('alias')} -> version {value.get('version')}"
            if value.get("traffic"):
                line += f", traffic {split_text(value['traffic'])}"
            # "serving" is the good case, which the "serving ..." line after this shows;
            # anything else is a problem, and its message says which ("(serving: serving)"
            # said nothing)
            if serving.get("state") != "serving":
                line += f" (serving: {serving.get('message') or serving.get('state', 'unknown')})"
            echo(line)
    return model


def serving_summary(serving_url: str, entry: dict[str, Any]) -> list[str]:
    """What serves a model, from its ``GET /v1/models`` entry, in a line or two: the
    variants with their versions and shares and the URL (the whole entry, signature and
    all, was a wall of JSON)."""
    name = entry.get("name")
    shares = entry.get("effective_traffic") or entry.get("traffic") or {}
    variants = ", ".join(
        f"{v.get('alias')} v{v.get('version')} {float(shares.get(v.get('alias'), 0)):g}%"
        for v in entry.get("variants") or []
    )
    lines = [
        f"serving {name}: {variants or 'nothing loaded'} at {serving_url}/v1/models/{name}/predict"
    ]
    errors = entry.get("load_errors") or []
    if errors:
        lines.append(f"  {len(errors)} version(s) not loaded: see {serving_url}/v1/models")
    return lines


def parse_conf(conf: str | None) -> dict[str, Any]:
    """``--conf``, checked before anything is changed: broken JSON ended in a JSONDecodeError
    traceback, after the DAG had been unpaused (which starts its scheduled run)."""
    if not conf:
        return {}
    try:
        params = orjson.loads(conf)
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON ({exc}): {conf!r}", param_hint="'--conf'") from None
    if not isinstance(params, dict):
        raise typer.BadParameter(
            f"expected a JSON object such as '{{\"min_roc_auc\": 0.75}}', got {conf!r}",
            param_hint="'--conf'",
        )
    return params


def monitor_summary(result: Any) -> list[str]:
    """What a monitor task's look found (its ``MonitorResult``), in a few lines."""
    if not isinstance(result, dict):
        return []
    comparison = result.get("comparison") or {}
    decision = comparison.get("decision") or "none"
    if comparison.get("reason"):
        decision += f" ({comparison['reason']})"
    drift = result.get("drift") or {}
    drifted = "drifted" if drift.get("drifted") else "no drift"
    if drift.get("skipped"):
        drifted = f"not tested ({drift['skipped']})"
    versions = ", ".join(f"{a} v{v}" for a, v in (result.get("versions") or {}).items())
    lines = [
        f"monitor {result.get('model')} ({versions or 'no version served'}): "
        f"{result.get('rows')} rows, {result.get('labelled_rows')} labelled; "
        f"{result.get('metric')} comparison: {decision}; drift: {drifted}",
        *(f"  alert: {alert}" for alert in result.get("alerts") or []),
    ]
    if result.get("mlflow_run_id"):
        lines.append(f"  MLflow run {result['mlflow_run_id']} (monitor/report.html)")
    return lines


@app.command("run")
def run_command(
    workflow: Annotated[str, typer.Argument(help="The DAG id, '<project>.<workflow>'.")],
    *,
    approve: Annotated[
        bool, typer.Option(help="Answer approvals with Approve as the logged-in user (dev).")
    ] = False,
    conf: Annotated[
        str | None, typer.Option(help="Trigger parameters as JSON, e.g. '{\"x\": 1}'.")
    ] = None,
    username: Annotated[
        str | None, typer.Option(help="Airflow user; default: the admin of `mlwp up`.")
    ] = None,
) -> None:
    """Unpause, trigger and follow a workflow run to its outcome (exit 1 unless it succeeds)."""
    from mlwp.settings import get_settings

    settings = get_settings()
    dag_id = workflow
    params = parse_conf(conf)
    try:
        api = Airflow(settings.airflow_url, *_login(settings, username))
        dag = api.request("GET", f"/dags/{dag_id}")
        run_id = None
        if dag["is_paused"]:
            api.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
            typer.echo(f"unpaused {dag_id}")
            run_id = _scheduled_run_on_unpause(api, dag_id, dag)
            if run_id is not None:
                typer.echo(
                    f"unpausing started the scheduled run {run_id} (the latest interval of "
                    f"{dag['timetable_summary']}); following it rather than queueing a second "
                    "run behind it"
                )
        if run_id is None:
            body = {"logical_date": None, "conf": params}
            run_id = str(api.request("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"])
            typer.echo(f"triggered {dag_id}: run {run_id}")
        typer.echo(f"  {settings.airflow_url}/dags/{dag_id}/runs/{run_id}")
        state = follow(api, dag_id, run_id, approve=approve, echo=typer.echo)
        if state != "success":
            typer.echo(
                f"the run {state}; task logs: {settings.logs_dir}/airflow/dag_id={dag_id}/",
                err=True,
            )
            raise typer.Exit(1)
        model = _outcome(api, dag_id, run_id, typer.echo)
    except RunError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except httpx.HTTPError as exc:
        typer.echo(f"error: {settings.airflow_url} unreachable ({exc}); is `mlwp up` running?")
        raise typer.Exit(2) from exc
    if model:
        served = _serving_get(settings, "/v1/models")
        entry = next((m for m in (served or {}).get("models", []) if m.get("name") == model), None)
        if entry is not None:
            for line in serving_summary(settings.serving_url, entry):
                typer.echo(line)
        typer.echo(f"try it: {predict_hint(settings.dags_folder, dag_id, model)}")


def predict_hint(dags_folder: Path, dag_id: str, model: str) -> str:
    """The ``mlwp predict`` command to try after a deploy: with the project's example rows
    when it has them (``--file rows.json`` named a file nobody had, and ``mlwp predict``
    ended in a FileNotFoundError traceback)."""
    example = dags_folder / "projects" / dag_id.partition(".")[0] / "data" / "example_rows.json"
    if not example.is_file():
        return f"mlwp predict {model} --file <rows.json or rows.csv>"
    try:
        shown = example.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = example
    return f"mlwp predict {model} --file {shown}"


def _serving_key(settings: Any, key: str | None) -> str | None:
    from mlwp.platform.serving_key import task_admin_key

    if key:
        return key
    if os.environ.get("MLWP_SERVING_API_KEY"):
        return os.environ["MLWP_SERVING_API_KEY"]
    return task_admin_key(settings)


def _serving_get(settings: Any, path: str) -> Any:
    token = _serving_key(settings, None)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(f"{settings.serving_url}{path}", headers=headers, timeout=10)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Records from a JSON file (a list, or ``{"data": [...]}``) or a CSV file (a header row)."""
    if path.suffix.lower() == ".csv":
        import csv

        with path.open(newline="", encoding="utf-8") as handle:
            return [
                {k: _scalar(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)
            ]
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"{path}: not JSON ({exc}); expected a list of records") from None
    rows = data.get("data") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise typer.BadParameter(f"{path}: expected a list of records or {{'data': [...]}}")
    return rows


def _scalar(text: str) -> Any:
    """A CSV cell as a number when it reads as one, else the text.

    A leading zero before another digit ("0012", "-007") keeps the text: it is an identifier
    (a customer id, a postcode), and as 12 a captured entity key no longer matched the label
    "0012" the labels task keeps as text. "0", "0.5" and "-0.25" are still numbers.
    """
    digits = text.strip().lstrip("+-")
    if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
        return text
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


@app.command("predict")
def predict_command(
    model: Annotated[str, typer.Argument(help="Registered model name (e.g. churn).")],
    *,
    file: Annotated[
        Path,
        typer.Option("--file", "-f", help="rows.json or rows.csv.", exists=True, dir_okay=False),
    ],
    key: Annotated[
        str | None,
        typer.Option(help="Serving API key; default MLWP_SERVING_API_KEY, else mlwp up's key."),
    ] = None,
) -> None:
    """Send records to serving's POST /v1/models/<model>/predict and print the answer."""
    from mlwp.settings import get_settings

    settings = get_settings()
    rows = read_rows(file)
    token = _serving_key(settings, key)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{settings.serving_url}/v1/models/{model}/predict"
    try:
        response = httpx.post(url, json={"data": rows}, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        typer.echo(f"error: {url} unreachable ({exc}); is `mlwp up` running?", err=True)
        raise typer.Exit(2) from exc
    typer.echo(orjson.dumps(response.json(), option=orjson.OPT_INDENT_2).decode())
    if response.status_code != 200:
        raise typer.Exit(1)
