"""One data task of the scale benchmark, run alone in this process; prints wall time and peak RSS.

    python -m bench.scale.tasks <task> <workdir> [--rows N]

Tasks (each reads what the previous ones left in ``<workdir>``; ``generate`` first):

- ``generate``: a synthetic churn-like CSV of N rows, written 100k rows at a time;
- ``extract``: the CSV streamed into a partitioned dataset (mlwp.etl.extract_partitioned);
- ``extract_whole``: the single-task extract (pandas, the whole file in memory), a control;
- ``validate``: the GX suite over the dataset;
- ``transform``: the transform steps;
- ``train``: the local XGBoost training entry point;
- ``predict``: every partition scored in chunks, as the mapped batch prediction tasks do, one
  after the other in this process (one worker);
- ``floor``: XGBoost's raw ``inplace_predict`` on the same rows' feature matrix, in chunks.

Peak RSS is ``ru_maxrss`` of this process (``peak_mb``); ``task_mb`` is what the task itself
held at its peak: the kernel's peak RSS (VmHWM), reset just before the task, minus the RSS
then (``ru_maxrss`` minus its value after imports where VmHWM cannot be reset).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

PROJECT = "bench"
ROWS_PER_PARTITION = 250_000
CHUNK_ROWS = 65_536
CONTRACTS = ["Month-to-month", "One year", "Two year"]
INTERNET = ["DSL", "Fiber optic", "No"]
PAYMENT = ["Electronic check", "Mailed check", "Bank transfer", "Credit card"]
STEPS: list[dict[str, Any]] = [
    {"op": "drop", "columns": ["customer_id"]},
    {"op": "fill_missing", "columns": ["total_charges"], "strategy": "median"},
    {"op": "onehot", "columns": ["contract", "internet_service", "payment_method"]},
    {"op": "scale", "columns": ["tenure", "monthly_charges", "total_charges"]},
    {"op": "split", "validation_size": 0.1, "test_size": 0.1, "seed": 7},
]
SUITE = {
    "name": "bench_churn",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "customer_id"}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "tenure", "min_value": 0, "max_value": 72},
        },
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "contract", "value_set": CONTRACTS},
        },
    ],
}


def peak_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_peak() -> float | None:
    """Reset the kernel's peak RSS (VmHWM) to the current RSS; return that RSS in MiB.

    ``ru_maxrss`` cannot be reset and its value after imports includes their transient peaks,
    which can hide a task's own; Linux resets VmHWM on ``echo 5 > /proc/self/clear_refs``.
    None where that is not available (then ``ru_maxrss`` is used).
    """
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return None
    return _status_mb("VmRSS")


def generate(workdir: Path, rows: int) -> dict[str, Any]:
    """Write ``rows`` synthetic churn-like rows as CSV, 100k at a time (bounded memory)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(16)
    path = workdir / "churn.csv"
    writer = None
    written = 0
    while written < rows:
        n = min(100_000, rows - written)
        tenure = rng.integers(0, 73, n)
        monthly = np.round(rng.uniform(18, 120, n), 2)
        total = np.round(monthly * np.maximum(tenure, 1) * rng.uniform(0.9, 1.1, n), 2)
        contract = rng.integers(0, 3, n)
        internet = rng.integers(0, 3, n)
        logit = -1.0 - 0.04 * tenure + 0.02 * monthly - 1.2 * contract + 0.5 * (internet == 1)
        churn = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "Yes", "No")
        total_array = pa.array(total, mask=rng.random(n) < 0.01)
        table = pa.table(
            {
                "customer_id": np.arange(written, written + n),
                "tenure": tenure,
                "monthly_charges": monthly,
                "total_charges": total_array,
                "contract": np.asarray(CONTRACTS)[contract],
                "internet_service": np.asarray(INTERNET)[internet],
                "payment_method": np.asarray(PAYMENT)[rng.integers(0, 4, n)],
                "senior_citizen": rng.integers(0, 2, n),
                "churn": churn,
            }
        )
        if writer is None:
            writer = pacsv.CSVWriter(str(path), table.schema)
        writer.write_table(table)
        written += n
    assert writer is not None
    writer.close()
    return {"rows": written, "bytes": path.stat().st_size}


def _storage(workdir: Path) -> Any:
    from mlwp.storage import Storage

    return Storage(str(workdir / "storage"))


def _dataset(workdir: Path, name: str = "extract") -> str:
    (sidecar,) = _storage(workdir).versions(PROJECT, name)
    return str(sidecar["uri"])


def extract(workdir: Path) -> dict[str, Any]:
    from mlwp.etl import extract_partitioned

    ref = extract_partitioned(
        str(workdir / "churn.csv"),
        storage=_storage(workdir),
        project=PROJECT,
        name="extract",
        project_dir=workdir,
        rows_per_partition=ROWS_PER_PARTITION,
    )
    return {"rows": ref.rows, "partitions": ref.extra.get("partitions")}


def extract_whole(workdir: Path) -> dict[str, Any]:
    from mlwp.etl import extract as extract_frame

    ref = extract_frame(
        "churn.csv", storage=_storage(workdir), project=PROJECT, name="whole", project_dir=workdir
    )
    return {"rows": ref.rows}


def validate(workdir: Path) -> dict[str, Any]:
    from mlwp.validation import validate_dataset

    folder = workdir / "expectations"
    folder.mkdir(exist_ok=True)
    (folder / "bench_churn.json").write_text(json.dumps(SUITE))
    report = validate_dataset(
        _storage(workdir),
        _dataset(workdir),
        "bench_churn",
        expectations_folder=str(folder),
        data_docs=False,
    )
    return {"success": report.success}


def transform(workdir: Path) -> dict[str, Any]:
    from mlwp.transform import run_transform

    storage = _storage(workdir)
    result = run_transform(storage.read_dataset(_dataset(workdir)), STEPS)
    for split, rows in result.splits.items():
        storage.write_dataset(rows, project=PROJECT, name=f"features-{split}", source="bench")
    (workdir / "preprocessing.json").write_bytes(result.preprocessing.to_json())
    return {"rows": result.rows_in}


def train(workdir: Path) -> dict[str, Any]:
    from mlwp.preprocessing import Preprocessing
    from mlwp.training import entrypoint
    from mlwp.training.local import prepare_workdir

    storage = _storage(workdir)
    splits = {
        split: storage.read_dataset(_dataset(workdir, f"features-{split}"))
        for split in ("train", "validation", "test")
    }
    preprocessing = Preprocessing.from_json((workdir / "preprocessing.json").read_bytes())
    environ = prepare_workdir(
        workdir / "train",
        splits,
        preprocessing,
        {"target": "churn", "num_boost_round": 20, "max_depth": 4, "nthread": 2, "seed": 1},
    )
    del splits
    entrypoint.run(environ)
    return {"model": str(workdir / "train" / "model")}


def predict(workdir: Path) -> dict[str, Any]:
    from mlwp.batch_scoring import score_stream
    from mlwp.model import load
    from mlwp.partitions import PartitionedReader, commit_staged, stage_part

    storage = _storage(workdir)
    model = load(workdir / "train" / "model")
    reader = PartitionedReader(storage, _dataset(workdir))
    staged = []
    started = time.perf_counter()
    for index, partition in enumerate(reader.partitions):
        batches = reader.batches(partition, batch_rows=CHUNK_ROWS)
        head = next(batches)
        schema, scored = score_stream(model, _chain(head, batches), head.schema)
        staged.append(
            stage_part(
                storage, schema, scored, project=PROJECT, name="predict", key="bench", index=index
            )
        )
    ref = commit_staged(storage, staged, project=PROJECT, name="predict", source=reader.uri)
    seconds = time.perf_counter() - started
    return {"rows": ref.rows, "rows_per_second": ref.rows / seconds}


def floor(workdir: Path) -> dict[str, Any]:
    """XGBoost's raw inplace_predict over the same rows' feature matrix (built untimed)."""
    import numpy as np

    from mlwp.model import load
    from mlwp.partitions import PartitionedReader

    storage = _storage(workdir)
    model = load(workdir / "train" / "model")
    reader = PartitionedReader(storage, _dataset(workdir))
    seconds = 0.0
    rows = 0
    for partition in reader.partitions:
        for batch in reader.batches(partition, batch_rows=CHUNK_ROWS):
            matrix = np.ascontiguousarray(model.preprocessing.transform_frame(batch.to_pandas()))
            started = time.perf_counter()
            model.booster.inplace_predict(matrix)
            seconds += time.perf_counter() - started
            rows += batch.num_rows
    return {"rows": rows, "rows_per_second": rows / seconds}


def _chain(head: Any, rest: Any) -> Any:
    yield head
    yield from rest


TASKS = {
    "generate": None,
    "extract": extract,
    "extract_whole": extract_whole,
    "validate": validate,
    "transform": transform,
    "train": train,
    "predict": predict,
    "floor": floor,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--csv-block-mb", type=float, default=None, help="CSV bytes parsed at a time (16 MiB)"
    )
    args = parser.parse_args(argv)
    # The libraries every task uses, imported before the baseline is taken.
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import xgboost  # noqa: F401

    import mlwp.etl
    import mlwp.partitions

    if args.csv_block_mb:
        mlwp.etl.CSV_BLOCK_BYTES = int(args.csv_block_mb * (1 << 20))
    args.workdir.mkdir(parents=True, exist_ok=True)
    baseline = peak_mb()
    resident = reset_peak()
    started = time.perf_counter()
    if args.task == "generate":
        result = generate(args.workdir, args.rows)
    else:
        result = TASKS[args.task](args.workdir)  # type: ignore[misc]
    seconds = time.perf_counter() - started
    peak = peak_mb()
    high_water = _status_mb("VmHWM")
    if resident is not None and high_water is not None:
        task_mb = high_water - resident  # the task's own peak above what it started with
    else:
        task_mb = peak - baseline
    document = {
        "task": args.task,
        "seconds": round(seconds, 3),
        "peak_mb": round(peak, 1),
        "baseline_mb": round(baseline, 1),
        "task_mb": round(task_mb, 1),
        **result,
    }
    sys.stdout.write(json.dumps(document) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
