"""Serving benchmark: mlwp against mlflow models serve, MLServer and a bare FastAPI floor.

All serve the same registered churn model (trained on the telco data), one worker each, on
loopback. MLServer (with its XGBoost runtime, the engine behind KServe's and Seldon's
XGBoost servers) serves the same booster file and is sent the already-encoded feature
vectors through the V2 inference protocol, so it does less work than mlwp: once with its
default settings (inference in a separate worker process) and once with inference in the
server process (``parallel_workers: 0``). It pins libraries (FastAPI among them) below the
project's lock, so the benchmark installs it with uv into an environment of its own,
``.bench/mlserver`` (``--no-mlserver`` leaves it out). When granian is importable, the mlwp
service also runs under granian (``mlwp-granian``) beside uvicorn; ``mlwp-capture-0`` is the
service capturing no request (``mlwp`` runs as shipped, capture at 100 %), and with ``--asgi``
``mlwp-capture-0-asgi`` is that one with the prediction routes through the ASGI app instead of
mlwp's protocol (``MLWP_SERVING_FAST_PREDICT=false``); with ``--xgboost-trees``
``mlwp-capture-0-xgboost`` is that one with its trees scored by XGBoost's predictor instead of
the trees compiled to C (``MLWP_SERVING_NATIVE_TREES=false``). The same closed-loop
load (N client threads, keep-alive connections, bounded by time and count) runs at
concurrency 1 and 8 with 1-row and 100-row bodies; the table prints req/s, p50, p99, CPU
microseconds per request and the ratios, and a line per cell gives mlwp's ratio to every
peer. A last run measures cache hits (mlwp with Redis, the same body repeated). A capture
section runs mlwp servers side by side, capturing 0 % and 100 % of requests and a second
0 % one as the A/A control (issue #14): CPU per request and the share of it spent by the
capture writer's thread, the ratio, the event loop's thread as Linux counts it (user and
system time, page faults, waits and preemptions per request: where its extra goes), the
rows the 100 % server wrote against those it answered, and the rows it dropped, by reason
(goal: at most 5 % more CPU, nothing dropped). Servers measured one after another differ
by up to 15 % on a shared virtual machine even when they differ in nothing (the A/A
control), so the section then drives every server at once for ``--capture-rounds`` rounds
and gives each ratio to the 0 % server, paired round by round, with its 95 % confidence
interval: that resolves a few percent.

The load comes from wrk (Debian package ``wrk``, driven by ``load.lua``) when it is
installed: a C event loop costs the two cores far less than Python client threads, which
otherwise take CPU from the servers being measured. ``--driver python`` forces the threads.

    .venv/bin/python bench/serving/run.py [--mlflow-url URL] [--seconds 8] [--redis-url URL]
    .venv/bin/python bench/serving/run.py --no-capture --no-cache --seconds 3 --repeats 3
    .venv/bin/python bench/serving/run.py --capture-only --seconds 3 --repeats 3
    .venv/bin/python bench/serving/run.py --no-capture --no-cache --no-mlserver --rows 100 \
        --xgboost-trees
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


telco = _load("telco", REPO / "tests" / "serving" / "telco.py")
# the tests' way to run an MLflow server, find a port, wait for HTTP and stop a process group
processes = _load("server_process", REPO / "tests" / "server_process.py")


# a free port: the system's choice, or one of MLWP_TEST_PORTS (low-high) when set, for a
# machine whose users share out port ranges (the MLflow server it starts keeps to it too)
free_port = processes.free_port


def start(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env},
        cwd=cwd,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> None:
    """Wait until ``url`` answers; a server that dies or never answers raises with its log."""
    try:
        processes.wait_for_http(url, timeout=timeout, proc=proc)
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"{exc}\n{log.read_text()[-2000:]}") from None


def trees_attached(home: Path, proc: subprocess.Popen[bytes], timeout: float = 300) -> bool:
    """Wait until the server in ``home`` has built its C trees, and their check and attach
    are over. A version serves from its load with XGBoost and the Python trees while its
    C trees build in the background (under callgrind, for minutes); a warm-up that ends
    before they are attached leaves the C trees' trials against XGBoost (16 batches a side
    per band of batch sizes, ``mlwp.model.predictor._Chooser``) to the measurement, in one
    server and not another: in capture_instructions.py XGBoost's ~100k instructions per
    100-row request counted as capture's (x1.053 for x1.020, 2026-12-02)."""
    cache = home / "serving-models" / "native-trees"
    deadline = time.monotonic() + timeout
    while not list(cache.glob("trees-*.so")):
        if proc.poll() is not None:
            raise RuntimeError(f"the server of {home} ended while its C trees were built")
        if time.monotonic() > deadline:  # trees off, no compiler: XGBoost scores throughout
            print(f"  no C trees in {cache} after {timeout:g} s: measured as it is", flush=True)
            return False
        time.sleep(0.5)
    time.sleep(5)  # renamed into place, then loaded and checked (under callgrind, slowly)
    return True


def cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    """CPU time (user + system) of a server and its children so far. Unlike req/s it does
    not move with the CPU time other tenants steal from this machine."""
    import psutil

    root = psutil.Process(proc.pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def cpu_outside_loop(proc: subprocess.Popen[bytes]) -> float:
    """CPU time of a server's threads other than its main one (the event loop's): in the
    capture section, the capture writer's, which shows what it costs apart from what the
    request path pays (the append, the garbage collector's passes)."""
    import psutil

    return sum(
        t.user_time + t.system_time for t in psutil.Process(proc.pid).threads() if t.id != proc.pid
    )


def loop_thread(proc: subprocess.Popen[bytes]) -> dict[str, float]:
    """The event loop's thread (a server's main one) as Linux counts it: user and system CPU
    seconds, minor page faults, context switches it gave up (waiting: the interpreter lock,
    a read) or was forced into (preempted), and moves to another CPU (migrated: its cached
    data stays behind). Where its extra CPU in the capturing server goes: system time and
    faults are memory the kernel maps, voluntary switches the interpreter lock handed back
    and forth. Empty off Linux."""
    task = Path(f"/proc/{proc.pid}/task/{proc.pid}")
    try:
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        status = (task / "status").read_text().splitlines()
    except OSError:
        return {}
    try:
        sched = (task / "sched").read_text().splitlines()
        moved = next(float(line.split(":")[1]) for line in sched if "nr_migrations" in line)
    except (OSError, StopIteration, ValueError):
        moved = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    switches = {
        line.split(":")[0]: float(line.split()[1]) for line in status if "ctxt_switches" in line
    }
    # fields after the name: state is [0], minflt [7], utime [11], stime [12]
    return {
        "user": int(fields[11]) / ticks,
        "system": int(fields[12]) / ticks,
        "faults": float(fields[7]),
        "waits": switches.get("voluntary_ctxt_switches", 0.0),
        "preempted": switches.get("nonvoluntary_ctxt_switches", 0.0),
        "migrated": moved,
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each measure's median over the runs (errors: the total). A stall of the host in one
    run (CPU steal, a Redis call hitting its 50 ms timeout) moves that run's p99 by tens of
    milliseconds and should not stand for the server."""
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    median["errors"] = sum(run["errors"] for run in runs)
    median["p99_ms_runs"] = [run["p99_ms"] for run in runs]
    return median


# uvloop 0.22 refuses asyncio.get_event_loop() without a loop, which MLServer 1.7.1's inference
# worker calls at start: its default setting (a worker process) fails to load any model.
MLSERVER = ("mlserver==1.7.1", "mlserver-xgboost==1.7.1", "uvloop<0.22")


def mlserver_environment(root: Path) -> Path | None:
    """The ``mlserver`` command of an environment of its own (MLServer pins FastAPI and other
    libraries below the project's lock), with the project's XGBoost so that it loads the
    same booster the same way. Installed with uv once; None (MLServer left out) without uv."""
    import xgboost

    wanted = " ".join([*MLSERVER, f"xgboost=={xgboost.__version__}"])
    marker = root / "installed.txt"
    command = root / "bin" / "mlserver"
    if marker.exists() and marker.read_text() == wanted and command.exists():
        return command
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path.home() / ".local" / "bin"))
    if uv is None:
        print("MLServer left out: uv not found to install it under .bench/", flush=True)
        return None
    print(f"installing {wanted} into {root} ...", flush=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([uv, "venv", "-q", "--clear", "--python", version, str(root)], check=True)
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(root / "bin" / "python"), *wanted.split()],
        check=True,
    )
    marker.write_text(wanted)
    return command


def start_mlserver(
    command: Path, root: Path, model_dir: Path, parallel_workers: int | None
) -> tuple[int, subprocess.Popen[bytes]]:
    """MLServer serving the model's booster file as model ``churn`` with its XGBoost
    runtime; its settings are the defaults but for the ports (and ``parallel_workers``
    when given: 0 runs inference in the server process)."""
    from mlwp import model as mlwp_model

    (root / "churn").mkdir(parents=True)
    booster = root / "churn" / "model.ubj"
    shutil.copyfile(model_dir / mlwp_model.MODEL_FILE, booster)
    (root / "churn" / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "churn",
                "implementation": "mlserver_xgboost.XGBoostModel",
                "parameters": {"uri": str(booster)},
            }
        )
    )
    port = free_port()
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
    }
    if parallel_workers is not None:
        settings["parallel_workers"] = parallel_workers
    (root / "settings.json").write_text(json.dumps(settings))
    clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    proc = subprocess.Popen(
        [str(command), "start", str(root)],
        env={**clean, "PATH": f"{command.parent}{os.pathsep}{clean.get('PATH', '')}"},
        cwd=root,
        stdout=(root.parent / f"{root.name}.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return port, proc


def v2_body(matrix: Any) -> bytes:
    """A V2 inference request carrying an encoded feature matrix (float32)."""
    rows, columns = matrix.shape
    tensor = {
        "name": "input-0",
        "shape": [rows, columns],
        "datatype": "FP32",
        "data": matrix.ravel().tolist(),
    }
    return json.dumps({"inputs": [tensor]}).encode()


def granian_available() -> bool:
    return importlib.util.find_spec("granian") is not None


def granian_command(port: int) -> list[str]:
    """The mlwp service under granian (ASGI, one worker), as ``python -m serving`` runs it
    under uvicorn."""
    return [
        str(BIN / "granian"),
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
        "--no-ws",
        "serving.main:app",
    ]


def answered(
    port: int, path: str, body: bytes, headers: dict[str, str], server: str, log: Path
) -> None:
    """Wait until a server answers a prediction with 200 (a model may still be loading)."""
    deadline = time.monotonic() + 120
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(
                "POST", path, body=body, headers={"Content-Type": "application/json", **headers}
            )
            response = conn.getresponse()
            last = f"{response.status} {response.read()[:300]!r}"
            if response.status == 200:
                return
        except OSError as exc:
            last = repr(exc)
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server}: {last}\n{log.read_text()[-2000:]}")
        time.sleep(0.5)


def drive_threads(
    port: int,
    path: str,
    bodies: list[bytes],
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    max_requests: int,
) -> dict[str, float]:
    """Closed-loop load: ``concurrency`` threads, each with one keep-alive connection."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    count = [0]

    def worker(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        i = offset
        while time.perf_counter() < stop_at:
            with lock:
                if count[0] >= max_requests:
                    break
                count[0] += 1
            body = bodies[i % len(bodies)]
            i += concurrency
            started = time.perf_counter()
            conn.request(
                "POST", path, body=body, headers={"Content-Type": "application/json", **headers}
            )
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - started)
            if response.status != 200:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    # warm-up
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors[0],
        "rps": n / elapsed if elapsed else 0.0,
        "p50_ms": statistics.median(latencies) * 1000 if n else float("nan"),
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else float("nan"),
    }


def drive_wrk(
    port: int,
    path: str,
    bodies: list[bytes],
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    max_requests: int,  # unused: wrk is bounded by time only
) -> dict[str, float]:
    """The same closed loop from wrk: ``concurrency`` keep-alive connections, one thread."""
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as handle:
        handle.write(b"\n".join(bodies) + b"\n")
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "30s",
                "-s",
                str(Path(__file__).with_name("load.lua")),
                f"http://127.0.0.1:{port}",
                "--",
                path,
                handle.name,
                headers.get("Authorization", ""),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    summary = json.loads(out.strip().splitlines()[-1])
    n = summary["requests"]
    return {
        "requests": n,
        "errors": summary["errors"],
        "rps": n / (summary["duration_us"] / 1e6),
        "p50_ms": summary["p50_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlflow-url", help="reuse a running MLflow server")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved runs per server; the median is shown"
    )
    parser.add_argument("--max-requests", type=int, default=50_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument(
        "--capture-only",
        action="store_true",
        help="only the capture section: mlwp capturing 0 %% against 100 %%",
    )
    parser.add_argument(
        "--no-mlserver", action="store_true", help="leave MLServer out (no install under .bench/)"
    )
    parser.add_argument(
        "--asgi",
        action="store_true",
        help="also run mlwp-capture-0 with the prediction routes through the ASGI app "
        "(MLWP_SERVING_FAST_PREDICT=false)",
    )
    parser.add_argument(
        "--xgboost-trees",
        action="store_true",
        help="also run mlwp-capture-0 with the trees scored by XGBoost's predictor "
        "(MLWP_SERVING_NATIVE_TREES=false) instead of compiled to C",
    )
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        choices=(1, 100),
        default=[1, 100],
        help="the main table's rows per request, one cell each per concurrency (default: 1 100)",
    )
    parser.add_argument("--no-cache", action="store_true", help="skip the cache-hit run")
    parser.add_argument("--no-capture", action="store_true", help="skip the capture section")
    parser.add_argument(
        "--capture-rows",
        type=int,
        nargs="+",
        default=[1, 100],
        help="the capture section's rows per request, one cell each (default: 1 100)",
    )
    parser.add_argument(
        "--capture-tree",
        action="append",
        metavar="NAME=PATH",
        help="with --capture-only: also run a 100 %% server of the checkout at PATH (its code "
        "first on PYTHONPATH, this environment's packages), side by side as '100 %% NAME'; "
        "repeatable",
    )
    parser.add_argument(
        "--capture-rounds",
        type=int,
        default=20,
        help="capture section: rounds of every server driven at once (paired: what the "
        "host does in a round it does to all), giving each ratio a 95 %% confidence "
        "interval; 0 leaves them out (default: 20)",
    )
    parser.add_argument(
        "--capture-round-seconds",
        type=float,
        default=2.0,
        help="capture section: seconds of load per round (default: 2)",
    )
    parser.add_argument(
        "--capture-setting",
        action="append",
        metavar="NAME=VARIABLE=VALUE",
        help="with --capture-only: also run a 100 %% server of this tree with a serving "
        "setting, side by side as '100 %% NAME' (e.g. lz4=MLWP_SERVING_CAPTURE_SPOOL_CODEC="
        "lz4_raw); repeatable, one setting each",
    )
    parser.add_argument(
        "--no-capture-control",
        action="store_true",
        help="capture section: leave out the second 0 %% server (the A/A control whose ratio "
        "to the first shows what the run can resolve)",
    )
    parser.add_argument(
        "--driver",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk when installed (auto), or Python threads",
    )
    args = parser.parse_args()
    use_wrk = args.driver == "wrk" or (args.driver == "auto" and shutil.which("wrk"))
    drive = drive_wrk if use_wrk else drive_threads
    print(f"load generator: {'wrk' if use_wrk else 'Python threads'}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="mlwp-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    with ExitStack() as stack:
        stack.callback(lambda: [processes.stop_process_group(p) for p in procs])
        mlflow_url = args.mlflow_url
        if not mlflow_url:
            print("starting MLflow ...", flush=True)
            mlflow_url, _ = stack.enter_context(processes.run_mlflow_server(work / "mlflow"))
        name = f"churn-bench-{int(time.time())}"
        print("training and registering the churn model ...", flush=True)
        model_dir = telco.train_model_dir(work / "model", rounds=100, max_depth=5)
        version = telco.register_version(mlflow_url, name, model_dir, aliases=("champion",))

        if args.capture_only:
            capture = capture_section(args, drive, work, mlflow_url, name, procs)
            if args.out:
                args.out.write_text(json.dumps({"capture": capture}, indent=2))
            return
        # mlflow models serve
        mlflow_port = free_port()
        proc = start(
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{name}/{version}",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(mlflow_port),
                "-w",
                "1",
            ],
            {"MLFLOW_TRACKING_URI": mlflow_url},
            work / "mlflow.log",
        )
        procs.append(proc)
        # the mlwp service
        from serving.keys.store import KeyStore, migrate

        home = work / "home"
        db = f"sqlite:///{home / 'serving.db'}"
        migrate(db)
        store = KeyStore(db)
        _, token = store.create("bench", [f"model:{name}"], rate_limit="1000000/second")
        store.close()
        mlwp_env = {
            "MLWP_SERVING_HOME": str(home),
            "MLWP_SERVING_MLFLOW_TRACKING_URI": mlflow_url,
            "MLWP_SERVING_MODELS": json.dumps([name]),
            "MLWP_SERVING_POLL_INTERVAL_SECONDS": "30",
            "MLWP_SERVING_LOG_LEVEL": "WARNING",
        }
        mlwp_port = free_port()
        options = ["--host", "127.0.0.1", "--workers", "1", "--no-access-log"]
        options += ["--log-level", "warning"]
        uvicorn = [str(BIN / "uvicorn"), *options]
        serving = [sys.executable, "-m", "serving", *options]  # uvicorn with mlwp's protocol
        proc = start([*serving, "--port", str(mlwp_port)], mlwp_env, work / "mlwp.log")
        procs.append(proc)
        floor_port = free_port()
        floor = start(
            [
                *uvicorn,
                "floor_app:app",
                "--app-dir",
                str(REPO / "bench" / "serving"),
                "--port",
                str(floor_port),
            ],
            {"MLWP_BENCH_MODEL_DIR": str(model_dir)},
            work / "floor.log",
        )
        procs.append(floor)
        servers = {"mlflow": procs[-3], "mlwp": procs[-2], "floor": floor}
        waits = {
            "mlflow": f"http://127.0.0.1:{mlflow_port}/health",
            "mlwp": f"http://127.0.0.1:{mlwp_port}/health/ready",
            "floor": f"http://127.0.0.1:{floor_port}/docs",
        }
        pool = telco.sample_records(1000)
        auth = {"Authorization": f"Bearer {token}"}
        targets = {
            "mlflow": (mlflow_port, "/invocations", "mlflow", {}),
            "mlwp": (mlwp_port, f"/v1/models/{name}/predict", "mlwp", auth),
            "floor": (floor_port, "/predict", "mlwp", {}),
        }
        # the same service capturing nothing: what capture (100 % by default) costs in
        # each cell, beside the peers (its own home, the same key database); with --asgi
        # again with the prediction routes through the ASGI app (no fast path), with
        # --xgboost-trees with XGBoost's predictor instead of the trees compiled to C
        variants = {"mlwp-capture-0": {}}
        if args.asgi:
            variants["mlwp-capture-0-asgi"] = {"MLWP_SERVING_FAST_PREDICT": "false"}
        if args.xgboost_trees:
            variants["mlwp-capture-0-xgboost"] = {"MLWP_SERVING_NATIVE_TREES": "false"}
        for label, env in variants.items():
            port = free_port()
            proc = start(
                [*serving, "--port", str(port)],
                {
                    **mlwp_env,
                    "MLWP_SERVING_HOME": str(work / label.replace("mlwp-", "home-")),
                    "MLWP_SERVING_DATABASE_URL": db,
                    "MLWP_SERVING_CAPTURE_PERCENT": "0",
                    **env,
                },
                work / f"{label}.log",
            )
            procs.append(proc)
            servers[label] = proc
            waits[label] = f"http://127.0.0.1:{port}/health/ready"
            targets[label] = (port, f"/v1/models/{name}/predict", "mlwp", auth)
        if granian_available():
            port = free_port()
            # its own home (captured rows apart), the same key database
            granian_env = {
                **mlwp_env,
                "MLWP_SERVING_HOME": str(work / "home-granian"),
                "MLWP_SERVING_DATABASE_URL": db,
            }
            proc = start(granian_command(port), granian_env, work / "mlwp-granian.log")
            procs.append(proc)
            servers["mlwp-granian"] = proc
            waits["mlwp-granian"] = f"http://127.0.0.1:{port}/health/ready"
            targets["mlwp-granian"] = (port, f"/v1/models/{name}/predict", "mlwp", auth)
        mlserver = None if args.no_mlserver else mlserver_environment(REPO / ".bench" / "mlserver")
        if mlserver is not None:
            for label, workers in (("mlserver", None), ("mlserver-inproc", 0)):
                port, proc = start_mlserver(mlserver, work / label, model_dir, workers)
                procs.append(proc)
                servers[label] = proc
                waits[label] = f"http://127.0.0.1:{port}/v2/models/churn/ready"
                targets[label] = (port, "/v2/models/churn/infer", "v2", {})
        print(f"waiting for {', '.join(servers)} ...", flush=True)
        for server, url in waits.items():
            wait(url, servers[server], work / f"{server}.log")

        from mlwp import model as mlwp_model

        features = mlwp_model.load(model_dir).transform(pool).astype("float32")
        windows = {rows: range(0, 1000 - rows + 1, max(1, rows // 4)) for rows in (1, 100)}
        bodies = {
            rows: {
                "mlflow": [
                    json.dumps({"dataframe_records": pool[i : i + rows]}).encode()
                    for i in windows[rows]
                ][:200],
                "mlwp": [json.dumps({"data": pool[i : i + rows]}).encode() for i in windows[rows]][
                    :200
                ],
                "v2": [v2_body(features[i : i + rows]) for i in windows[rows]][:200],
            }
            for rows in (1, 100)
        }
        for server, (port, path, kind, headers) in targets.items():
            answered(port, path, bodies[1][kind][0], headers, server, work / f"{server}.log")
        results: list[dict[str, Any]] = []
        for rows in args.rows:
            for concurrency in (1, 8):
                row: dict[str, Any] = {"rows": rows, "concurrency": concurrency}
                runs: dict[str, list[dict[str, float]]] = {server: [] for server in targets}
                for port, path, kind, headers in targets.values():
                    drive(port, path, bodies[rows][kind][:20], headers, concurrency, 1.0, 2000)
                # Interleaved repeats: a burst of steal time or a neighbour's load hits one
                # run of one server, and the median run leaves it out.
                for _ in range(args.repeats):
                    for server, (port, path, kind, headers) in targets.items():
                        before = cpu_seconds(servers[server])
                        result = drive(
                            port,
                            path,
                            bodies[rows][kind],
                            headers,
                            concurrency,
                            args.seconds,
                            args.max_requests,
                        )
                        used = cpu_seconds(servers[server]) - before
                        result["cpu_us"] = used / max(1, result["requests"]) * 1e6
                        runs[server].append(result)
                for server, measured in runs.items():
                    row[server] = median_run(measured)
                results.append(row)
                _print_row(row)

        cache = None
        reachable = False
        if not args.no_cache:
            try:
                import redis

                reachable = bool(
                    redis.Redis.from_url(args.redis_url, socket_connect_timeout=1).ping()
                )
            except Exception as exc:  # the cache run is optional
                print(f"cache run skipped: Redis unreachable at {args.redis_url} ({exc})")
        if reachable:
            cache_port = free_port()
            proc = start(
                [*serving, "--port", str(cache_port)],
                {**mlwp_env, "MLWP_SERVING_REDIS_URL": args.redis_url},
                work / "mlwp-cache.log",
            )
            procs.append(proc)
            wait(f"http://127.0.0.1:{cache_port}/health/ready", proc, work / "mlwp-cache.log")
            body = [bodies[1]["mlwp"][0]]
            drive(cache_port, f"/v1/models/{name}/predict", body, auth, 8, 1.0, 2000)
            cache_runs = []
            for _ in range(args.repeats):
                before = cpu_seconds(proc)
                result = drive(
                    cache_port,
                    f"/v1/models/{name}/predict",
                    body,
                    auth,
                    8,
                    args.seconds,
                    args.max_requests,
                )
                result["cpu_us"] = (cpu_seconds(proc) - before) / max(1, result["requests"]) * 1e6
                cache_runs.append(result)
            cache = median_run(cache_runs)
            print(
                f"cache hits (1 row, c=8): {cache['rps']:.0f} req/s, "
                f"p50 {cache['p50_ms']:.2f} ms, p99 {cache['p99_ms']:.2f} ms "
                f"(runs: {', '.join(f'{p:.2f}' for p in cache['p99_ms_runs'])}), "
                f"cpu {cache['cpu_us']:.0f} us/req, errors {cache['errors']}"
            )
        captured = None
        if not args.no_capture:
            captured = capture_section(args, drive, work, mlflow_url, name, procs)
        if args.out:
            args.out.write_text(
                json.dumps({"results": results, "cache_hits": cache, "capture": captured}, indent=2)
            )


def metric_samples(port: int, name: str) -> dict[str, float]:
    """A metric's samples on a server's /metrics, by their label text (``{...}`` or "")."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            metric, _, labels = series.partition("{")
            if metric == name:
                samples[labels and "{" + labels] = float(value)
    return samples


def metric_total(port: int, name: str) -> float:
    """The sum of a metric's samples on a server's /metrics (0 when absent)."""
    return sum(metric_samples(port, name).values())


def dropped_by_reason(port: int) -> dict[str, float]:
    """Captured rows dropped so far, by reason (buffer_full, write_failed)."""
    by_reason: dict[str, float] = {}
    for labels, value in metric_samples(port, "mlwp_serving_capture_dropped_total").items():
        reason = labels.split('reason="', 1)[1].split('"', 1)[0]
        by_reason[reason] = by_reason.get(reason, 0.0) + value
    return by_reason


CAPTURE_FLUSH_SECONDS = 1.0


def bench_key(home: Path, model: str) -> str:
    """A key for ``model`` (no rate limit to speak of) in a new service home's database."""
    from serving.keys.store import KeyStore, migrate

    db = f"sqlite:///{home / 'serving.db'}"
    migrate(db)
    store = KeyStore(db)
    _, token = store.create("bench", [f"model:{model}"], rate_limit="1000000/second")
    store.close()
    return str(token)


def serving_env(home: Path, mlflow_url: str, model: str) -> dict[str, str]:
    """The settings of an mlwp server of the capture benchmarks: its home, the registry,
    the one model, quiet logs."""
    return {
        "MLWP_SERVING_HOME": str(home),
        "MLWP_SERVING_MLFLOW_TRACKING_URI": mlflow_url,
        "MLWP_SERVING_MODELS": json.dumps([model]),
        "MLWP_SERVING_POLL_INTERVAL_SECONDS": "30",
        "MLWP_SERVING_LOG_LEVEL": "WARNING",
    }


def wait_written(port: int, timeout: float = 30.0, *, flush: float = CAPTURE_FLUSH_SECONDS) -> None:
    """Wait until a server holds no captured rows in memory (its writer flushed them). It
    first sleeps one and a half of the server's ``flush`` intervals (the writer flushes
    within one, then writes; 0: the caller slept), so a server is scraped once: a scrape
    costs the server CPU (milliseconds), and both servers of a pair should pay alike."""
    time.sleep(flush * 1.5)
    deadline = time.monotonic() + timeout
    while metric_total(port, "mlwp_serving_capture_buffered") > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"captured rows still buffered after {timeout} s")
        time.sleep(0.2)


def paired_rounds(
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]],
    tokens: dict[str, str],
    drive: Any,
    path: str,
    bodies: list[bytes],
    concurrency: int,
    args: Any,
    flush_seconds: float = CAPTURE_FLUSH_SECONDS,
) -> dict[str, dict[str, Any]]:
    """Every server driven at once (its own wrk), ``--capture-rounds`` times: each server's
    CPU per request over each round as a ratio to the first 0 % server's in the same round,
    and their geometric mean with a 95 % confidence interval (Student's t over the rounds'
    log ratios). Why: on a shared virtual machine a server's CPU per request moves by
    10-15 % from one second to the next (other tenants, the host's own work), so servers
    measured one after another differ by that much even when nothing else does (the A/A
    control of the runs above); driven together, a round's conditions are the same for all,
    and the paired ratios spread by 2-3 % at 100 rows (session 16). Each server then has a
    share of the two cores, not a core, so its CPU per request is higher than alone, for
    all alike; the rows dropped are checked by the runs above, at full load."""
    ratios: dict[str, list[float]] = {label: [] for label in servers}
    base = next(iter(servers))  # the first 0 % server
    for _ in range(args.capture_rounds):
        before = {label: cpu_seconds(proc) for label, (_, proc) in servers.items()}
        with ThreadPoolExecutor(len(servers)) as pool:
            futures = {
                label: pool.submit(
                    drive,
                    port,
                    path,
                    bodies,
                    {"Authorization": f"Bearer {tokens[label]}"},
                    concurrency,
                    args.capture_round_seconds,
                    10**9,
                )
                for label, (port, _) in servers.items()
            }
        results = {label: future.result() for label, future in futures.items()}
        # once for all, the longest flush interval among them: each pays the same idle
        # time, and each is scraped once (wait_written polls a server still buffering,
        # and each scrape costs it CPU: a server with a longer interval, polled until it
        # flushed, paid for a dozen scrapes a round)
        time.sleep(flush_seconds * 1.5)
        for port, _ in servers.values():
            wait_written(port, flush=0)
        per_request = {
            label: (cpu_seconds(proc) - before[label]) / max(1, results[label]["requests"])
            for label, (_, proc) in servers.items()
        }
        for label in servers:
            ratios[label].append(per_request[label] / per_request[base])
    print(
        f"  together ({args.capture_rounds} rounds of {args.capture_round_seconds:g} s, every "
        "server at once; cpu per request against the 0 % server's in the same round, "
        "geometric mean and 95 % CI):"
    )
    together = compare_rounds(ratios)
    for name, summary in together.items():
        against = "" if " / " in name else " / 0 %"
        print(
            f"    {name}{against}: x{summary['ratio']:.3f} "
            f"(95 % CI {summary['low']:.3f}-{summary['high']:.3f})",
            flush=True,
        )
    return together


def compare_rounds(ratios: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Paired rounds' ratios summarised: ``ratios`` holds each server's CPU per request over
    each round as a ratio to the first server's (a 0 % one, whose own list is all ones) in
    the same round. Each summary is the geometric mean with a 95 % confidence interval
    (Student's t over the log ratios) and the rounds themselves (so that runs can be pooled
    later), for each server against the first; for a candidate (``100 % NAME``: a
    ``--capture-tree`` or ``--capture-setting``) against this tree's ``100 %`` server,
    round by round (the 0 % server's noise cancels, so the difference between the two shows
    at a resolution their ratios to 0 % apart do not give); and, when the A/A control ran
    (``0 % again``), for each capturing server against both 0 % servers (the geometric mean
    of the two: the 0 % cost measured twice, so one 0 % server's own noise in a run, the
    control's ratio to it x0.95-x1.05, moves the ratios less)."""
    import math

    from scipy import stats

    def summary(values: list[float]) -> dict[str, Any]:
        logs = [math.log(value) for value in values]
        mean = statistics.fmean(logs)
        half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
        return {
            "ratio": math.exp(mean),
            "low": math.exp(mean - half),
            "high": math.exp(mean + half),
            "rounds": values,
        }

    others = list(ratios)[1:]  # the first is the 0 % server the ratios are to
    together = {label: summary(ratios[label]) for label in others}
    landed, control = "100 %", "0 % again"
    for label in others:
        if label.startswith(f"{landed} ") and landed in ratios:
            paired = [a / b for a, b in zip(ratios[label], ratios[landed], strict=True)]
            together[f"{label} / {landed}"] = summary(paired)
    if control in ratios:
        for label in others:
            if label.startswith(landed):
                both = [
                    a / math.sqrt(c) for a, c in zip(ratios[label], ratios[control], strict=True)
                ]
                together[f"{label} / both 0 %"] = summary(both)
    return together


def capture_section(
    args: Any,
    drive: Any,
    work: Path,
    mlflow_url: str,
    name: str,
    procs: list[subprocess.Popen[bytes]],
) -> list[dict[str, Any]]:
    """mlwp capturing 0 % and 100 % of requests, side by side, interleaved runs (each
    server first in turn), with a second 0 % server as the A/A control: its ratio to the
    first is what the run can resolve. A run's
    CPU is read once the 100 % server has written what it captured, so the writer's work
    counts (flushed every second here, so the wait is short); "of which writer" is the CPU
    of the threads other than the event loop's. Each cell also checks that
    every answered row was captured: rows written against rows answered, and the rows
    dropped, by reason."""
    print("\ncapture: starting mlwp at 0 % and 100 % ...", flush=True)
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    tokens: dict[str, str] = {}  # each server's key lives in its own home
    # the 0 % and 100 % servers of this tree, a second 0 % one (the A/A control: two
    # servers that differ in nothing measured 0.78-1.12x apart in one run, 2026-11-30, so a
    # ratio means something only beside the control's), then a 100 % server of each
    # --capture-tree
    trees: list[tuple[str, int, Path | None, dict[str, str]]] = [
        ("0 %", 0, None, {}),
        ("100 %", 100, None, {}),
    ]
    if not args.no_capture_control:
        trees.append(("0 % again", 0, None, {}))
    for spec in args.capture_tree or []:
        tree_name, _, tree_path = spec.partition("=")
        trees.append((f"100 % {tree_name}", 100, Path(tree_path).resolve(), {}))
    for spec in args.capture_setting or []:  # --capture-setting NAME=VARIABLE=VALUE
        setting_name, _, setting = spec.partition("=")
        variable, _, value = setting.partition("=")
        trees.append((f"100 % {setting_name}", 100, None, {variable: value}))
    flushes: dict[str, float] = {}  # each server's capture flush interval
    native_trees: dict[str, bool] = {}  # whether each server builds the trees compiled to C
    for label, percent, tree, setting_env in trees:
        slug = label.replace(" % ", "-").replace(" %", "")
        home = work / f"capture-{slug}"
        token = bench_key(home, name)
        port = free_port()
        env = {
            **serving_env(home, mlflow_url, name),
            "MLWP_SERVING_STORAGE_ROOT": (work / f"capture-storage-{slug}").as_uri(),
            "MLWP_SERVING_CAPTURE_PERCENT": str(percent),
            "MLWP_SERVING_CAPTURE_FLUSH_SECONDS": str(CAPTURE_FLUSH_SECONDS),
            # no registry polling: a poll (an HTTP round trip to MLflow, milliseconds of
            # CPU) fell into one server's round and not another's, noise in the ratios
            "MLWP_SERVING_POLL_INTERVAL_SECONDS": "0",
            **setting_env,
        }
        flushes[label] = float(env["MLWP_SERVING_CAPTURE_FLUSH_SECONDS"])
        native = env.get("MLWP_SERVING_NATIVE_TREES", "true").lower() not in {"0", "false"}
        native_trees[label] = native
        options = ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        options += ["--no-access-log", "--log-level", "warning"]
        if tree is not None:  # its code first on the path (and its folder the working one)
            env["PYTHONPATH"] = os.pathsep.join(
                [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]
            )
        log = work / f"mlwp-capture-{slug}.log"
        proc = start([sys.executable, "-m", "serving", *options], env, log, tree or REPO)
        procs.append(proc)
        servers[label] = (port, proc)
        tokens[label] = token
    for label, (port, proc) in servers.items():
        slug = label.replace(" % ", "-").replace(" %", "")
        wait(f"http://127.0.0.1:{port}/health/ready", proc, work / f"mlwp-capture-{slug}.log")
        if native_trees[label]:
            trees_attached(work / f"capture-{slug}", proc)
    pool = telco.sample_records(1000)
    path = f"/v1/models/{name}/predict"
    rows_out: list[dict[str, Any]] = []
    percents = {label: percent for label, percent, _, _ in trees}
    capturing = [label for label in servers if percents[label] > 0]
    compared = [label for label in servers if label != "0 %"]  # capturing, and the control
    concurrency = 8
    for rows in args.capture_rows:
        bodies = [
            json.dumps({"data": pool[i : i + rows]}).encode()
            for i in range(0, 1000 - rows + 1, max(1, rows // 4))
        ][:200]
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in servers}
        for label, (port, _) in servers.items():
            auth = {"Authorization": f"Bearer {tokens[label]}"}
            drive(port, path, bodies[:20], auth, concurrency, 1.0, 2000)
            wait_written(port, flush=flushes[label])
        written_before, dropped_before = {}, {}
        for label in capturing:
            port = servers[label][0]
            written_before[label] = metric_total(port, "mlwp_serving_capture_written_total")
            dropped_before[label] = dropped_by_reason(port)
        answered = dict.fromkeys(capturing, 0)
        order = list(servers.items())
        for repeat in range(args.repeats):
            # each server in turn first: no server always follows the same one
            shift = repeat % len(order)
            for label, (port, proc) in order[shift:] + order[:shift]:
                auth = {"Authorization": f"Bearer {tokens[label]}"}
                before, threads_before = cpu_seconds(proc), cpu_outside_loop(proc)
                loop_before = loop_thread(proc)
                result = drive(
                    port, path, bodies, auth, concurrency, args.seconds, args.max_requests
                )
                wait_written(port, flush=flushes[label])
                used = cpu_seconds(proc) - before
                result["cpu_us"] = used / max(1, result["requests"]) * 1e6
                threads = cpu_outside_loop(proc) - threads_before
                result["threads_us"] = threads / max(1, result["requests"]) * 1e6
                loop_after = loop_thread(proc)
                for measure, before_value in loop_before.items():
                    per = 1e6 if measure in ("user", "system") else 1.0
                    result[f"loop_{measure}"] = (
                        (loop_after[measure] - before_value) / max(1, result["requests"]) * per
                    )
                runs[label].append(result)
                if label in answered:
                    answered[label] += (result["requests"] - result["errors"]) * rows
        row: dict[str, Any] = {"rows": rows, "concurrency": concurrency}
        for label, measured in runs.items():
            row[label] = median_run(measured)
        for label in capturing:
            port = servers[label][0]
            dropped_after = dropped_by_reason(port)
            suffix = label.removeprefix("100 %")
            row[f"written{suffix}"] = (
                metric_total(port, "mlwp_serving_capture_written_total") - written_before[label]
            )
            row[f"answered_rows{suffix}"] = answered[label]
            row[f"dropped{suffix}"] = {
                reason: value - dropped_before[label].get(reason, 0.0)
                for reason, value in dropped_after.items()
            }
        rows_out.append(row)
        off = row["0 %"]
        print(f"\ncapture, {rows} row(s), concurrency {concurrency}")
        print(
            f"  {'capture':<14} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>11} "
            f"{'of which writer':>16}"
        )
        for label in servers:
            r = row[label]
            print(
                f"  {label:<14} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                f"{r['cpu_us']:>11.0f} {r['threads_us']:>16.0f}"
            )
        if "loop_user" in off:
            print(
                f"  {'loop thread':<14} {'user us':>8} {'sys us':>7} {'faults':>7} "
                f"{'waits':>6} {'preempted':>10} {'migrated':>9}   (per request)"
            )
            for label in servers:
                r = row[label]
                print(
                    f"  {label:<14} {r['loop_user']:>8.0f} {r['loop_system']:>7.0f} "
                    f"{r['loop_faults']:>7.1f} {r['loop_waits']:>6.2f} "
                    f"{r['loop_preempted']:>10.2f} {r['loop_migrated']:>9.2f}"
                )
        for label in compared:
            on, suffix = row[label], label.removeprefix("100 %")
            if label not in capturing:  # the control: its ratio is the run's noise
                print(
                    f"  {label} / 0 % (the A/A control, nothing captured): cpu per request "
                    f"x{on['cpu_us'] / off['cpu_us']:.3f}, req/s x{on['rps'] / off['rps']:.3f}",
                    flush=True,
                )
                continue
            dropped = ", ".join(f"{k} {v:.0f}" for k, v in row[f"dropped{suffix}"].items())
            print(
                f"  {label} / 0 %: cpu per request x{on['cpu_us'] / off['cpu_us']:.3f} "
                f"({(on['cpu_us'] / off['cpu_us'] - 1) * 100:+.1f} %, "
                f"{on['cpu_us'] - off['cpu_us']:+.0f} us), req/s x{on['rps'] / off['rps']:.3f}; "
                f"rows written {row[f'written{suffix}']:.0f} (answered in the measured runs: "
                f"{answered[label]}, a few more in flight), dropped: {dropped or 'none'}",
                flush=True,
            )
        if args.capture_rounds > 1:
            row["together"] = paired_rounds(
                servers, tokens, drive, path, bodies, concurrency, args, max(flushes.values())
            )
    for label in capturing:
        port = servers[label][0]
        written = metric_total(port, "mlwp_serving_capture_written_total")
        dropped_total = dropped_by_reason(port)
        print(
            f"  {label}: captured rows written {written:.0f}, dropped "
            f"{sum(dropped_total.values()):.0f} {dropped_total or ''}",
            flush=True,
        )
        suffix = label.removeprefix("100 %")
        rows_out.append(
            {f"written{suffix}": written, f"dropped{suffix}": sum(dropped_total.values())}
        )
    return rows_out


def _print_row(row: dict[str, Any]) -> None:
    """One cell: every server's numbers, with req/s and CPU per request as ratios to mlflow
    and to the floor, and a line of mlwp's ratios to every peer."""
    base, floor, mlwp = row["mlflow"], row["floor"], row["mlwp"]
    nan = float("nan")
    servers = [key for key in row if key not in ("rows", "concurrency")]
    print(f"\n{row['rows']} row(s), concurrency {row['concurrency']}")
    print(
        f"  {'server':<20} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'x mlflow':>9} "
        f"{'x floor':>8} {'cpu us/req':>11} {'cpu x mlflow':>13} {'errors':>7}"
    )
    for server in servers:
        r = row[server]
        print(
            f"  {server:<20} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['rps'] / (base['rps'] or nan):>9.1f} {r['rps'] / (floor['rps'] or nan):>8.2f} "
            f"{r['cpu_us']:>11.0f} {base['cpu_us'] / (r['cpu_us'] or nan):>13.1f} "
            f"{r['errors']:>7}",
            flush=True,
        )
    ratios = ", ".join(
        f"{server} x{mlwp['rps'] / (row[server]['rps'] or nan):.2f} "
        f"(cpu x{row[server]['cpu_us'] / (mlwp['cpu_us'] or nan):.2f})"
        for server in servers
        if server != "mlwp"
    )
    print(f"  mlwp req/s against each peer (and peer cpu / mlwp cpu): {ratios}", flush=True)


if __name__ == "__main__":
    main()
