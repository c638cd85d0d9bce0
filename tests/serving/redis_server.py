"""A private redis-server for fault tests: a free port, no persistence, stopped (or killed and
restarted on the same port) by the test. The shared Redis on 6379 is never touched."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import redis
from server_process import free_port, stop_process_group


class PrivateRedis:
    """``redis-server`` on its own port; ``kill`` and ``start`` again keep the port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    message = f"could not start a private redis-server on port {self.port}"
                    if os.environ.get("MLWP_REQUIRE_SERVICES") == "1":
                        pytest.fail(f"{message} (MLWP_REQUIRE_SERVICES=1)", pytrace=False)
                    pytest.skip(message)
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing its clients' connections cleanly."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
