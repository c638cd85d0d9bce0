"""A real platform for the UI tests: MLflow server, serving and the Airflow api-server (FAB).

Everything runs as its own process on free ports under one temporary home, as ``mlwp up``
would run it, but for the MLflow tracking server: the test session's (``mlflow_server``),
shared with the other tests of the process, each naming its models uniquely. ``python -m
serving`` reads the registry (polling off: only reload requests bring changes in, so a test
sees exactly what its action caused), and ``airflow api-server`` with the repository's
plugins (the Models view), the FAB auth manager, the platform roles and these users:

- ``alice`` and ``bob``: DataScientists, members of ``churn``;
- ``dana``: DataScientist, member of no project;
- ``vera``: Viewer;
- ``root``: Admin.

The platform's model (``Platform.model``, project ``churn``; a test module names it with
:func:`model_name`) has version 1 as champion and version 2 as challenger at 90/10 when the
platform starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from server_process import free_port, stop_process_group, wait_for_http

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PASSWORD = "correct-horse-battery"
USERS: dict[str, tuple[str, list[str]]] = {
    "alice": ("DataScientist", ["churn"]),
    "bob": ("DataScientist", ["churn"]),
    "dana": ("DataScientist", []),
    "vera": ("Viewer", []),
    "root": ("Admin", []),
}
# Two projects' DAGs, serialized with their access_control, so project roles mean something.
DAG_FILE = '''\
"""UI test DAGs of two projects (airflow dag file)."""
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

from mlwp.security.roles import project_access_control

for _project in ("churn", "fraud"):
    with DAG(
        f"{_project}.train",
        schedule=None,
        access_control=project_access_control(_project),
        tags=["mlwp", f"project:{_project}"],
    ) as _dag:
        EmptyOperator(task_id="train") >> EmptyOperator(task_id="approve")
    globals()[_project] = _dag
'''

# The roles sync of `mlwp roles sync`, then `mlwp users add` of each user, in one process:
# each `operators.rbac` process pays Airflow's import and FAB's start, minutes in all on a
# loaded machine (the CLI's own path, one process per command, is tests/integration/
# test_rbac_cli.py's subject).
ADD_USERS = """
import json, sys
from operators import rbac
request = json.loads(sys.argv[1])
rbac.sync({"projects": request["projects"]})
for user in request["users"]:
    rbac.user_add(user)
"""


@dataclass
class Platform:
    """The running platform: URLs, the environment of its processes, and login helpers."""

    home: Path
    model: str
    airflow_url: str
    mlflow_url: str
    serving_url: str
    env: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, username: str) -> str:
        if username not in self.tokens:
            response = httpx.post(
                f"{self.airflow_url}/auth/token",
                json={"username": username, "password": PASSWORD},
                timeout=120,
            )
            assert response.status_code == 201, response.text
            self.tokens[username] = response.json()["access_token"]
        return self.tokens[username]

    def api(self, username: str | None) -> httpx.Client:
        """An HTTP client of the api-server, logged in as ``username`` (None: anonymous)."""
        headers = {"Authorization": f"Bearer {self.token(username)}"} if username else {}
        return httpx.Client(base_url=self.airflow_url, headers=headers, timeout=120)

    def served(self) -> dict[str, Any]:
        """Serving's ``GET /v1/models`` entry of the model (variant alias -> version)."""
        response = httpx.get(
            f"{self.serving_url}/v1/models",
            headers={"Authorization": f"Bearer {self.env['MLWP_SERVING_ADMIN_KEY']}"},
            timeout=30,
        )
        response.raise_for_status()
        entry = next(m for m in response.json()["models"] if m["name"] == self.model)
        return {v["alias"]: str(v["version"]) for v in entry["variants"]}


def _telco() -> Any:
    """tests/serving/telco.py (tiny real churn models), importable from any test folder."""
    folder = str(REPO_ROOT / "tests" / "serving")
    if folder not in sys.path:
        sys.path.append(folder)
    import telco

    return telco


def _run(args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        proc = subprocess.run(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, check=False
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{log.read_text()[-4000:]}")


def add_roles_and_users(
    projects: dict[str, Any], users: list[dict[str, Any]], env: dict[str, str], log: Path
) -> None:
    """Sync the platform and ``projects``' roles, then add ``users`` (``user_add`` requests)."""
    from mlwp.platform.processes import without_fab_sync

    request = json.dumps({"projects": projects, "users": users})
    # As `mlwp roles sync` runs it (mlwp.security.client): the sync does FAB's own sync first.
    _run([sys.executable, "-c", ADD_USERS, request], without_fab_sync(env), log)


def model_name(purpose: str) -> str:
    """A name no other test of the session's MLflow server uses."""
    return f"churn-{purpose}-{uuid.uuid4().hex[:6]}"


def register_model(mlflow_url: str, model: str, model_dir: Path) -> str:
    """``model`` v1 (champion) and v2 (challenger, 90/10), tagged with the churn project;
    returns the MLflow run id of v1."""
    from mlflow import MlflowClient

    register_version, set_traffic = _telco().register_version, _telco().set_traffic

    client = MlflowClient(mlflow_url)
    for alias in ("champion", "challenger"):
        version = register_version(mlflow_url, model, model_dir, aliases=(alias,))
        for key, value in {
            "mlwp.project": "churn",
            "mlwp.dag_id": "churn.train",
            "mlwp.airflow_run_id": f"manual__{alias}",
            "mlwp.test_metrics": json.dumps({"roc_auc": 0.84 if alias == "champion" else 0.86}),
        }.items():
            client.set_model_version_tag(model, version, key, value)
    set_traffic(mlflow_url, model, {"champion": 90, "challenger": 10})
    return str(client.get_model_version(model, "1").run_id)


@contextmanager
def serving_process(home: Path, mlflow_url: str, model: str) -> Iterator[tuple[str, str]]:
    """``python -m serving`` serving ``model``; yields its URL and an admin key."""
    from serving.keys.store import KeyStore, migrate

    home.mkdir(parents=True, exist_ok=True)
    database = f"sqlite:///{home / 'serving.db'}"
    migrate(database)
    store = KeyStore(database, cache_seconds=0)
    _, admin = store.create("airflow", ["admin"])
    store.close()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWP_SERVING_")}
    env.update(
        MLWP_SERVING_HOME=str(home),
        MLWP_SERVING_DATABASE_URL=database,
        MLWP_SERVING_MLFLOW_TRACKING_URI=mlflow_url,
        MLWP_SERVING_MODELS=json.dumps([model]),
        MLWP_SERVING_DEFAULT_MODEL=model,
        MLWP_SERVING_POLL_INTERVAL_SECONDS="0",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p),
    )
    log = home / "serving.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_http(f"{url}/health/live", timeout=300, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"serving did not start: {exc}\n{log.read_text()[-4000:]}") from None
        yield url, admin
    finally:
        stop_process_group(proc)


@contextmanager
def run_platform(
    home: Path,
    mlflow_url: str,
    model: str,
    migrated_db: Path,
    *,
    dag_files: dict[str, str] | None = None,
) -> Iterator[Platform]:
    """Register ``model`` in the MLflow server at ``mlflow_url``, start serving and the
    api-server under ``home`` with a copy of ``migrated_db`` (the ``migrated_airflow_db``
    fixture) as its metadata database; stop them at the end.

    ``dag_files`` are written to the DAG folder with ``{model}`` and ``{run_id}`` (the MLflow
    run of the model's v1) filled in.
    """
    from mlwp.platform.airflow_config import airflow_environment
    from mlwp.platform.processes import SQLITE_API_SERVER, without_fab_sync
    from mlwp.platform.webserver_config import write_webserver_config
    from mlwp.settings import Settings

    dags = home / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    (dags / "ui_projects.py").write_text(DAG_FILE)
    model_dir = _telco().train_model_dir(home / "model", rounds=5)
    run_id = register_model(mlflow_url, model, model_dir)
    for name, text in (dag_files or {}).items():
        (dags / name).write_text(text.format(model=model, run_id=run_id))
    with serving_process(home / "serving", mlflow_url, model) as (serving_url, admin_key):
        port = free_port()
        settings = Settings(
            home=home,
            dags_folder=dags,
            airflow_port=port,
            serving_port=int(serving_url.rsplit(":", 1)[1]),
            mlflow_tracking_uri=mlflow_url,
            storage_root=(home / "storage").as_uri(),
        )
        write_webserver_config(settings)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLWP_")}
        env.pop("MLFLOW_TRACKING_URI", None)
        env.update(airflow_environment(settings))
        env.update(
            {
                "PYTHONPATH": str(REPO_ROOT),
                "MLWP_HOME": str(home),
                "MLWP_DAGS_FOLDER": str(dags),
                "MLWP_AIRFLOW_PORT": str(port),
                "MLWP_SERVING_PORT": str(settings.serving_port),
                "MLWP_SERVING_ADMIN_KEY": admin_key,
                "MLWP_MLFLOW_TRACKING_URI": mlflow_url,
                "MLWP_STORAGE_ROOT": settings.storage_uri,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                # FAB caches a user's permissions for 30 s; the tests change none.
                "MLWP_AUTH_RATE_LIMIT": "1000 per 1 second",
            }
        )
        log = home / "setup.log"
        airflow = str(VENV_BIN / "airflow")
        shutil.copy(migrated_db, home / "airflow.db")
        users = [
            {
                "username": username,
                "email": f"{username}@example.org",
                "role": role,
                "projects": projects,
                "password": PASSWORD,
            }
            for username, (role, projects) in USERS.items()
        ]
        add_roles_and_users({"churn": {}, "fraud": {}}, users, env, log)
        _run([airflow, "dags", "reserialize"], env, log)
        server_log = (home / "api-server.log").open("wb")
        proc = subprocess.Popen(
            # the api-server as `mlwp up` starts it on SQLite (operators/api_server.py)
            [*SQLITE_API_SERVER, "--port", str(port), "--host", "127.0.0.1"],
            env=without_fab_sync(env),  # as `mlwp up` starts it, after the roles sync
            cwd=REPO_ROOT,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_for_http(f"{url}/api/v2/monitor/health", timeout=300, proc=proc)
            except (RuntimeError, TimeoutError) as exc:
                server_log.flush()
                raise RuntimeError(
                    f"api-server: {exc}\n{(home / 'api-server.log').read_text()[-4000:]}"
                ) from None
            yield Platform(home, model, url, mlflow_url, serving_url, env)
        finally:
            stop_process_group(proc)
            server_log.close()


def monitor_look(platform: Platform, storage: Path) -> Any:
    """One look of the real monitor at the platform's model: 400 captured, labelled requests
    (90/10 between the champion and the challenger of the moment) analysed and logged to the
    platform's MLflow by ``mlwp.monitoring.monitor.run_monitor``; returns its outcome."""
    import mlflow
    import pyarrow as pa

    from mlwp import registry
    from mlwp.monitoring import capture
    from mlwp.monitoring.monitor import MonitorSettings, run_monitor

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(platform.mlflow_url)
    try:
        versions = registry.aliases(platform.model)
        now = datetime.now(UTC)
        rows = [
            {
                "inference_id": f"req-{i}",
                "row": 0,
                "time": now - timedelta(minutes=400 - i),
                "model": platform.model,
                "version": versions["challenger" if i % 10 == 0 else "champion"],
                "variant": "challenger" if i % 10 == 0 else "champion",
                "served": True,
                "routing_key": f"customer-{i}",
                "entity_key": None,
                "inputs": "{}",
                "prediction": float(i % 3 == 0),
                "probability": 0.9 if i % 3 == 0 else 0.2,
                "outputs": "{}",
                "latency_ms": 2.0,
            }
            for i in range(400)
        ]
        root = storage.as_uri()
        table = pa.Table.from_pylist(rows, schema=capture.CAPTURE_SCHEMA)
        capture.write_parts(root, "capture", platform.model, table)
        labels = [
            {"inference_id": r["inference_id"], "label": int(i % 4 == 0)}
            for i, r in enumerate(rows)
        ]
        capture.write_labels(root, platform.model, labels, source="api")
        return run_monitor(
            root,
            MonitorSettings(model=platform.model, check_drift=False),
            experiment=f"{platform.model}-monitoring",
            now=now,
        )
    finally:
        mlflow.set_tracking_uri(previous)
