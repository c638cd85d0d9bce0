"""Scale benchmark: wall time and peak RSS per data task at two sizes, side by side in one run.

    python -m bench.scale                          # 1M and 10M rows
    python -m bench.scale --rows 100000,1000000    # a quicker run
    python -m bench.scale --tasks predict,floor --repeats 5   # the scoring ratio, interleaved
    python -m bench.scale --tasks validate_sql --postgres-url postgresql+psycopg2://...

For each size, a synthetic churn-like CSV is generated, then each task of
``bench/scale/tasks.py`` runs alone in a fresh process (so its ``ru_maxrss`` is its own):
extract (streamed into partitions), the whole-file extract (the control), validate, transform,
train, batch prediction (every partition scored in chunks, one worker) and the floor
(XGBoost's raw ``inplace_predict`` on the same rows' feature matrix). ``validate_sql`` (the
suite inside PostgreSQL, ``in_database: true``) runs on the CSV copied into a table of a
database the benchmark creates on the server at ``--postgres-url`` (``MLWP_TEST_POSTGRES_URL``)
and drops afterwards; skipped, with the reason, when that server cannot be reached.

Printed: per task, seconds and the memory the task held at its peak (peak RSS minus the
process's peak after imports) at each size and their ratio, then batch prediction's rows per
second against the floor's (the lean output and ``join_input``). With ``--repeats N`` the tasks
run N rounds in turn (predict, floor, predict, floor...), and the ratio is given per round with
its median, each against the mean of the floor runs just before and after it: the floor's
booster threads move most with the machine's other load, so only a ratio of neighbouring runs
compares like with like. The floor is XGBoost on every core or on one thread, whichever is
faster in that run; CPU seconds per 1M rows are printed beside (less sensitive to load), and
prediction's rows/s counting the model's load. Goals (issue 16): at 10x the rows, peak within
1.2x for the streaming tasks; batch prediction >= 0.5x the floor's rows/s.
Never a CI gate; on a shared machine absolute numbers move, the side-by-side ratios are what
counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TASKS = (
    "extract",
    "extract_whole",
    "validate",
    "validate_whole",
    "validate_sql",
    "transform",
    "train",
    "transform_partitioned",
    "train_external",
    "predict",
    "predict_join",
    "floor",
)
HOW = {
    "extract": "streamed, partitions of 250k",
    "extract_whole": "whole file (control)",
    "validate": "partitions in chunks + combine",
    "validate_whole": "GX on the whole frame (control)",
    "validate_sql": "GX inside PostgreSQL (in_database)",
    "transform": "in memory",
    "train": "in memory",
    "transform_partitioned": "sample fit, per partition",
    "train_external": "XGBoost external memory",
    "predict": "partitions in chunks, lean output (keys)",
    "predict_join": "partitions in chunks, join_input",
    "floor": "inplace_predict only",
}


def run_task(task: str, workdir: Path, rows: int, *options: str) -> dict[str, Any]:
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.scale.tasks",
            task,
            str(workdir),
            "--rows",
            str(rows),
            *options,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return {"task": task, "error": result.stderr.strip().splitlines()[-1:]}
    document: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    # the whole process: interpreter start, imports, set-up, the task
    document["process_seconds"] = round(time.perf_counter() - started, 3)
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,10000000", help="two sizes, comma-separated")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds of the tasks, interleaved (ratios per round)"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("MLWP_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="SQLAlchemy URL of a PostgreSQL server's maintenance database, where validate_sql "
        "creates (and drops) a database of its own (MLWP_TEST_POSTGRES_URL)",
    )
    args = parser.parse_args(argv)
    sizes = [int(value) for value in args.rows.split(",")]
    tasks = [t for t in args.tasks.split(",") if t]
    with bench_database(args.postgres_url if "validate_sql" in tasks else None) as database:
        if "validate_sql" in tasks and database is None:
            tasks.remove("validate_sql")
        return run(args, sizes, tasks, database)


DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@contextmanager
def bench_database(admin_url: str | None) -> Iterator[str | None]:
    """A fresh database on the server of ``admin_url`` (its URL), dropped afterwards; None
    (with the reason printed) when there is no URL or the server cannot be reached."""
    if admin_url is None:
        yield None
        return
    from urllib.parse import urlparse

    import sqlalchemy

    name = f"mlwp_bench_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # any driver error: the server is not there for us
        print(f"validate_sql skipped: PostgreSQL at {admin_url} unreachable: {exc}".strip())
        admin.dispose()
        yield None
        return
    try:
        yield urlparse(admin_url)._replace(path=f"/{name}").geturl()
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(args: argparse.Namespace, sizes: list[int], tasks: list[str], database: str | None) -> int:
    results: dict[int, dict[str, dict[str, Any]]] = {}
    rounds: dict[int, list[dict[str, dict[str, Any]]]] = {}
    base = Path(tempfile.mkdtemp(prefix="mlwp-bench-scale-"))
    sql = ("--postgres-url", database) if database else ()
    try:
        model = None
        if "train" not in tasks and {"predict", "predict_join", "floor"} & set(tasks):
            # Scoring needs a model: train one on 100k rows of the same distribution.
            model = base / "model-100000"
            for task in ("generate", "extract", "transform", "train"):
                run_task(task, model, 100_000)
        for rows in sizes:
            workdir = base / str(rows)
            generated = run_task("generate", workdir, rows)
            print(f"generated {rows:,} rows ({generated.get('bytes', 0) / 1e6:.0f} MB CSV)")
            if model is not None:
                shutil.copytree(model / "train" / "model", workdir / "train" / "model")
            if "validate_sql" in tasks:
                # the stored dataset its result is recorded beside, and the rows in a table
                if "extract" not in tasks:
                    run_task("extract", workdir, rows)
                loaded = run_task("load_sql", workdir, rows, *sql)
                print(f"  {rows:>11,} {'load_sql':<14} {json.dumps(loaded)}", flush=True)
            rounds[rows] = []
            for _ in range(args.repeats):
                rounds[rows].append({})
                for task in tasks:
                    options = sql if task == "validate_sql" else ()
                    rounds[rows][-1][task] = document = run_task(task, workdir, rows, *options)
                    print(f"  {rows:>11,} {task:<14} {json.dumps(document)}", flush=True)
            results[rows] = rounds[rows][0]
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(results, sizes, tasks))
    if "floor" in tasks:
        print()
        print(round_ratios(rounds, sizes))
    return 0


def round_ratios(rounds: dict[int, list[dict[str, dict[str, Any]]]], sizes: list[int]) -> str:
    """Batch prediction's rows/s over the floor's, each round and the median. The floor of
    a round is the mean of the floor runs just before and after the prediction (this round's
    and the previous one's), so load that comes and goes moves both sides alike."""
    lines = [
        "| rows | task | rows/s per round | floor rows/s | x the floor per round | median "
        "(goal >= 0.5) | CPU s per 1M rows (floor) | rows/s with model load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rows in sizes:
        done = rounds[rows]
        floors = [d.get("floor", {}).get("rows_per_second") for d in done]
        floor_cpu = [d.get("floor", {}).get("cpu_s_per_1m_rows") for d in done]
        for task in ("predict", "predict_join"):
            ratios, rates, bracket, cpus, loaded = [], [], [], [], []
            for index, document in enumerate(done):
                rate = document.get(task, {}).get("rows_per_second")
                near = [f for f in floors[max(0, index - 1) : index + 1] if f]
                if not rate or not near:
                    continue
                floor = statistics.mean(near)
                ratios.append(rate / floor)
                rates.append(f"{rate / 1e3:,.0f}k")
                bracket.append(f"{floor / 1e3:,.0f}k")
                cpus.append(
                    f"{document[task].get('cpu_s_per_1m_rows', float('nan')):.2f} "
                    f"({floor_cpu[index] or float('nan'):.2f})"
                )
                loaded.append(f"{document[task].get('rows_per_second_with_load', 0) / 1e3:,.0f}k")
            if ratios:
                lines.append(
                    f"| {rows:,} | {task} | {', '.join(rates)} | {', '.join(bracket)} | "
                    f"{', '.join(f'{r:.2f}' for r in ratios)} | "
                    f"**{statistics.median(ratios):.2f}x** | {', '.join(cpus)} | "
                    f"{', '.join(loaded)} |"
                )
    return "\n".join(lines)


def table(results: dict[int, dict[str, dict[str, Any]]], sizes: list[int], tasks: list[str]) -> str:
    small, large = sizes[0], sizes[-1]
    lines = [
        f"| task | how | s @ {small:,} | s @ {large:,} | s ratio | task MB @ {small:,} | "
        f"task MB @ {large:,} | MB ratio | peak RSS MB @ {small:,} | peak RSS MB @ {large:,} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task in tasks:
        a, b = results[small].get(task, {}), results[large].get(task, {})
        if "error" in a or "error" in b:
            lines.append(f"| {task} | failed: {a.get('error') or b.get('error')} |")
            continue
        ratio = b["task_mb"] / a["task_mb"] if a.get("task_mb") else float("nan")
        slower = b["seconds"] / a["seconds"] if a.get("seconds") else float("nan")
        lines.append(
            f"| {task} | {HOW.get(task, '')} | {a['seconds']:.1f} | {b['seconds']:.1f} | "
            f"{slower:.1f}x | {a['task_mb']:.0f} | {b['task_mb']:.0f} | {ratio:.2f}x | "
            f"{a['peak_mb']:.0f} | "
            f"{b['peak_mb']:.0f} |"
        )
    if "floor" in tasks:
        lines += ["", "| rows | task | rows/s | floor rows/s | x the floor (goal >= 0.5) |"]
        lines.append("| --- | --- | --- | --- | --- |")
        for rows in sizes:
            floor = results[rows]["floor"].get("rows_per_second")
            for task in ("predict", "predict_join"):
                ours = results[rows].get(task, {}).get("rows_per_second")
                if ours and floor:
                    lines.append(
                        f"| {rows:,} | {task} | {ours:,.0f} | {floor:,.0f} | "
                        f"**{ours / floor:.2f}x** |"
                    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
