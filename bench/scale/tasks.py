"""One data task of the scale benchmark, run alone in this process; prints wall time and peak RSS.

    python -m bench.scale.tasks <task> <workdir> [--rows N]

Tasks (each reads what the previous ones left in ``<workdir>``; ``generate`` first):

- ``generate``: a synthetic churn-like CSV of N rows, written 100k rows at a time;
- ``extract``: the CSV streamed into a partitioned dataset (mlwp.data.extract.extract_partitioned);
- ``extract_whole``: the single-task extract (pandas, the whole file in memory), a control;
- ``validate``: the GX suite partition by partition in chunks, as the mapped tasks do (one
  worker), then their combine into one verdict and data docs;
- ``validate_whole``: the single validate task (GX on the whole frame), a control;
- ``load_sql``: the CSV copied (``COPY ... FROM STDIN``) into table ``churn_<rows>`` of the
  PostgreSQL database at ``--postgres-url`` (set-up for ``validate_sql``, timed, not a task of
  mlwp's);
- ``validate_sql``: the suite run inside PostgreSQL on that table, as the validate task with
  ``in_database: true`` runs it (``validate_source``: the query counted before and after, GX's
  SQL data source, data docs), its result recorded beside the stored ``extract`` dataset of
  the same rows; the rows never leave the database;
- ``transform``: the transform steps;
- ``train``: the local XGBoost training entry point, the splits in memory;
- ``transform_partitioned``: the transform of the partitioned dataset (fit on a seeded sample,
  split partition by partition) into partitioned splits, which ``train_external`` reads;
- ``train_external``: the same entry point with ``data: external_memory`` on those splits, as
  the train task runs it (split files copied into the channel, streamed into XGBoost's
  external memory);
- ``predict``: every partition scored in chunks, as the mapped batch prediction tasks do, one
  after the other in this process (one worker), the output lean: ``keys: [customer_id]`` and
  the scores;
- ``predict_join``: the same with ``join_input: true`` (every input column written back out);
- ``floor``: XGBoost's raw ``inplace_predict`` on the same rows' feature matrix, in chunks,
  on every core and on one thread in turn (the faster is the floor).

Peak RSS is ``ru_maxrss`` of this process (``peak_mb``); ``task_mb`` is what the task itself
held at its peak: the kernel's peak RSS (VmHWM), reset just before the task, minus the RSS
then (``ru_maxrss`` minus its value after imports where VmHWM cannot be reset).
"""

from __future__ import annotations

import argparse
import json
import os
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
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}},
        {
            "type": "expect_column_mean_to_be_between",
            "kwargs": {"column": "monthly_charges", "min_value": 18, "max_value": 120},
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
    from mlwp.data.storage import Storage

    return Storage(str(workdir / "storage"))


def _dataset(workdir: Path, name: str = "extract") -> str:
    (sidecar,) = _storage(workdir).versions(PROJECT, name)
    return str(sidecar["uri"])


def extract(workdir: Path) -> dict[str, Any]:
    from mlwp.data.extract import extract_partitioned

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
    from mlwp.data.extract import extract as extract_frame

    ref = extract_frame(
        "churn.csv", storage=_storage(workdir), project=PROJECT, name="whole", project_dir=workdir
    )
    return {"rows": ref.rows}


def _suite_folder(workdir: Path) -> Path:
    folder = workdir / "expectations"
    folder.mkdir(exist_ok=True)
    (folder / "bench_churn.json").write_text(json.dumps(SUITE))
    return folder


def validate(workdir: Path) -> dict[str, Any]:
    """Each partition validated in chunks, as the mapped tasks do, one after the other in
    this process (one worker); then the combine, with its data docs."""
    from mlwp.data.partitions import partitions_of
    from mlwp.data.validation import load_suite
    from mlwp.data.validation_partitions import (
        combine_partitions,
        partition_frames,
        validate_partition,
    )

    folder = _suite_folder(workdir)
    storage = _storage(workdir)
    uri = _dataset(workdir)
    spec = load_suite("bench_churn", folder)
    documents = [
        {
            **validate_partition(
                partition_frames(storage, uri, partition), spec, partition=partition.path
            ),
            "index": index,
        }
        for index, partition in enumerate(partitions_of(storage, uri))
    ]
    report = combine_partitions(storage, uri, "bench_churn", documents, expectations_folder=folder)
    rows = sum(int(document["rows"]) for document in documents)
    return {"rows": rows, "success": report.success, "partitions": len(documents)}


def validate_whole(workdir: Path) -> dict[str, Any]:
    """The single validate task: GX on the whole dataset as one frame (a control)."""
    from mlwp.data.validation import validate_dataset

    report = validate_dataset(
        _storage(workdir),
        _dataset(workdir),
        "bench_churn",
        expectations_folder=str(_suite_folder(workdir)),
        data_docs=False,
    )
    return {"success": report.success}


def _table(rows: int) -> str:
    return f"churn_{rows}"


def load_sql(workdir: Path, postgres_url: str, rows: int) -> dict[str, Any]:
    """Copy the CSV into ``churn_<rows>`` (replaced if there), streamed by COPY."""
    import sqlalchemy

    table = _table(rows)
    engine = sqlalchemy.create_engine(postgres_url)
    connection = engine.raw_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
            cursor.execute(
                f"CREATE TABLE {table} (customer_id bigint, tenure int, monthly_charges float8, "
                "total_charges float8, contract text, internet_service text, "
                "payment_method text, senior_citizen int, churn text)"
            )
            with open(workdir / "churn.csv", "rb") as csv:
                cursor.copy_expert(f"COPY {table} FROM STDIN WITH (FORMAT csv, HEADER)", csv)
            cursor.execute(f"ANALYZE {table}")
            cursor.execute(f"SELECT count(*) FROM {table}")
            (loaded,) = cursor.fetchone()
        connection.commit()
    finally:
        connection.close()
        engine.dispose()
    return {"rows": int(loaded), "table": table}


def validate_sql(workdir: Path, postgres_url: str, rows: int) -> dict[str, Any]:
    """The suite inside PostgreSQL (``in_database: true``), recorded beside the extract."""
    from mlwp.data.validation import validate_source

    report = validate_source(
        _storage(workdir),
        _dataset(workdir),
        "bench_churn",
        connection_string=postgres_url,
        query=f"select * from {_table(rows)}",
        extracted_rows=rows,
        expectations_folder=_suite_folder(workdir),
    )
    return {"rows": rows, "success": report.success}


SQL_TASKS = {"load_sql": load_sql, "validate_sql": validate_sql}


def transform(workdir: Path) -> dict[str, Any]:
    from mlwp.data.transform import run_transform

    storage = _storage(workdir)
    result = run_transform(storage.read_dataset(_dataset(workdir)), STEPS)
    for split, rows in result.splits.items():
        storage.write_dataset(rows, project=PROJECT, name=f"features-{split}", source="bench")
    (workdir / "preprocessing.json").write_bytes(result.preprocessing.to_json())
    return {"rows": result.rows_in}


def train(workdir: Path) -> dict[str, Any]:
    from mlwp.model.preprocessing import Preprocessing
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
        HYPERPARAMETERS,
    )
    del splits
    metrics = entrypoint.run(environ)
    return {
        "model": str(workdir / "train" / "model"),
        "validation_roc_auc": metrics["validation:roc_auc"],
    }


HYPERPARAMETERS = {
    "target": "churn",
    "num_boost_round": 20,
    "max_depth": 4,
    "nthread": 2,
    "seed": 1,
}


def transform_partitioned(workdir: Path) -> dict[str, Any]:
    from mlwp.data.transform_partitions import transform_partitioned as run

    result = run(_storage(workdir), _dataset(workdir), STEPS, project=PROJECT, name="pfeatures")
    (workdir / "preprocessing-partitioned.json").write_bytes(result.preprocessing.to_json())
    return {"rows": result.rows_in, "partitions": result.splits["train"].extra.get("partitions")}


def train_external(workdir: Path) -> dict[str, Any]:
    import json as json_module

    from mlwp.model.preprocessing import Preprocessing
    from mlwp.training import entrypoint
    from mlwp.training.local import StoredSplit, prepare_workdir

    storage = _storage(workdir)
    splits = {
        split: StoredSplit(storage, _dataset(workdir, f"pfeatures-{split}"))
        for split in ("train", "validation", "test")
    }
    preprocessing = Preprocessing.from_json(
        (workdir / "preprocessing-partitioned.json").read_bytes()
    )
    environ = prepare_workdir(
        workdir / "train_external",
        splits,
        preprocessing,
        {**HYPERPARAMETERS, "data": "external_memory"},
    )
    metrics = entrypoint.run(environ)
    rows = json_module.loads((workdir / "train_external" / "model" / "mlwp.json").read_text())
    return {"rows": rows["rows"]["train"], "validation_roc_auc": metrics["validation:roc_auc"]}


def predict(workdir: Path, *, join_input: bool = False) -> dict[str, Any]:
    from mlwp.data.batch_scoring import Output, native_trees, predicted_fields, score_partition
    from mlwp.data.partitions import PartitionedReader, commit_staged, stage_part
    from mlwp.model import load

    storage = _storage(workdir)
    loading = time.perf_counter()
    model = load(workdir / "train" / "model")
    load_seconds = time.perf_counter() - loading
    # as the task does after its load: the C trees, built once (the first round; the task:
    # once per worker) into a cache folder, loaded from it afterwards
    loading = time.perf_counter()
    trees = native_trees(model, workdir / "native-trees")
    trees_seconds = time.perf_counter() - loading
    reader = PartitionedReader(storage, _dataset(workdir))
    output = Output(join_input=True) if join_input else Output(keys=("customer_id",))
    name = "predict_join" if join_input else "predict"
    staged = []
    first_row = 0
    started = time.perf_counter()
    cpu = time.process_time()
    for index, partition in enumerate(reader.partitions):
        schema, scored = score_partition(
            model, reader, partition, chunk_rows=CHUNK_ROWS, output=output, first_row=first_row
        )
        staged.append(
            stage_part(
                storage,
                schema,
                scored,
                project=PROJECT,
                name=name,
                key="b",
                index=index,
                unique=output.unique(),
                split_floats=True,
                no_statistics=[f.name for f in predicted_fields(model)],
            )
        )
        first_row += partition.rows
    ref = commit_staged(storage, staged, project=PROJECT, name=name, source=reader.uri)
    seconds = time.perf_counter() - started
    return {
        "rows": ref.rows,
        "rows_per_second": ref.rows / seconds,
        "cpu_s_per_1m_rows": (time.process_time() - cpu) * 1e6 / ref.rows,
        # the model's load from its folder (the task also downloads it from MLflow first)
        "load_seconds": load_seconds,
        "trees": trees,
        # the C trees built (or loaded from the cache) and checked against XGBoost
        "trees_seconds": trees_seconds,
        "rows_per_second_with_load": ref.rows / (seconds + load_seconds + trees_seconds),
    }


def predict_join(workdir: Path) -> dict[str, Any]:
    return predict(workdir, join_input=True)


def floor(workdir: Path) -> dict[str, Any]:
    """XGBoost's raw inplace_predict over the same rows' feature matrix (built untimed), on
    XGBoost's default threads (every core) and on one thread, chunk by chunk in turn: the
    floor is the faster (one thread wins when other processes hold a core)."""
    import numpy as np

    from mlwp.data.partitions import PartitionedReader
    from mlwp.model import load

    storage = _storage(workdir)
    model = load(workdir / "train" / "model")
    reader = PartitionedReader(storage, _dataset(workdir))
    seconds = {0: 0.0, 1: 0.0}  # by nthread (0: XGBoost's default, every core)
    cpu = {0: 0.0, 1: 0.0}
    rows = 0
    for partition in reader.partitions:
        for batch in reader.batches(partition, batch_rows=CHUNK_ROWS):
            matrix = np.ascontiguousarray(model.preprocessing.transform_frame(batch.to_pandas()))
            for threads in seconds:
                model.booster.set_param({"nthread": threads})
                started, used = time.perf_counter(), time.process_time()
                model.booster.inplace_predict(matrix)
                seconds[threads] += time.perf_counter() - started
                cpu[threads] += time.process_time() - used
            rows += batch.num_rows
    best = min(seconds, key=lambda threads: seconds[threads])
    return {
        "rows": rows,
        "rows_per_second": rows / seconds[best],
        "cpu_s_per_1m_rows": cpu[best] * 1e6 / rows,
        "rows_per_second_all_cores": rows / seconds[0],
        "rows_per_second_one_thread": rows / seconds[1],
    }


TASKS = {
    "generate": None,
    "extract": extract,
    "extract_whole": extract_whole,
    "validate": validate,
    "validate_whole": validate_whole,
    "load_sql": None,
    "validate_sql": None,
    "transform": transform,
    "train": train,
    "transform_partitioned": transform_partitioned,
    "train_external": train_external,
    "predict": predict,
    "predict_join": predict_join,
    "floor": floor,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--csv-block-mb", type=float, default=None, help="CSV MiB parsed at a time (1)"
    )
    parser.add_argument(
        "--batch-rows", type=int, default=None, help="rows per external-memory batch (262144)"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("MLWP_TEST_POSTGRES_URL"),
        help="SQLAlchemy URL of the database load_sql and validate_sql use "
        "(MLWP_TEST_POSTGRES_URL)",
    )
    args = parser.parse_args(argv)
    if args.task in SQL_TASKS and not args.postgres_url:
        parser.error(f"{args.task} needs --postgres-url (or MLWP_TEST_POSTGRES_URL)")
    # The libraries every task uses, imported before the baseline is taken.
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import xgboost  # noqa: F401

    import mlwp.data.extract
    import mlwp.data.partitions

    if args.task.startswith("validate"):
        import great_expectations  # noqa: F401  (seconds and ~100 MB: not the task's own)
    if args.task in SQL_TASKS:
        import psycopg2  # noqa: F401
        import sqlalchemy  # noqa: F401

    if args.batch_rows:
        import mlwp.training.external_memory

        mlwp.training.external_memory.BATCH_ROWS = args.batch_rows
    if args.csv_block_mb:
        mlwp.data.extract.CSV_STREAM_BLOCK_BYTES = int(args.csv_block_mb * (1 << 20))
    args.workdir.mkdir(parents=True, exist_ok=True)
    baseline = peak_mb()
    resident = reset_peak()
    started = time.perf_counter()
    if args.task == "generate":
        result = generate(args.workdir, args.rows)
    elif args.task in SQL_TASKS:
        result = SQL_TASKS[args.task](args.workdir, args.postgres_url, args.rows)
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
