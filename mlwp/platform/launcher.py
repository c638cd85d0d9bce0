"""``mlwp up``, ``mlwp down`` and ``mlwp status``: the platform as one supervised unit.

``up`` refuses before touching anything when another supervisor runs with the same home, a
port is taken or a database is unreachable; then it migrates Airflow's database, starts every
process, creates the admin user meanwhile, waits until all are healthy, prints the URLs and
the login, and supervises until Ctrl-C, SIGTERM (``mlwp down``) or a process dies.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from types import FrameType
from typing import TypeVar

import psutil

from mlwp.errors import PlatformError
from mlwp.platform import bootstrap, preflight, processes
from mlwp.platform.executors import ExecutorKind
from mlwp.platform.serving_key import ensure_serving_admin_key
from mlwp.platform.state import (
    AlreadyRunning,
    PlatformState,
    ProcessState,
    SupervisorLock,
    already_running_message,
    process_matches,
    read_state,
    remove_state,
    write_state,
)
from mlwp.platform.supervisor import ProcessDied, StartTimeout, Supervisor, terminate_pids
from mlwp.platform.webserver_config import write_webserver_config
from mlwp.settings import Settings

Echo = Callable[[str], None]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def preflight_checks(settings: Settings) -> None:
    """Refuse to start when shared state would be local in production, a port is taken, or a
    database or the broker cannot be reached."""
    preflight.check_shared_state(settings)
    preflight.check_ports(processes.port_requests(settings))
    preflight.check_database("Airflow (MLWP_DATABASE_URL)", settings.airflow_database_url)
    if settings.audit_database_url:
        preflight.check_database("audit trail (MLWP_AUDIT_DATABASE_URL)", settings.audit_url)
    if settings.serving_database_url:
        preflight.check_database(
            "serving API keys (MLWP_SERVING_DATABASE_URL)", settings.serving_key_database_url
        )
    if settings.configured_executors.uses(ExecutorKind.CELERY):
        preflight.check_redis("Celery's broker (MLWP_REDIS_URL)", settings.celery_broker_url)
    mlflow_uri = settings.mlflow_backend_uri
    if "://" in mlflow_uri and not mlflow_uri.startswith("file:"):
        preflight.check_database("MLflow (MLWP_MLFLOW_BACKEND_STORE_URI)", mlflow_uri)


@contextmanager
def stop_on_signals(event: threading.Event) -> Iterator[None]:
    """Turn Ctrl-C, SIGTERM and SIGHUP into ``event`` while the block runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _state(settings: Settings, supervisor: Supervisor, status: str) -> PlatformState:
    me = psutil.Process()
    return PlatformState(
        supervisor_pid=me.pid,
        supervisor_create_time=me.create_time(),
        started_at=datetime.fromtimestamp(me.create_time(), UTC),
        status=status,  # type: ignore[arg-type]
        home=str(settings.home),
        urls={
            "airflow": settings.airflow_url,
            "mlflow": f"http://{settings.host}:{settings.mlflow_port}",
            "serving": settings.serving_url,
        },
        ports={
            "airflow": settings.airflow_port,
            "mlflow": settings.mlflow_port,
            "serving": settings.serving_port,
        },
        processes=[
            ProcessState(
                name=child.name,
                pid=child.pid,
                create_time=child.create_time,
                log=str(child.log_path),
                url=child.spec.url,
            )
            for child in supervisor.children.values()
        ],
    )


def _ready_banner(settings: Settings, admin: bootstrap.AdminUser, seconds: float) -> list[str]:
    lines = [
        f"mlwp is ready ({seconds:.0f}s):",
        f"  Airflow   {settings.airflow_url}   (login page: {settings.airflow_url}/auth/login/)",
        f"  MLflow    http://{settings.host}:{settings.mlflow_port}",
        f"  serving   {settings.serving_url}   (docs: {settings.serving_url}/docs)",
    ]
    if admin.show_password:
        lines.append(
            f"  login     {admin.username} / {admin.password}   "
            f"(shown once; kept in {settings.credentials_file})"
        )
    elif admin.password is not None:
        lines.append(f"  login     {admin.username}, password in {settings.credentials_file}")
    else:
        lines.append(
            f"  login     user '{admin.username}' already existed; its password is not in "
            f"{settings.credentials_file} (reset it with "
            f"`mlwp airflow users reset-password --username {admin.username}`)"
        )
    lines += [
        f"  logs      {settings.logs_dir}/<process>.log",
        "First run (docs/first-run.md): DAGs start paused; from another terminal",
        "  mlwp run churn.train --approve     unpause, trigger and follow a run, approve it",
        "  mlwp predict churn --file dags/projects/churn/data/example_rows.json",
        f"  or in the UI: {settings.airflow_url}/dags/churn.train -> unpause, then Trigger",
        "Ctrl-C (or `mlwp down` from another terminal) stops everything.",
    ]
    return lines


@dataclass
class UpResult:
    """How ``up`` ended: 0 after a requested stop, non-zero after a fault."""

    exit_code: int
    message: str | None = None


def tolerant(echo: Echo) -> Echo:
    """``echo`` that drops a message when its terminal or pipe has gone.

    The supervisor's output is a courtesy; its job is its children. A closed pipe (the
    terminal closed, ``mlwp up | head``, a test that stopped reading) made the first message
    after it raise ``BrokenPipeError``, and the one before the stop ended the supervisor
    without stopping the processes it started.
    """

    def say(message: str) -> None:
        with suppress(OSError):
            echo(message)

    return say


def run_up(settings: Settings, echo: Echo) -> UpResult:
    """Start and supervise the platform until a stop is requested or a process dies."""
    echo = tolerant(echo)
    lock = SupervisorLock(settings.home)
    if lock.held_by_other():
        raise AlreadyRunning(already_running_message(settings.home))
    preflight_checks(settings)
    lock.acquire()
    stop = threading.Event()
    started = time.monotonic()
    try:
        with stop_on_signals(stop):
            return _supervise(settings, echo, stop, started)
    finally:
        lock.release()


def _supervise(settings: Settings, echo: Echo, stop: threading.Event, started: float) -> UpResult:
    # Before serving starts (it migrates the same key store) and before the environment of
    # the Airflow processes is made (it carries the key to the deploy tasks).
    ensure_serving_admin_key(settings)
    # Serving captures each model's entity key as the definitions' labels tasks declare it.
    entity_fields, problems = processes.serving_entity_fields(settings)
    for problem in problems:
        echo(f"mlwp: warning: serving's entity-key fields: {problem}")
    specs = processes.platform_processes(settings, entity_fields)
    env = processes.child_environment(settings)
    airflow = processes.executable("airflow")
    init_log = settings.logs_dir / "init.log"
    supervisor = Supervisor(specs, settings.logs_dir)
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mlwp-init")
    try:
        # MLflow and serving need nothing from Airflow: they warm up during the migration.
        echo(f"mlwp: home {settings.home}; starting mlflow and serving ...")
        supervisor.start(processes.INDEPENDENT)
        write_state(settings.state_file, _state(settings, supervisor, "starting"))
        echo("mlwp: migrating Airflow's database ...")
        migrate = partial(bootstrap.migrate_database, airflow, env, init_log)
        _run_step(pool, stop, supervisor, migrate)
        if stop.is_set():
            return UpResult(0, "stopped during start")
        imported = _wait_future(pool.submit(bootstrap.migrate_audit, settings), stop, supervisor)
        if stop.is_set():
            return UpResult(0, "stopped during start")
        if imported:
            echo(f"mlwp: {imported}")
        write_webserver_config(settings)
        if settings.configured_executors.uses(ExecutorKind.KUBERNETES):
            from mlwp.platform.kubernetes import write_pod_template

            write_pod_template(settings)
        # Celery workers start with the dag-processor, after the roles sync: importing the ML
        # stack in each of them meanwhile would compete with the sync (which has a deadline)
        # for the CPU of a small machine, and tasks cannot run before DAGs are parsed anyway.
        names = supervisor.start(processes.AFTER_MIGRATION)
        echo("mlwp: starting " + ", ".join(names) + "; creating the admin user and roles ...")
        write_state(settings.state_file, _state(settings, supervisor, "starting"))
        # One writer of FAB's tables at a time: the roles sync (FAB's own sync included), then
        # the admin user. Project roles must exist before DAGs naming them in access_control
        # are parsed, so the dag-processor waits for the sync.
        roles_future = pool.submit(bootstrap.sync_roles, env, init_log)
        _wait_future(roles_future, stop, supervisor)
        if stop.is_set():
            return UpResult(0, "stopped during start")
        admin_future = pool.submit(bootstrap.ensure_admin, settings, init_log)
        names = supervisor.start()
        echo("mlwp: starting " + ", ".join(names) + " ...")
        write_state(settings.state_file, _state(settings, supervisor, "starting"))
        # The start timeout bounds how long started processes may take to become healthy;
        # set-up steps have their own bound (bootstrap.STEP_TIMEOUT_SECONDS).
        if not supervisor.wait_ready(settings.start_timeout_seconds, stop.is_set):
            return UpResult(0, "stopped during start")
        admin = _wait_future(admin_future, stop, supervisor)
        if admin is None:
            return UpResult(0, "stopped during start")
        write_state(settings.state_file, _state(settings, supervisor, "ready"))
        for line in _ready_banner(settings, admin, time.monotonic() - started):
            echo(line)
        if admin.show_password:
            bootstrap.mark_password_shown(settings.credentials_file)
        supervisor.watch(stop)
        return UpResult(0, "stopped")
    except ProcessDied as exc:
        return UpResult(1, f"{exc.message}\n--- last lines of {exc.log} ---\n{exc.tail}")
    except StartTimeout as exc:
        return UpResult(1, exc.message)
    except PlatformError:
        if stop.is_set():
            return UpResult(0, "stopped during start")
        raise
    finally:
        # A set-up step still running is no longer wanted (a stop, a fault): end it rather
        # than wait for it, so Ctrl-C during the roles sync stops the platform at once.
        bootstrap.stop_running_steps()
        pool.shutdown(wait=True, cancel_futures=True)
        if supervisor.children:
            echo("mlwp: stopping " + ", ".join(supervisor.children) + " ...")
            write_state(settings.state_file, _state(settings, supervisor, "stopping"))
            report = supervisor.stop()
            if report.killed:
                echo(f"mlwp: killed after the stop timeout: {', '.join(report.killed)}")
        remove_state(settings.state_file)


T = TypeVar("T")


def _wait_future(future: Future[T], stop: threading.Event, supervisor: Supervisor) -> T | None:
    """Wait for a set-up step while watching the started processes; None when stopped."""
    while True:
        try:
            return future.result(timeout=0.5)
        except FutureTimeout:
            pass
        if stop.is_set():
            return None
        dead = supervisor.exited()
        if dead is not None:
            raise supervisor.died(dead, during="start")


def _run_step(
    pool: ThreadPoolExecutor,
    stop: threading.Event,
    supervisor: Supervisor,
    step: Callable[[], None],
) -> None:
    _wait_future(pool.submit(step), stop, supervisor)


@dataclass
class DownResult:
    running: bool
    message: str


def run_down(settings: Settings, timeout: float = 90.0) -> DownResult:
    """Ask the running supervisor to stop and wait for it; clean up after a dead one."""
    lock = SupervisorLock(settings.home)
    state = read_state(settings.state_file)
    if lock.held_by_other():
        if state is None or not process_matches(state.supervisor_pid, state.supervisor_create_time):
            raise PlatformError(
                f"a supervisor holds {lock.path} but its state file is missing or stale; "
                "stop it with Ctrl-C in its terminal"
            )
        os.kill(state.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while lock.held_by_other():
            if time.monotonic() > deadline:
                raise PlatformError(
                    f"the supervisor (pid {state.supervisor_pid}) did not stop within "
                    f"{timeout:.0f}s"
                )
            time.sleep(0.3)
        return DownResult(True, f"mlwp stopped (supervisor pid {state.supervisor_pid})")
    if state is not None:
        # The supervisor died without cleaning up (SIGKILL, power loss): stop its children.
        left = terminate_pids({p.name: (p.pid, p.create_time) for p in state.processes}, timeout=20)
        remove_state(settings.state_file)
        if left:
            return DownResult(True, f"stopped processes of a dead supervisor: {', '.join(left)}")
    return DownResult(False, f"mlwp is not running (home {settings.home})")


@dataclass
class ProcessStatus:
    name: str
    pid: int
    alive: bool
    url: str | None
    health: str


@dataclass
class PlatformStatus:
    running: bool
    state: PlatformState | None
    processes: list[ProcessStatus]


def platform_status(settings: Settings) -> PlatformStatus:
    """Report which processes of the running platform are alive and healthy."""
    lock = SupervisorLock(settings.home)
    state = read_state(settings.state_file)
    if not lock.held_by_other() or state is None:
        return PlatformStatus(False, None, [])
    probes = {
        "api-server": processes.airflow_health(state.urls["airflow"]),
        "mlflow": processes.http_ok(f"{state.urls['mlflow']}/health"),
        "serving": processes.serving_health(state.urls["serving"]),
    }
    for proc in state.processes:
        if proc.name.startswith(processes.CELERY_WORKER_PREFIX):
            node = processes.celery_node_name(proc.name)
            probes[proc.name] = processes.celery_ping(settings.celery_broker_url, node)
    heartbeats = processes.airflow_components(state.urls["airflow"])
    reported: list[ProcessStatus] = []
    for proc in state.processes:
        alive = process_matches(proc.pid, proc.create_time)
        probe = probes.get(proc.name)
        if not alive:
            health = "down"
        elif proc.name in heartbeats:
            health = heartbeats[proc.name]
        elif probe is None:
            health = "running"
        else:
            reason = probe()
            if reason is None:
                health = "healthy"
            elif reason.startswith(processes.LIVE_PREFIX):
                health = reason
            else:
                health = f"unhealthy: {reason}"
        reported.append(ProcessStatus(proc.name, proc.pid, alive, proc.url, health))
    return PlatformStatus(True, state, reported)
