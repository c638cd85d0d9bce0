"""Start, watch and stop a set of long-running child processes.

This module knows nothing about Airflow or MLflow: it runs :class:`ProcessSpec` objects, each
in its own session (so a signal to the process group reaches the process and everything it
forked), with its output appended to one log file per process. The platform's processes are
described in :mod:`mlwp.platform.processes`; the CLI wires the two together.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import psutil

from mlwp.errors import PlatformError

# A readiness probe returns None when the process is ready, or a short reason why not.
ReadinessProbe = Callable[[], str | None]

LOG_TAIL_LINES = 15


class ProcessDied(PlatformError):
    """A supervised process exited while it should have been running."""

    code = "process_died"

    def __init__(self, name: str, returncode: int, log: Path, tail: str, *, during: str) -> None:
        signal_name = _signal_name(returncode)
        how = f"was killed by {signal_name}" if signal_name else f"exited with code {returncode}"
        message = f"{name} {how} during {during} (log: {log})"
        super().__init__(message)
        self.name = name
        self.returncode = returncode
        self.log = log
        self.tail = tail


class StartTimeout(PlatformError):
    """Some processes did not become ready within the start timeout."""

    code = "start_timeout"


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one long-running process and how to tell that it is ready.

    ``stop_stage``: processes stop in ascending stage order, all of a stage together, so the
    ones that accept work stop before the ones that do the work, and storage stops last.
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: Path
    ready: ReadinessProbe | None = None
    stop_stage: int = 0
    url: str | None = None


@dataclass
class Child:
    """A started process: its spec, its handle and its log."""

    spec: ProcessSpec
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_handle: IO[bytes]
    create_time: float
    ready: bool = False
    last_reason: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class StopReport:
    """What happened to each process on stop, in the order they were stopped."""

    order: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)


def _signal_name(returncode: int) -> str | None:
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a log file (empty when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    """Run several processes as one unit: start all, wait for all, stop all.

    Every child gets its own session (``start_new_session``), so Ctrl-C in the terminal
    reaches only the supervisor, which then stops the children in stage order: SIGTERM to
    the process group, SIGKILL after ``stop_timeout`` seconds, and finally SIGKILL to any
    descendant that left the group.
    """

    def __init__(
        self,
        specs: Iterable[ProcessSpec],
        logs_dir: Path,
        *,
        stop_timeout: float = 20.0,
        poll_interval: float = 0.5,
    ) -> None:
        self.specs = list(specs)
        names = [spec.name for spec in self.specs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise PlatformError(f"process names must be unique; repeated: {', '.join(duplicates)}")
        self.logs_dir = logs_dir
        self.stop_timeout = stop_timeout
        self.poll_interval = poll_interval
        self.children: dict[str, Child] = {}

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def start(self, names: Iterable[str] | None = None) -> list[str]:
        """Start the named processes (all by default) not started yet; return their names."""
        wanted = None if names is None else set(names)
        if wanted is not None:
            unknown = wanted - {spec.name for spec in self.specs}
            if unknown:
                raise PlatformError(f"unknown processes: {', '.join(sorted(unknown))}")
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        started: list[str] = []
        for spec in self.specs:
            if spec.name in self.children or (wanted is not None and spec.name not in wanted):
                continue
            self.children[spec.name] = self._spawn(spec)
            started.append(spec.name)
        return started

    def _spawn(self, spec: ProcessSpec) -> Child:
        log_path = self.log_path(spec.name)
        handle = log_path.open("ab")
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        handle.write(f"\n===== {stamp} mlwp starts: {' '.join(spec.argv)}\n".encode())
        handle.flush()
        try:
            popen = subprocess.Popen(
                list(spec.argv),
                env=dict(spec.env),
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            handle.close()
            raise PlatformError(f"{spec.name} could not be started: {exc}") from exc
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = 0.0
        return Child(spec, popen, log_path, handle, create_time)

    def exited(self) -> Child | None:
        """Return a child that has exited, if any."""
        for child in self.children.values():
            if child.popen.poll() is not None:
                return child
        return None

    def died(self, child: Child, *, during: str) -> ProcessDied:
        """Build the error that says which process died, how, and what its log says last."""
        returncode = child.popen.returncode if child.popen.returncode is not None else -1
        child.log_handle.flush()
        return ProcessDied(
            child.name, returncode, child.log_path, tail(child.log_path), during=during
        )

    def wait_ready(
        self, timeout: float, stop_requested: Callable[[], bool] = lambda: False
    ) -> bool:
        """Wait until every child is ready; False when a stop was requested meanwhile.

        Raises :class:`ProcessDied` when a child exits and :class:`StartTimeout` when some
        are still not ready after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            if stop_requested():
                return False
            dead = self.exited()
            if dead is not None:
                raise self.died(dead, during="start")
            pending = [child for child in self.children.values() if not child.ready]
            for child in pending:
                probe = child.spec.ready
                reason = probe() if probe is not None else None
                child.ready = reason is None
                child.last_reason = reason
            if all(child.ready for child in self.children.values()):
                return True
            if time.monotonic() >= deadline:
                waiting = [
                    f"{child.name} ({child.last_reason}; log: {child.log_path})"
                    for child in self.children.values()
                    if not child.ready
                ]
                raise StartTimeout(f"not ready after {timeout:.0f}s: {', '.join(waiting)}")
            time.sleep(self.poll_interval)

    def watch(self, stop_requested: threading.Event) -> None:
        """Block until a stop is requested; raise :class:`ProcessDied` if a child exits first."""
        while not stop_requested.wait(self.poll_interval):
            dead = self.exited()
            if dead is not None:
                raise self.died(dead, during="operation")

    def stop(self) -> StopReport:
        """Stop every child in stage order and wait for each; never leaves one behind."""
        report = StopReport()
        stages = sorted({child.spec.stop_stage for child in self.children.values()})
        for stage in stages:
            group = [c for c in self.children.values() if c.spec.stop_stage == stage]
            report.order.extend(child.name for child in group)
            report.killed.extend(stop_processes(group, self.stop_timeout))
        for child in self.children.values():
            child.log_handle.close()
        return report


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        # The group is gone (or was never ours); the direct signal below covers the leader.
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return


def stop_processes(children: Sequence[Child], timeout: float) -> list[str]:
    """Terminate these children together, kill what is left after ``timeout`` seconds.

    Returns the names of the children that had to be killed.
    """
    live = [child for child in children if child.popen.poll() is None]
    # Tasks and workers may start their own sessions: remember them before the leader goes.
    descendants = {child.name: _descendants(child.pid) for child in live}
    for child in live:
        _signal_group(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in live:
        try:
            child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            continue
    killed: list[str] = []
    for child in live:
        if child.popen.poll() is None:
            killed.append(child.name)
            _signal_group(child.pid, signal.SIGKILL)
            child.popen.wait()
        else:
            # The leader is gone, but its group may not be.
            _signal_group(child.pid, signal.SIGKILL)
        leftovers = [proc for proc in descendants[child.name] if proc.is_running()]
        for proc in leftovers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(leftovers, timeout=5)
    return killed


def terminate_pids(pids: Mapping[str, tuple[int, float]], timeout: float) -> list[str]:
    """Stop processes recorded by another supervisor that is gone (``mlwp down`` clean-up).

    ``pids`` maps a name to ``(pid, create_time)``; a pid whose start time differs was reused
    by an unrelated process and is left alone. Returns the names that were still running.
    """
    found: dict[str, psutil.Process] = {}
    for name, (pid, create_time) in pids.items():
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - create_time) < 1.0:
                found[name] = proc
        except psutil.Error:
            continue
    groups = {name: [proc, *proc.children(recursive=True)] for name, proc in found.items()}
    for proc in found.values():
        _signal_group(proc.pid, signal.SIGTERM)
    everything = [proc for procs in groups.values() for proc in procs]
    _, alive = psutil.wait_procs(everything, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)
    return sorted(found)
