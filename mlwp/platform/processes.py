"""The platform's processes: how each is started and how each is known to be ready.

Airflow runs as its four components (api-server, scheduler, dag-processor, triggerer), never
as ``airflow standalone``, which forces the simple auth manager; all four get the same
environment from :func:`mlwp.platform.airflow_config.airflow_environment`. MLflow runs its
tracking server, serving runs under uvicorn. Only command lines and HTTP probes live here:
nothing imports Airflow.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

from mlwp.errors import ConfigurationError, MlwpError
from mlwp.platform.airflow_config import airflow_environment
from mlwp.platform.executors import ExecutorKind
from mlwp.platform.preflight import PortRequest, check_redis, display_broker
from mlwp.platform.supervisor import ProcessSpec, ReadinessProbe
from mlwp.settings import REPO_ROOT, Settings

# Airflow components that report a heartbeat through the api-server's monitor endpoint.
AIRFLOW_COMPONENTS = ("metadatabase", "scheduler", "dag_processor", "triggerer")

# A status reason meaning "up and answering, just not fully ready" (serving without a model).
LIVE_PREFIX = "live,"

# Processes whose health the api-server reports from their heartbeats.
HEARTBEATS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}

# Stop order: what accepts work first, then what schedules it, then the Celery workers that
# run it (after the scheduler, so nothing new is queued to a worker that is leaving), then
# what stores its results.
STAGE_FRONT, STAGE_WORKERS, STAGE_TASK_WORKERS, STAGE_STORAGE = 0, 1, 2, 3

# Celery workers `mlwp up` supervises are named celery-worker-1..N (process and node name).
CELERY_WORKER_PREFIX = "celery-worker-"

# Processes that do not need Airflow's database, so they can start before its migration.
INDEPENDENT = ("mlflow", "serving")
# Processes that need the migrated database but not the roles (which the dag-processor needs).
AFTER_MIGRATION = ("api-server", "scheduler", "triggerer")


def executable(name: str) -> str:
    """Find a console script of this environment (beside the running Python) or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ConfigurationError(
            f"'{name}' is not installed in this environment; run `uv sync --frozen` (or make sync)"
        )
    return found


def child_environment(settings: Settings) -> dict[str, str]:
    """The environment of every platform process: the caller's, plus Airflow's generated one."""
    env = dict(os.environ)
    env.update(airflow_environment(settings))
    env["PYTHONUNBUFFERED"] = "1"
    # The serving service and mlwp code in tasks find the repository's packages.
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
    )
    return env


# ``airflow api-server`` through operators/api_server.py, which keeps Airflow's action log
# from blocking the event loop on SQLite's write lock (docs/platform.md, Decisions).
SQLITE_API_SERVER = (sys.executable, "-m", "operators.api_server", "api-server")


def api_server_command(settings: Settings, airflow: str) -> list[str]:
    """``airflow api-server``, on SQLite as :data:`SQLITE_API_SERVER`."""
    if settings.airflow_database_url.startswith("sqlite"):
        return [*SQLITE_API_SERVER]
    return [airflow, "api-server"]


def serving_entity_fields(settings: Settings) -> tuple[dict[str, str], list[str]]:
    """Serving's per-model entity-key fields as the definitions under the DAG folder declare
    them in their labels tasks (:mod:`mlwp.definitions.entity_keys`), and the problems met."""
    from mlwp.definitions.entity_keys import serving_entity_fields as derive
    from mlwp.definitions.loading import find_definitions

    return derive(find_definitions([settings.dags_folder / "projects"]))


def serving_environment(env: Mapping[str, str], entity_fields: Mapping[str, str]) -> dict[str, str]:
    """Serving's environment: ``env`` plus ``MLWP_SERVING_ENTITY_FIELDS`` of the derived
    ``entity_fields``, under the models an explicit ``MLWP_SERVING_ENTITY_FIELDS`` in ``env``
    names (the operator's word wins, model by model; a value that is not a JSON object is left
    as it is, for serving to refuse with its own message)."""
    from mlwp.definitions.entity_keys import ENTITY_FIELDS_VARIABLE

    merged = dict(entity_fields)
    explicit = env.get(ENTITY_FIELDS_VARIABLE)
    if explicit:
        try:
            given = json.loads(explicit)
        except ValueError:
            return dict(env)
        if not isinstance(given, dict):
            return dict(env)
        merged.update(given)
    if not merged:
        return dict(env)
    return {**env, ENTITY_FIELDS_VARIABLE: json.dumps(merged, sort_keys=True)}


def without_fab_sync(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a process that must not sync FAB's permissions as it starts.

    Airflow's api-server syncs them by default as it starts; next to ``mlwp roles sync``
    (which does FAB's own sync first, then the platform's roles) both would insert the same
    rows and one fails on the FAB tables' unique constraints. ``mlwp up`` runs the roles sync
    before anything else writes those tables.
    """
    return {**env, "AIRFLOW__FAB__UPDATE_FAB_PERMS": "False"}


def _get(url: str) -> httpx.Response | str:
    try:
        return httpx.get(url, timeout=3.0)
    except httpx.HTTPError as exc:
        return f"{url}: {type(exc).__name__}"


def http_ok(url: str) -> ReadinessProbe:
    """A probe that is satisfied when ``url`` answers 200."""

    def probe() -> str | None:
        response = _get(url)
        if isinstance(response, str):
            return response
        return None if response.status_code == 200 else f"{url}: HTTP {response.status_code}"

    return probe


def serving_health(base_url: str) -> ReadinessProbe:
    """A status probe for serving: live, and whether it has loaded a model yet."""
    live, ready = http_ok(f"{base_url}/health/live"), http_ok(f"{base_url}/health/ready")

    def probe() -> str | None:
        reason = live()
        if reason is not None:
            return reason
        return None if ready() is None else f"{LIVE_PREFIX} no model loaded yet"

    return probe


def airflow_health(base_url: str) -> ReadinessProbe:
    """A probe satisfied when the api-server reports every component healthy.

    The monitor endpoint reports the scheduler's, dag-processor's and triggerer's latest
    heartbeats, so this one probe also tells that those three processes are alive and working.
    """
    url = f"{base_url}/api/v2/monitor/health"

    def probe() -> str | None:
        response = _get(url)
        if isinstance(response, str):
            return response
        if response.status_code != 200:
            return f"{url}: HTTP {response.status_code}"
        body = response.json()
        waiting = [
            part for part in AIRFLOW_COMPONENTS if (body.get(part) or {}).get("status") != "healthy"
        ]
        return f"waiting for {', '.join(waiting)}" if waiting else None

    return probe


def airflow_components(base_url: str) -> dict[str, str]:
    """Map scheduler/dag-processor/triggerer to the status the api-server reports for them."""
    response = _get(f"{base_url}/api/v2/monitor/health")
    if isinstance(response, str) or response.status_code != 200:
        return {}
    body = response.json()
    return {
        process: str((body.get(part) or {}).get("status") or "unknown")
        for process, part in HEARTBEATS.items()
    }


def celery_node_name(worker: str) -> str:
    """The Celery node name of a worker: ``<worker>@<this host>``, as ``%h`` would expand."""
    return f"{worker}@{socket.gethostname()}"


def celery_ping(broker_url: str, node: str, timeout: float = 1.0) -> ReadinessProbe:
    """A probe satisfied when the Celery worker ``node`` answers a ping through the broker.

    This is ``celery inspect ping -d <node>`` without starting a process: the reply proves the
    worker consumes from the broker, not merely that its process exists.
    """

    def probe() -> str | None:
        # A plain PING first: a broker that is down is reported at once, with Redis's own
        # reason, instead of after Celery's connection retries (and its first, slow import).
        try:
            check_redis("broker", broker_url, timeout=timeout)
        except MlwpError as exc:
            return exc.message
        from celery import Celery

        app = Celery(broker=broker_url, set_as_current=False)
        app.conf.broker_connection_timeout = timeout
        try:
            replies = app.control.ping(destination=[node], timeout=timeout)
        except Exception as exc:  # any broker or connection error means "not answering yet"
            return f"broker {display_broker(broker_url)}: {type(exc).__name__}: {exc}"
        finally:
            app.close()
        answered = any(node in reply for reply in replies or [])
        return None if answered else f"no ping reply from {node} yet"

    return probe


def celery_worker_argv(
    settings: Settings,
    node: str,
    *,
    queues: list[str] | None = None,
    concurrency: int | None = None,
    serve_logs: bool = False,
) -> list[str]:
    """The command line of one Celery worker with the platform's configuration."""
    argv = [
        executable("airflow"),
        "celery",
        "worker",
        "--celery-hostname",
        node,
        "--queues",
        ",".join(queues or settings.celery_queues),
        "--concurrency",
        str(concurrency or settings.celery_worker_concurrency),
    ]
    if not serve_logs:
        # Workers beside the scheduler write task logs to the shared local folder, and several
        # workers on one host would all bind the same log-serving port (8793).
        argv.append("--skip-serve-logs")
    return argv


def celery_worker_processes(settings: Settings, env: Mapping[str, str]) -> list[ProcessSpec]:
    """The Celery workers ``mlwp up`` supervises: none unless Celery is configured."""
    if not settings.configured_executors.uses(ExecutorKind.CELERY):
        return []
    specs = []
    for number in range(1, settings.celery_workers + 1):
        name = f"{CELERY_WORKER_PREFIX}{number}"
        node = celery_node_name(name)
        specs.append(
            ProcessSpec(
                name=name,
                argv=celery_worker_argv(settings, node),
                env=env,
                cwd=REPO_ROOT,
                ready=celery_ping(settings.celery_broker_url, node),
                stop_stage=STAGE_TASK_WORKERS,
            )
        )
    return specs


def port_requests(settings: Settings) -> list[PortRequest]:
    """The ports ``mlwp up`` will bind, with the process that binds each."""
    return [
        PortRequest("airflow api-server", settings.host, settings.airflow_port),
        PortRequest("mlflow server", settings.host, settings.mlflow_port),
        PortRequest("serving", settings.host, settings.serving_port),
    ]


def platform_processes(
    settings: Settings, entity_fields: Mapping[str, str] | None = None
) -> list[ProcessSpec]:
    """Describe every long-running process of the embedded platform.

    ``entity_fields`` are serving's per-model entity-key fields (derived from the
    definitions when not given, :func:`serving_entity_fields`)."""
    env = child_environment(settings)
    if entity_fields is None:
        entity_fields = serving_entity_fields(settings)[0]
    airflow = executable("airflow")
    mlflow_url = f"http://{settings.host}:{settings.mlflow_port}"
    # MLflow's job runner (huey consumers for GenAI scoring jobs) is not used by mlwp; off, it
    # saves two processes and lets the server stop promptly on SIGTERM.
    mlflow_env = {
        **env,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # The server keeps MLflow's own log handler (its log file is its stderr).
        "MLFLOW_CONFIGURE_LOGGING": "true",
    }
    return [
        ProcessSpec(
            name="api-server",
            argv=[
                *api_server_command(settings, airflow),
                "--host",
                settings.host,
                "--port",
                str(settings.airflow_port),
                "--workers",
                "1",
            ],
            env=without_fab_sync(env),
            cwd=REPO_ROOT,
            ready=airflow_health(settings.airflow_url),
            stop_stage=STAGE_FRONT,
            url=settings.airflow_url,
        ),
        ProcessSpec(
            name="serving",
            argv=[
                sys.executable,
                "-m",
                "serving",
                "--host",
                settings.host,
                "--port",
                str(settings.serving_port),
            ],
            # The entity key each model's labels are joined by (docs/monitoring.md).
            env=serving_environment(env, entity_fields),
            cwd=REPO_ROOT,
            # /health/ready means "models loaded" (a load balancer's question); a new platform
            # has no model yet, so the platform waits for the process to answer at all.
            ready=http_ok(f"{settings.serving_url}/health/live"),
            stop_stage=STAGE_FRONT,
            url=settings.serving_url,
        ),
        # Logs are read from the shared local folder, so no log-serving ports are opened.
        ProcessSpec(
            name="scheduler",
            argv=[airflow, "scheduler", "--skip-serve-logs"],
            env=env,
            cwd=REPO_ROOT,
            stop_stage=STAGE_WORKERS,
        ),
        ProcessSpec(
            name="dag-processor",
            argv=[airflow, "dag-processor"],
            env=env,
            cwd=REPO_ROOT,
            stop_stage=STAGE_WORKERS,
        ),
        # Creates the role of a project added while the platform runs (and its memberships)
        # within seconds; `mlwp up` has synced once already before the dag-processor started.
        ProcessSpec(
            name="roles-sync",
            argv=[executable("mlwp"), "roles", "sync", "--watch", "--no-initial"],
            env={**env, "MLWP_ACTOR": "mlwp-up"},
            cwd=REPO_ROOT,
            stop_stage=STAGE_WORKERS,
        ),
        ProcessSpec(
            name="triggerer",
            argv=[airflow, "triggerer", "--skip-serve-logs"],
            env=env,
            cwd=REPO_ROOT,
            stop_stage=STAGE_WORKERS,
        ),
        ProcessSpec(
            name="mlflow",
            argv=[
                executable("mlflow"),
                "server",
                "--host",
                settings.host,
                "--port",
                str(settings.mlflow_port),
                "--workers",
                "1",
                "--backend-store-uri",
                settings.mlflow_backend_uri,
                # Clients send artifacts to the server (new experiments get the root
                # mlflow-artifacts:/), which stores them at the destination: S3 in production,
                # so no client, worker or serving replica needs the bucket or a shared disk.
                "--serve-artifacts",
                "--artifacts-destination",
                settings.mlflow_artifacts_uri,
            ],
            env=mlflow_env,
            cwd=settings.home,
            ready=http_ok(f"{mlflow_url}/health"),
            stop_stage=STAGE_STORAGE,
            url=mlflow_url,
        ),
        *celery_worker_processes(settings, env),
    ]
