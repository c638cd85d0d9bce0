"""The supervisor, preflight checks and state lock, with real (tiny) child processes, no Airflow."""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from mlwp.errors import ConfigurationError
from mlwp.platform import launcher
from mlwp.platform.preflight import (
    DatabaseUnreachable,
    PortInUse,
    PortRequest,
    check_database,
    check_ports,
)
from mlwp.platform.state import (
    AlreadyRunning,
    PlatformState,
    ProcessState,
    SupervisorLock,
    read_state,
    write_state,
)
from mlwp.platform.supervisor import (
    ProcessDied,
    ProcessSpec,
    StartTimeout,
    Supervisor,
    terminate_pids,
)
from mlwp.settings import Settings

pytestmark = pytest.mark.unit


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


# A child that records when SIGTERM reached it, then exits after a short, real clean-up.
RECORDING_CHILD = """
import signal, sys, time
def stop(signum, frame):
    with open(sys.argv[1], "a") as f:
        f.write(f"{sys.argv[2]} {time.monotonic()}\\n")
    time.sleep(0.3)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("up", flush=True)
while True:
    time.sleep(0.05)
"""


IGNORING_SLEEPER = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
)


def spec(name: str, argv: list[str], tmp_path: Path, **kwargs: object) -> ProcessSpec:
    return ProcessSpec(name=name, argv=argv, env=dict(os.environ), cwd=tmp_path, **kwargs)  # type: ignore[arg-type]


def listening_socket() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def test_port_in_use_names_the_port_the_process_and_the_holder() -> None:
    sock, port = listening_socket()
    try:
        with pytest.raises(PortInUse) as info:
            check_ports([PortRequest("mlflow server", "127.0.0.1", port)])
    finally:
        sock.close()
    message = info.value.message
    assert f"port {port}" in message
    assert "wanted by mlflow server" in message
    assert f"pid {os.getpid()}" in message
    assert info.value.code == "port_in_use"


def test_free_ports_pass_and_duplicates_are_refused() -> None:
    sock, port = listening_socket()
    sock.close()
    check_ports([PortRequest("serving", "127.0.0.1", port)])
    with pytest.raises(ConfigurationError, match=rf"port {port} is configured for both a and b"):
        check_ports([PortRequest("a", "127.0.0.1", port), PortRequest("b", "127.0.0.1", port)])


def test_unreachable_postgres_is_one_line_naming_the_user_and_hiding_the_password() -> None:
    sock, port = listening_socket()
    sock.close()  # nothing listens there now
    url = f"postgresql+psycopg2://mlwp:s3cret@127.0.0.1:{port}/airflow"
    with pytest.raises(DatabaseUnreachable) as info:
        check_database("Airflow (MLWP_DATABASE_URL)", url, timeout=2)
    message = info.value.message
    assert message.startswith("Airflow (MLWP_DATABASE_URL) database postgresql+psycopg2://mlwp:")
    assert f"127.0.0.1:{port}/airflow is unreachable" in message
    assert "s3cret" not in message
    assert "\n" not in message


def test_sqlite_database_folder_is_created(tmp_path: Path) -> None:
    check_database("Airflow", f"sqlite:///{tmp_path / 'deep' / 'airflow.db'}")
    assert (tmp_path / "deep").is_dir()
    with pytest.raises(ConfigurationError, match="in-memory"):
        check_database("Airflow", "sqlite://")


def test_stop_follows_stages_and_leaves_nothing(tmp_path: Path) -> None:
    record = tmp_path / "stopped.txt"
    specs = [
        spec("storage", [*python(RECORDING_CHILD), str(record), "storage"], tmp_path, stop_stage=2),
        spec("front", [*python(RECORDING_CHILD), str(record), "front"], tmp_path, stop_stage=0),
        spec("worker", [*python(RECORDING_CHILD), str(record), "worker"], tmp_path, stop_stage=1),
    ]
    supervisor = Supervisor(specs, tmp_path / "logs", stop_timeout=10)
    supervisor.start()
    pids = [child.pid for child in supervisor.children.values()]
    # Ready once each child printed "up" (its SIGTERM handler is installed by then).
    deadline = time.monotonic() + 20
    while not all(
        "up" in (tmp_path / "logs" / f"{s.name}.log").read_text().splitlines() for s in specs
    ):
        assert time.monotonic() < deadline, "children did not start"
        time.sleep(0.05)
    report = supervisor.stop()
    assert report.order == ["front", "worker", "storage"]
    assert report.killed == []
    stopped = [line.split()[0] for line in record.read_text().splitlines()]
    assert stopped == ["front", "worker", "storage"]
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids
    )


def test_a_child_ignoring_sigterm_is_killed_with_its_detached_grandchild(tmp_path: Path) -> None:
    grandchild_pid = tmp_path / "grandchild.pid"
    stubborn = python(
        f"""
        import os, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen(
            [sys.executable, "-c", {IGNORING_SLEEPER!r}],
            start_new_session=True,
        )
        open({str(grandchild_pid)!r}, "w").write(str(child.pid))
        time.sleep(600)
        """
    )
    supervisor = Supervisor(
        [spec("stubborn", stubborn, tmp_path)], tmp_path / "logs", stop_timeout=1
    )
    supervisor.start()
    deadline = time.monotonic() + 20
    while not grandchild_pid.exists() or not grandchild_pid.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = int(grandchild_pid.read_text())
    assert psutil.pid_exists(pid)
    started = time.monotonic()
    report = supervisor.stop()
    assert report.killed == ["stubborn"]
    assert time.monotonic() - started < 10
    psutil.wait_procs([psutil.Process(pid)] if psutil.pid_exists(pid) else [], timeout=5)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_a_child_dying_during_start_names_it_its_code_and_its_log(tmp_path: Path) -> None:
    crashing = python("import sys; print('cannot bind: address already in use'); sys.exit(3)")
    healthy = python("import time; time.sleep(600)")
    supervisor = Supervisor(
        [
            spec("api", healthy, tmp_path, ready=lambda: "not yet"),
            spec("db", crashing, tmp_path, ready=lambda: "not yet"),
        ],
        tmp_path / "logs",
        stop_timeout=5,
    )
    supervisor.start()
    try:
        with pytest.raises(ProcessDied) as info:
            supervisor.wait_ready(timeout=30)
    finally:
        report = supervisor.stop()
    error = info.value
    assert error.name == "db"
    assert error.returncode == 3
    assert error.message == (
        f"db exited with code 3 during start (log: {tmp_path / 'logs' / 'db.log'})"
    )
    assert "cannot bind: address already in use" in error.tail
    assert "api" in report.order


def test_start_timeout_names_who_is_not_ready_and_why(tmp_path: Path) -> None:
    sleeper = python("import time; time.sleep(600)")
    supervisor = Supervisor(
        [
            spec("fast", sleeper, tmp_path, ready=lambda: None),
            spec("slow", sleeper, tmp_path, ready=lambda: "HTTP 503"),
        ],
        tmp_path / "logs",
        stop_timeout=5,
        poll_interval=0.05,
    )
    supervisor.start()
    try:
        with pytest.raises(StartTimeout) as info:
            supervisor.wait_ready(timeout=0.5)
    finally:
        supervisor.stop()
    assert "slow (HTTP 503" in info.value.message
    assert "fast" not in info.value.message


def test_watch_returns_on_stop_and_reports_a_death(tmp_path: Path) -> None:
    supervisor = Supervisor(
        [spec("short", python("import time; time.sleep(1); raise SystemExit(7)"), tmp_path)],
        tmp_path / "logs",
        poll_interval=0.05,
    )
    supervisor.start()
    try:
        with pytest.raises(ProcessDied, match="short exited with code 7 during operation"):
            supervisor.watch(threading.Event())
    finally:
        supervisor.stop()

    stop = threading.Event()
    stop.set()
    calm = Supervisor([spec("calm", python("import time; time.sleep(600)"), tmp_path)], tmp_path)
    calm.start()
    calm.watch(stop)  # returns at once: a stop was requested
    assert calm.stop().order == ["calm"]


def test_killed_child_reports_the_signal(tmp_path: Path) -> None:
    supervisor = Supervisor(
        [spec("victim", python("import time; time.sleep(600)"), tmp_path)], tmp_path
    )
    supervisor.start()
    child = supervisor.children["victim"]
    os.kill(child.pid, signal.SIGKILL)
    child.popen.wait()
    error = supervisor.died(child, during="operation")
    supervisor.stop()
    assert error.message.startswith("victim was killed by SIGKILL during operation")


def test_lock_refuses_a_second_supervisor(tmp_path: Path) -> None:
    first, second = SupervisorLock(tmp_path), SupervisorLock(tmp_path)
    assert not second.held_by_other()
    first.acquire()
    try:
        assert second.held_by_other()
        with pytest.raises(AlreadyRunning, match="mlwp is already running"):
            second.acquire()
    finally:
        first.release()
    assert not second.held_by_other()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.stat().st_size)
        for path in folder.rglob("*")
    }


def test_up_twice_refuses_without_touching_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    lock = SupervisorLock(settings.home)
    lock.acquire()
    before = snapshot(settings.home)
    try:
        with pytest.raises(AlreadyRunning):
            launcher.run_up(settings, lambda line: None)
    finally:
        lock.release()
    assert snapshot(settings.home) == before


def test_up_refuses_a_taken_port_before_starting_anything(tmp_path: Path) -> None:
    sock, port = listening_socket()
    settings = Settings(home=tmp_path / "home", airflow_port=port)
    try:
        with pytest.raises(PortInUse, match=rf"port {port} .*wanted by airflow api-server"):
            launcher.run_up(settings, lambda line: None)
    finally:
        sock.close()
    assert not (settings.home / "logs").exists()
    assert not settings.state_file.exists()


def test_state_round_trip_and_damaged_file(tmp_path: Path) -> None:
    state = PlatformState(
        supervisor_pid=os.getpid(),
        supervisor_create_time=psutil.Process().create_time(),
        started_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
        status="ready",
        home=str(tmp_path),
        urls={"airflow": "http://127.0.0.1:8080"},
        ports={"airflow": 8080},
        processes=[],
    )
    path = tmp_path / "platform.json"
    write_state(path, state)
    assert read_state(path) == state
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("{not json")
    with pytest.raises(Exception, match="not a valid mlwp state file"):
        read_state(path)


def test_terminate_pids_leaves_a_reused_pid_alone(tmp_path: Path) -> None:
    supervisor = Supervisor(
        [spec("other", python("import time; time.sleep(600)"), tmp_path)], tmp_path
    )
    supervisor.start()
    child = supervisor.children["other"]
    try:
        # Recorded with a different start time: the pid now belongs to someone else.
        assert terminate_pids({"other": (child.pid, child.create_time - 100)}, timeout=2) == []
        assert child.popen.poll() is None
        assert terminate_pids({"other": (child.pid, child.create_time)}, timeout=5) == ["other"]
        assert child.popen.wait(timeout=5) is not None
    finally:
        supervisor.stop()


def test_down_when_nothing_runs(tmp_path: Path) -> None:
    result = launcher.run_down(Settings(home=tmp_path / "home"))
    assert not result.running
    assert "not running" in result.message


def test_down_after_a_killed_supervisor_stops_its_orphans(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    orphans = Supervisor(
        [spec("scheduler", python("import time; time.sleep(600)"), tmp_path)], tmp_path / "logs"
    )
    orphans.start()
    child = orphans.children["scheduler"]
    # The state a SIGKILLed supervisor leaves behind: its pid is gone, its lock released.
    write_state(
        settings.state_file,
        PlatformState(
            supervisor_pid=child.pid,
            supervisor_create_time=child.create_time - 100,
            started_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
            status="ready",
            home=str(settings.home),
            urls={},
            ports={},
            processes=[
                ProcessState(
                    name="scheduler", pid=child.pid, create_time=child.create_time, log="x"
                )
            ],
        ),
    )
    try:
        result = launcher.run_down(settings, timeout=10)
        assert result.running
        assert result.message == "stopped processes of a dead supervisor: scheduler"
        assert child.popen.wait(timeout=10) is not None
        assert not settings.state_file.exists()
    finally:
        orphans.stop()


def test_admin_password_is_printed_until_a_start_has_shown_it(tmp_path: Path) -> None:
    from mlwp.platform import bootstrap

    settings = Settings(home=tmp_path / "home")
    bootstrap.write_credentials(
        settings.credentials_file,
        bootstrap.Credentials(username="admin", password="pa55-word", url=settings.airflow_url),
    )
    admin = bootstrap.AdminUser("admin", "pa55-word", created=False, show_password=True)
    banner = "\n".join(launcher._ready_banner(settings, admin, 42.0))
    assert "admin / pa55-word" in banner
    assert settings.credentials_file.stat().st_mode & 0o777 == 0o600

    bootstrap.mark_password_shown(settings.credentials_file)
    stored = bootstrap.read_credentials(settings.credentials_file)
    assert stored is not None and stored.shown and stored.password == "pa55-word"
    later = bootstrap.AdminUser("admin", "pa55-word", created=False, show_password=False)
    later_banner = "\n".join(launcher._ready_banner(settings, later, 42.0))
    assert "pa55-word" not in later_banner
    assert f"password in {settings.credentials_file}" in later_banner


def test_a_closed_output_never_stops_the_supervisor_from_stopping_its_children() -> None:
    """mlwp up's messages to a pipe that has gone are dropped; before, the BrokenPipeError of
    the "stopping ..." line ended the supervisor with its children still running."""
    said: list[str] = []

    def closed_pipe(message: str) -> None:
        said.append(message)
        raise BrokenPipeError(32, "Broken pipe")

    say = launcher.tolerant(closed_pipe)
    say("mlwp: stopping api-server ...")
    say("mlwp: killed after the stop timeout: scheduler")
    assert said == [
        "mlwp: stopping api-server ...",
        "mlwp: killed after the stop timeout: scheduler",
    ]
