"""Capture's cost in instructions: mlwp capturing 0 % and 100 % of requests under callgrind.

The CPU time of two servers on a shared two-core machine cannot resolve 5 % (two servers
that differ in nothing measured up to 22 % apart, docs/history/capture.md "Session 12"); the
instructions they execute can. Each cell (rows per request) starts a 0 % and a 100 %
server under ``valgrind --tool=callgrind`` with instrumentation off, waits for their
trees compiled to C (``run.trees_attached``), warms both up (the warm-up ends with a capture
flush, so the window starts with an empty buffer), then counts every thread's
instructions (valgrind runs a process's threads one at a time) over a fixed number of
requests: instrumentation on, the requests (both servers driven at once, so the idle
loop's ticks cost both alike), a wait until the 100 % server's writer has stored at least
one part (a flush inside the window), a dump. The servers are
told to flush only when ``--batch-rows`` rows wait (no timed flush, no registry polling),
so the window's work is the same from one run to the next.

Printed per cell: instructions per request of each server (the event loop's thread, the
others: the capture writer's, and all), the ratio 100 % / 0 %, the rows written in the
window and the rows dropped, and the simulated last-level cache misses per request
(valgrind's model of this host's caches; ``--no-cache-sim`` leaves it out, a quarter
faster).
Instructions are not cycles: a cache miss or a stall costs no instruction, so this
bounds the work added, not the time.

    flock /tmp/mlwp-heavy.lock timeout 900 .venv/bin/python bench/serving/capture_instructions.py
    .venv/bin/python bench/serving/capture_instructions.py --cells 1:2000:1000 --no-cache-sim

A benchmark, never part of CI.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def parse_callgrind(text: str) -> tuple[int, dict[str, int]]:
    """A callgrind output file's thread number and its event totals (``Ir`` the
    instructions executed; with the cache simulation ``ILmr``, ``DLmr``, ``DLmw`` the
    last-level misses): the ``totals:`` line, or the header's ``summary:`` when absent."""
    events = re.search(r"^events:\s*(.+)$", text, re.MULTILINE)
    totals = re.search(r"^totals:\s*(.+)$", text, re.MULTILINE) or re.search(
        r"^summary:\s*(.+)$", text, re.MULTILINE
    )
    thread = re.search(r"^thread:\s*(\d+)$", text, re.MULTILINE)
    if events is None or totals is None:
        raise ValueError("not a callgrind output file: no events or totals line")
    names = events.group(1).split()
    values = [int(value) for value in totals.group(1).split()]
    # trailing events with no count are zero
    counts = dict.fromkeys(names, 0) | dict(zip(names, values, strict=False))
    return (int(thread.group(1)) if thread else 1), counts


def dumped(directory: Path, dump: int) -> dict[int, dict[str, int]]:
    """The event totals of dump number ``dump`` in ``directory``, by thread."""
    by_thread: dict[int, dict[str, int]] = {}
    for path in sorted(directory.glob(f"cg.out.{dump}-*")) + sorted(
        directory.glob(f"cg.out.{dump}")
    ):
        thread, counts = parse_callgrind(path.read_text(errors="replace"))
        by_thread[thread] = counts
    return by_thread


def parse_cell(spec: str) -> tuple[int, int, int, int]:
    """``ROWS:REQUESTS:WARMUP:BATCH`` (WARMUP and BATCH optional: a batch is the rows of
    1,000 requests up to 10,000 rows, the warm-up one batch's requests)."""
    parts = [int(part) for part in spec.split(":")]
    rows, requests = parts[0], parts[1]
    batch = parts[3] if len(parts) > 3 else min(10_000, rows * 1000)
    warmup = parts[2] if len(parts) > 2 else batch // rows
    if batch % rows or (warmup * rows) % batch:
        raise argparse.ArgumentTypeError(
            f"{spec}: the warm-up's rows must be whole batches (so the window starts empty)"
        )
    return rows, requests, warmup, batch


def parts_written(storage: Path) -> int:
    """Spool parts stored under a server's storage root (written under a dot-name, then
    renamed: only whole parts count). Read from the disk, so the server pays nothing."""
    return sum(1 for path in storage.rglob("*") if path.is_file() and not path.name.startswith("."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cells",
        nargs="+",
        type=parse_cell,
        default=[parse_cell("1:2500"), parse_cell("100:250")],
        metavar="ROWS:REQUESTS[:WARMUP[:BATCH]]",
        help="rows per request and requests in the window (default: 1:2500 100:250: two and a "
        "half batches, so that two flushes fall in it however the requests in flight fall)",
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--no-cache-sim",
        dest="cache_sim",
        action="store_false",
        help="no cache simulation (no last-level misses per request; it lengthens the "
        "windows by about a quarter)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a serving setting for both servers, e.g. MLWP_SERVING_CAPTURE_SPOOL_CODEC=lz4; "
        "repeatable",
    )
    parser.add_argument("--mlflow-url", help="reuse a running MLflow server")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args()
    valgrind = shutil.which("valgrind")
    control = shutil.which("callgrind_control")
    if valgrind is None or control is None:
        sys.exit(
            "valgrind (with callgrind_control) is not installed: this benchmark counts "
            "instructions under callgrind (Debian: apt-get install valgrind)"
        )

    run = _load("bench_serving_run", HERE / "run.py")
    work = Path(tempfile.mkdtemp(prefix="mlwp-instructions-"))
    print(f"work directory {work}", flush=True)
    procs: list[subprocess.Popen[bytes]] = []
    results: list[dict[str, Any]] = []
    with ExitStack() as stack:
        stack.callback(lambda: [run.processes.stop_process_group(p) for p in procs])
        mlflow_url = args.mlflow_url
        if not mlflow_url:
            print("starting MLflow ...", flush=True)
            mlflow_url, _ = stack.enter_context(run.processes.run_mlflow_server(work / "mlflow"))
        name = f"churn-instructions-{int(time.time())}"
        print("training and registering the churn model ...", flush=True)
        model_dir = run.telco.train_model_dir(work / "model", rounds=100, max_depth=5)
        run.telco.register_version(mlflow_url, name, model_dir, aliases=("champion",))
        pool = run.telco.sample_records(1000)
        path = f"/v1/models/{name}/predict"
        for rows, requests, warmup, batch in args.cells:
            bodies = [
                json.dumps({"data": pool[i : i + rows]}).encode()
                for i in range(0, 1000 - rows + 1, max(1, rows // 4))
            ][:200]
            servers: dict[str, dict[str, Any]] = {}
            for percent in (0, 100):
                slug = f"{rows}-rows-{percent}"
                home = work / slug
                token = run.bench_key(home, name)
                port = run.free_port()
                env = {
                    **run.serving_env(home, mlflow_url, name),
                    "MLWP_SERVING_POLL_INTERVAL_SECONDS": "0",
                    "MLWP_SERVING_STORAGE_ROOT": (home / "storage").as_uri(),
                    "MLWP_SERVING_CAPTURE_PERCENT": str(percent),
                    "MLWP_SERVING_CAPTURE_BATCH_ROWS": str(batch),
                    "MLWP_SERVING_CAPTURE_FLUSH_SECONDS": "3600",
                    **dict(setting.split("=", 1) for setting in args.setting),
                }
                command = [
                    valgrind,
                    "--tool=callgrind",
                    "--instr-atstart=no",
                    "--separate-threads=yes",
                    f"--cache-sim={'yes' if args.cache_sim else 'no'}",
                    f"--callgrind-out-file={home / 'cg.out'}",
                    sys.executable,
                    "-m",
                    "serving",
                    *["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                    *["--no-access-log", "--log-level", "warning"],
                ]
                log = work / f"{slug}.log"
                proc = run.start(command, env, log)
                procs.append(proc)
                auth = {"Authorization": f"Bearer {token}"}
                servers[f"{percent} %"] = {
                    "port": port,
                    "proc": proc,
                    "home": home,
                    "auth": auth,
                    "log": log,
                }
            print(f"\n{rows} row(s): starting both servers under callgrind ...", flush=True)
            for server in servers.values():
                run.wait(
                    f"http://127.0.0.1:{server['port']}/health/ready", server["proc"], server["log"]
                )
                run.answered(server["port"], path, bodies[0], server["auth"], "mlwp", server["log"])
            for server in servers.values():
                run.trees_attached(server["home"], server["proc"])
            print(f"  warming up ({warmup} requests each) ...", flush=True)
            both(run, servers, path, bodies, warmup - 1, args.concurrency)
            for server in servers.values():
                run.wait_written(server["port"], timeout=300)
                server["written"] = run.metric_total(
                    server["port"], "mlwp_serving_capture_written_total"
                )
                server["dropped"] = run.dropped_by_reason(server["port"])
                server["parts"] = parts_written(server["home"] / "storage")
            print(f"  measuring {requests} requests each ...", flush=True)
            began = time.monotonic()
            for server in servers.values():
                callgrind(control, server["proc"], "-i", "on")
            answered = both(run, servers, path, bodies, requests, args.concurrency)
            capturing = servers["100 %"]
            deadline = time.monotonic() + 300
            while parts_written(capturing["home"] / "storage") <= capturing["parts"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the 100 % server wrote no part in the window")
                time.sleep(0.5)
            time.sleep(3)  # the writer's thread finishes its part and counts it
            for server in servers.values():
                callgrind(control, server["proc"], "-d")
                callgrind(control, server["proc"], "-i", "off")
            seconds = time.monotonic() - began
            cell: dict[str, Any] = {"rows": rows, "requests": requests, "batch_rows": batch}
            for label, server in servers.items():
                by_thread = dumped(server["home"], 1)
                if not by_thread:
                    raise RuntimeError(f"{label}: no callgrind dump in {server['home']}")
                events = sorted({event for counts in by_thread.values() for event in counts})
                total = {e: sum(c.get(e, 0) for c in by_thread.values()) for e in events}
                cell[label] = {
                    "answered": answered[label],
                    "loop_ir": by_thread.get(1, {}).get("Ir", 0) / requests,
                    "other_ir": (total["Ir"] - by_thread.get(1, {}).get("Ir", 0)) / requests,
                    "ir": total["Ir"] / requests,
                    "ll_misses": (
                        sum(total.get(e, 0) for e in ("ILmr", "DLmr", "DLmw")) / requests
                        if args.cache_sim
                        else None
                    ),
                    "threads": len(by_thread),
                    "written": run.metric_total(
                        server["port"], "mlwp_serving_capture_written_total"
                    )
                    - server["written"],
                    "dropped": {
                        reason: value - server["dropped"].get(reason, 0.0)
                        for reason, value in run.dropped_by_reason(server["port"]).items()
                    },
                    "parts": parts_written(server["home"] / "storage") - server["parts"],
                }
            for server in servers.values():
                run.processes.stop_process_group(server["proc"])
            results.append(cell)
            print_cell(cell, seconds)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def callgrind(control: str, proc: subprocess.Popen[bytes], *options: str) -> None:
    """Ask a server's callgrind to switch instrumentation or dump (and wait until done)."""
    subprocess.run([control, *options, str(proc.pid)], check=True, capture_output=True, timeout=300)


def both(
    run: Any,
    servers: dict[str, dict[str, Any]],
    path: str,
    bodies: list[bytes],
    requests: int,
    concurrency: int,
) -> dict[str, int]:
    """Send ``requests`` requests to every server at once (each over ``concurrency``
    keep-alive connections); the requests each answered with 200."""
    answered: dict[str, int] = {}

    def drive(label: str, server: dict[str, Any]) -> None:
        result = run.drive_threads(
            server["port"], path, bodies, server["auth"], concurrency, 3600.0, requests
        )
        answered[label] = int(result["requests"] - result["errors"])

    threads = [
        threading.Thread(target=drive, args=(label, server)) for label, server in servers.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answered


def print_cell(cell: dict[str, Any], seconds: float) -> None:
    off, on = cell["0 %"], cell["100 %"]
    print(
        f"\n{cell['rows']} row(s), {cell['requests']} requests in the window "
        f"(batches of {cell['batch_rows']} rows; {seconds:.0f} s under callgrind)"
    )
    cache = off["ll_misses"] is not None
    print(
        f"  {'capture':<8} {'loop thread':>12} {'other threads':>14} {'all threads':>12}"
        + (f" {'LL misses':>10}" if cache else "")
        + "   (instructions per request)"
    )
    for label in ("0 %", "100 %"):
        r = cell[label]
        print(
            f"  {label:<8} {r['loop_ir']:>12,.0f} {r['other_ir']:>14,.0f} {r['ir']:>12,.0f}"
            + (f" {r['ll_misses']:>10,.1f}" if cache else "")
        )
    dropped = ", ".join(f"{k} {v:.0f}" for k, v in on["dropped"].items() if v) or "none"
    print(
        f"  100 % / 0 %: all threads x{on['ir'] / off['ir']:.4f} "
        f"({(on['ir'] / off['ir'] - 1) * 100:+.2f} %), loop thread "
        f"x{on['loop_ir'] / off['loop_ir']:.4f}; rows captured {on['answered'] * cell['rows']}, "
        f"written in the window {on['written']:.0f} ({on['parts']} part(s)), "
        f"dropped: {dropped}",
        flush=True,
    )


if __name__ == "__main__":
    main()
