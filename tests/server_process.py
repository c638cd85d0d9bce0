"""Processes of the tests, and the one way they run a real MLflow tracking server: SQLite
and local artifacts under ``root``, a free port, no job runner (MLflow 3 otherwise starts
seven huey consumers per server), stopped with its whole process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

MLFLOW = str(Path(sys.executable).parent / "mlflow")


@contextmanager
def run_mlflow_server(
    root: Path,
    *,
    port: int | None = None,
    app_name: str | None = None,
    env: Mapping[str, str] | None = None,
    artifacts_destination: str | None = None,
    timeout: float = 600,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start the server, wait for ``/health`` (up to ``timeout``: shared CI machines start it
    slowly), yield its URL and process, and stop it. A server that exits or never answers
    raises with the tail of its log. Artifacts are proxied by the server (clients use
    ``mlflow-artifacts:/``) to ``artifacts_destination``, a folder under ``root`` unless given
    (``s3://...`` with ``env`` pointing at a moto server)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    root.mkdir(parents=True, exist_ok=True)
    argv = [MLFLOW, "server"]
    if app_name:
        argv += ["--app-name", app_name]
    argv += [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination or (root / "artifacts").as_uri(),
    ]
    log = (root / "server.log").open("ab")
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    try:
        try:
            wait_for_http(f"{url}/health", timeout=timeout, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(
                f"mlflow server: {exc}\n" + (root / "server.log").read_text()[-4000:]
            ) from None
        yield url, proc
    finally:
        stop_process_group(proc)
        log.close()


@contextmanager
def run_prometheus(
    prometheus: str, root: Path, targets: list[str], interval: str = "500ms"
) -> Iterator[str]:
    """A real Prometheus server (the binary ``prometheus``) scraping ``targets``
    (``host:port``, path ``/metrics``) every ``interval``; yields its URL once ready."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "prometheus.yml"
    config.write_text(
        f"global: {{scrape_interval: {interval}, scrape_timeout: {interval}}}\n"
        "scrape_configs:\n"
        f"  - {{job_name: serving, static_configs: [{{targets: {targets!r}}}]}}\n"
    )
    argv = [
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    url = f"http://127.0.0.1:{port}"
    log = (root / "prometheus.log").open("ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_for_http(f"{url}/-/ready", timeout=60, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(
                f"prometheus: {exc}\n" + (root / "prometheus.log").read_text()[-4000:]
            ) from None
        yield url
    finally:
        stop_process_group(proc)
        log.close()


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Stop a process started with ``start_new_session=True`` and every child it made:
    SIGTERM the group, SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            os.killpg(proc.pid, 0)  # anything left in the group?
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue
    proc.wait()


def wait_for_http(
    url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``url`` until it answers below 500, the process dies, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code < 500:
                return
            last = response.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout}s (last: {last})")


def free_port() -> int:
    """A free local port: the system's choice, or one of ``MLWP_TEST_PORTS`` (``low-high``,
    inclusive) when set, for machines where jobs share a host and each keeps to its range.
    In a range, ports are handed out in turn from where the last call stopped, so a port
    handed out but not bound yet is not handed out again before the range wraps around."""
    span = os.environ.get("MLWP_TEST_PORTS", "").strip()
    if span:
        low, _, high = span.partition("-")
        ports = list(range(int(low), int(high or low) + 1))
        for i in range(len(ports)):
            port = ports[(_cursor[0] + i) % len(ports)]
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _cursor[0] = (_cursor[0] + i + 1) % len(ports)
            return port
        raise RuntimeError(f"no free port left in MLWP_TEST_PORTS={span}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_cursor = [0]  # where the next search of MLWP_TEST_PORTS starts
