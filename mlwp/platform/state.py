"""The running platform's state file and lock under ``MLWP_HOME``.

``mlwp up`` holds an exclusive ``flock`` on ``supervisor.lock`` for as long as it runs and
records its pid, its children and their URLs in ``platform.json``, so ``mlwp status`` and
``mlwp down`` work from another terminal. The lock (not the pid file) decides whether a
supervisor is running: the kernel releases it when the supervisor dies, however it dies.
"""

from __future__ import annotations

import fcntl
import os
from datetime import datetime
from pathlib import Path
from typing import IO, Literal

import orjson
import psutil
from pydantic import BaseModel, ValidationError

from mlwp.errors import PlatformError
from mlwp.platform.secrets import write_private

LOCK_NAME = "supervisor.lock"


class AlreadyRunning(PlatformError):
    """Another ``mlwp up`` is running with the same home."""

    code = "already_running"


class ProcessState(BaseModel):
    name: str
    pid: int
    create_time: float
    log: str
    url: str | None = None


class PlatformState(BaseModel):
    """What ``mlwp up`` writes about itself for other terminals."""

    supervisor_pid: int
    supervisor_create_time: float
    started_at: datetime
    status: Literal["starting", "ready", "stopping"]
    home: str
    urls: dict[str, str]
    ports: dict[str, int]
    processes: list[ProcessState]


def read_state(path: Path) -> PlatformState | None:
    """Return the recorded state, or None when there is none; a damaged file is an error."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return PlatformState.model_validate(orjson.loads(data))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise PlatformError(f"{path}: not a valid mlwp state file ({exc}); remove it") from exc


def write_state(path: Path, state: PlatformState) -> None:
    write_private(path, orjson.dumps(state.model_dump(mode="json"), option=orjson.OPT_INDENT_2))


def remove_state(path: Path) -> None:
    path.unlink(missing_ok=True)


def process_matches(pid: int, create_time: float) -> bool:
    """True when ``pid`` is alive and is the process that started at ``create_time``."""
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and abs(proc.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


class SupervisorLock:
    """An exclusive, non-blocking ``flock`` on ``<home>/supervisor.lock``."""

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_NAME
        self._handle: IO[bytes] | None = None

    def held_by_other(self) -> bool:
        """True when another process holds the lock; never creates anything."""
        if not self.path.exists():
            return False
        with self.path.open("rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False

    def acquire(self) -> None:
        """Take the lock or raise :class:`AlreadyRunning`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        handle = os.fdopen(fd, "r+b")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AlreadyRunning(already_running_message(self.path.parent)) from None
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def already_running_message(home: Path) -> str:
    try:
        state = read_state(home / "platform.json")
    except PlatformError:
        state = None
    pid = f" (supervisor pid {state.supervisor_pid})" if state else ""
    return (
        f"mlwp is already running with home {home}{pid}; see `mlwp status`, "
        "or stop it with `mlwp down`"
    )
