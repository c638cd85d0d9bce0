"""Chunked scoring of partitions (mlwp.data.batch_scoring) gives serving's answers in pieces."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mlwp import model as mlwp_model
from mlwp.data import batch_scoring
from mlwp.data.batch_scoring import Output, OutputColumnsError, score_partition
from mlwp.data.extract import extract_partitioned
from mlwp.data.partitions import (
    PartitionedReader,
    commit_staged,
    copy_dataset,
    sha256_of_file,
    stage_part,
)
from mlwp.data.storage import Storage
from mlwp.data.transform import run_transform
from mlwp.training import entrypoint
from mlwp.training.local import prepare_workdir

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "fixtures" / "data" / "telco_churn_sample.csv"


def partitioned(tmp_path: Path, **options: Any) -> tuple[Storage, Any, PartitionedReader]:
    """The churn CSV extracted into a partitioned dataset (``options``: how it is split),
    its storage, reference and reader."""
    storage = Storage(str(tmp_path / "store"))
    ref = extract_partitioned(
        DATA.as_uri(), storage=storage, project="churn", name="raw", **options
    )
    return storage, ref, PartitionedReader(storage, ref.uri)


@pytest.fixture(scope="module")
def churn_model(churn_model_path: Path) -> mlwp_model.Model:
    return mlwp_model.load(churn_model_path)


@pytest.fixture(scope="module")
def churn_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    definition = yaml.safe_load((ROOT / "dags/projects/churn/workflow.yaml").read_text())
    steps = definition["workflows"]["train"]["tasks"]["features"]["steps"]
    result = run_transform(pd.read_csv(DATA), steps)
    workdir = tmp_path_factory.mktemp("train")
    environ = prepare_workdir(
        workdir,
        result.splits,
        result.preprocessing,
        {"target": "churn", "num_boost_round": 20, "max_depth": 3, "nthread": 1, "seed": 1},
    )
    entrypoint.run(environ)
    return workdir / "model"


PREDICTED = ["prediction", "probability_No", "probability_Yes"]


@pytest.mark.parametrize(
    ("output", "carried"),
    [
        (Output(), ["row"]),  # the default: each row's position in the dataset
        (Output(keys=("customer_id",)), ["customer_id"]),
        (Output(join_input=True), None),  # None: every input column
    ],
    ids=["row-index", "keys", "join-input"],
)
def test_partitions_scored_in_chunks_match_serving(
    churn_model: mlwp_model.Model, tmp_path: Path, output: Output, carried: list[str] | None
) -> None:
    storage, ref, reader = partitioned(tmp_path, rows_per_partition=150)
    assert len(reader.partitions) > 2
    staged = []
    first_row = 0
    for index, partition in enumerate(reader.partitions):
        # several chunks per partition
        schema, scored = score_partition(
            churn_model, reader, partition, chunk_rows=64, output=output, first_row=first_row
        )
        part = stage_part(  # as the mapped task writes it (hashed while written)
            storage,
            schema,
            scored,
            project="churn",
            name="predict",
            key="r1",
            index=index,
            unique=output.unique(),
            split_floats=True,
            no_statistics=PREDICTED,
        )
        assert (part["sha256"], part["bytes"]) == sha256_of_file(*storage._fs(part["uri"]))
        # min/max statistics for the carried columns only (what readers prune by)
        metadata = pq.ParquetFile(part["uri"].removeprefix("file://")).metadata
        assert metadata.num_row_groups > 1
        columns = metadata.row_group(0)
        with_statistics = [
            columns.column(i).path_in_schema
            for i in range(columns.num_columns)
            if columns.column(i).is_stats_set
        ]
        assert with_statistics == schema.names[: -len(PREDICTED)]
        staged.append(part)
        first_row += partition.rows
    out = commit_staged(
        storage, list(reversed(staged)), project="churn", name="predict", source=ref.uri
    )
    assert out.rows == ref.rows
    scored = storage.read_dataset(out.uri)
    raw = storage.read_dataset(ref.uri)
    carried = raw.columns.tolist() if carried is None else carried
    assert scored.columns.tolist() == [*carried, *PREDICTED]
    if output.row_index:
        assert scored["row"].tolist() == list(range(ref.rows))
    else:  # rows kept, in order
        pd.testing.assert_frame_equal(scored[carried], raw[carried])
    assert_served(churn_model, raw, scored)
    # Staged files were moved into the dataset; copying it out keeps the partition files.
    copy_dataset(storage, out.uri, (tmp_path / "export").as_uri())
    exported = pd.read_parquet(tmp_path / "export")
    assert len(exported) == ref.rows
    assert not list((tmp_path / "store").rglob(".staging-*"))


def test_hive_partitions_score_as_served(churn_model: mlwp_model.Model, tmp_path: Path) -> None:
    """A feature held by the Hive folder names (partition_by) is scored as the others."""
    import pyarrow as pa

    _, _, reader = partitioned(tmp_path, partition_by=["contract"])
    for partition in reader.partitions:
        raw = pa.Table.from_batches(list(reader.batches(partition))).to_pandas()
        for output in (Output(join_input=True), Output(keys=("customer_id", "contract"))):
            schema, scored = score_partition(
                churn_model, reader, partition, chunk_rows=100, output=output
            )
            table = pa.Table.from_batches(list(scored), schema)
            assert table.schema.field("contract").type == pa.string()
            carried = output.carried(raw.columns.tolist())
            assert table.select(carried).to_pandas().equals(raw[carried])
            assert_served(churn_model, raw, table.to_pandas())


def test_missing_or_clashing_output_columns_are_named(
    churn_model: mlwp_model.Model, tmp_path: Path
) -> None:
    _, _, reader = partitioned(tmp_path, rows_per_partition=500)
    partition = reader.partitions[0]
    with pytest.raises(OutputColumnsError, match=r"key column 'customer' not in the input's"):
        score_partition(churn_model, reader, partition, output=Output(keys=("customer",)))
    renamed = pd.read_csv(DATA).rename(columns={"customer_id": "prediction"})
    import pyarrow as pa

    from mlwp.data.batch_scoring import output_schema

    schema = pa.Schema.from_pandas(renamed, preserve_index=False)
    with pytest.raises(OutputColumnsError, match=r"'prediction' would clash"):
        output_schema(churn_model, schema, Output(keys=("prediction",)))


def assert_served(model: mlwp_model.Model, raw: pd.DataFrame, scored: pd.DataFrame) -> None:
    """Serving's answers for the same rows, bit for bit."""
    served = model.predict(raw.to_dict(orient="records"))
    assert scored["prediction"].tolist() == served.predictions
    assert served.probabilities is not None
    for index, label in enumerate(model.classes or []):
        expected = np.array([row[index] for row in served.probabilities])
        assert scored[f"probability_{label}"].to_numpy().tobytes() == expected.tobytes()


def test_unknown_and_missing_categories_score_as_served(
    churn_model: mlwp_model.Model, tmp_path: Path
) -> None:
    import pyarrow as pa

    from mlwp.data.batch_scoring import score_batch

    raw = pd.read_csv(DATA).head(200)
    raw.loc[0, "contract"] = "Ten year"
    raw.loc[1, "contract"] = None
    raw.loc[2, "payment_method"] = None
    raw.loc[3, "total_charges"] = None
    batch = pa.RecordBatch.from_pandas(raw, preserve_index=False)
    plain = score_batch(churn_model, batch).to_pandas()
    assert plain["row"].tolist() == list(range(200))
    assert_served(churn_model, raw, plain)
    # text already dictionary-encoded (a Parquet dictionary read) scores the same
    encoded = pa.RecordBatch.from_arrays(
        [c.dictionary_encode() if pa.types.is_string(c.type) else c for c in batch.columns],
        names=batch.schema.names,
    )
    again = score_batch(churn_model, encoded).to_pandas()
    assert again["prediction"].tolist() == plain["prediction"].tolist()
    same = again["probability_Yes"].to_numpy(), plain["probability_Yes"].to_numpy()
    assert same[0].tobytes() == same[1].tobytes()


def test_transform_of_partitions_fits_on_sample_and_splits_each(tmp_path: Path) -> None:
    from mlwp.data.transform_partitions import transform_partitioned

    definition = yaml.safe_load((ROOT / "dags/projects/churn/workflow.yaml").read_text())
    steps = definition["workflows"]["train"]["tasks"]["features"]["steps"]
    storage = Storage(str(tmp_path / "store"))
    ref = extract_partitioned(
        DATA.as_uri(), storage=storage, project="churn", name="raw", rows_per_partition=300
    )
    whole = run_transform(storage.read_dataset(ref.uri), steps)
    # A sample as large as the data is the data: the same fit as in memory.
    result = transform_partitioned(
        storage, ref.uri, steps, project="churn", name="features", sample_rows=10_000
    )
    assert result.preprocessing.to_json() == whole.preprocessing.to_json()
    assert result.fit_sample == {"rows": 1000, "seed": 16, "of_rows": 1000, "method": "bernoulli"}
    sizes = {split: r.rows for split, r in result.splits.items()}
    assert sum(sizes.values()) == 1000 - result.rows_filtered
    assert sizes == {split: len(rows) for split, rows in whole.splits.items()}
    train = storage.read_dataset(result.splits["train"].uri)
    assert list(train.columns) == list(whole.splits["train"].columns)
    sidecar = storage.read_sidecar(result.splits["train"].uri)
    assert sidecar["metadata"]["fit_sample"]["rows"] == 1000
    # A smaller sample: about the size asked for, seeded (the same twice).
    small = transform_partitioned(
        storage, ref.uri, steps, project="churn", name="small", sample_rows=400
    )
    again = transform_partitioned(
        storage, ref.uri, steps, project="churn", name="small", sample_rows=400
    )
    assert 300 < small.fit_sample["rows"] < 500
    assert small.preprocessing.to_json() == again.preprocessing.to_json()
    assert small.splits["train"].uri == again.splits["train"].uri


def test_staged_file_rows_are_renumbered_from_its_first_row(tmp_path: Path) -> None:
    """A SageMaker output numbers `row` from 0 per request; staging shifts it (docs/scale.md)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlwp.data.partitions import stage_file

    storage = Storage(str(tmp_path / "store"))
    table = pa.table({"row": pa.array(range(5), pa.int64()), "prediction": list("abcab")})
    pq.write_table(table, tmp_path / "part.out", row_group_size=2)  # several row groups
    source = (tmp_path / "part.out").as_uri()
    shifted = stage_file(
        storage, source, project="p", name="predict", key="k", index=1, first_row=10
    )
    copied = stage_file(storage, source, project="p", name="predict", key="k", index=0)
    read = pq.read_table(storage._fs(shifted["uri"])[1])
    assert read["row"].to_pylist() == [10, 11, 12, 13, 14]
    assert read["prediction"].to_pylist() == list("abcab") and shifted["rows"] == 5
    assert pq.read_table(storage._fs(copied["uri"])[1]).equals(table)


def _printed_by_a_new_process(code: str, unset: str, **extra: str) -> str:
    """What ``code`` prints in a new interpreter (process-wide settings stay out of this
    one), run with the environment less ``unset``, plus ``extra``."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != unset}
    ran = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, **extra},
        capture_output=True,
        text=True,
        check=True,
    )
    return ran.stdout.strip()


@pytest.mark.unit
def test_scoring_fixes_the_mmap_threshold_unless_the_operator_set_one() -> None:
    """Large freed blocks go back to the system (glibc's moving threshold let a 10M-row run
    hold 1.46x the memory of a 1M-row one); an operator's MALLOC_MMAP_THRESHOLD_ is kept."""
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    probe = "from mlwp.data.batch_scoring import fixed_mmap_threshold as f; print(f())"
    name = "MALLOC_MMAP_THRESHOLD_"
    assert _printed_by_a_new_process(probe, name) == "True"
    assert _printed_by_a_new_process(probe, name, **{name: "4194304"}) == "False"


@pytest.mark.unit
def test_scoring_allocates_arrow_buffers_with_malloc_unless_a_pool_is_chosen() -> None:
    """pyarrow's mimalloc kept freed pages (one 1M-row scoring in ten held ~1.5x the
    memory); an operator's ARROW_DEFAULT_MEMORY_POOL is kept."""
    probe = (
        "import pyarrow as pa; from mlwp.data.batch_scoring import system_memory_pool as f; "
        "print(f(), pa.default_memory_pool().backend_name)"
    )
    name = "ARROW_DEFAULT_MEMORY_POOL"
    assert _printed_by_a_new_process(probe, name) == "True system"
    assert _printed_by_a_new_process(probe, name, **{name: "mimalloc"}) == "False mimalloc"


def test_chunks_predicted_in_parts_give_the_whole_chunks_answers(
    churn_model: mlwp_model.Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk's rows split between the booster threads, and encoded in pieces (blocks
    below the mmap threshold): the same table, rows in order."""
    storage, ref, reader = partitioned(tmp_path, rows_per_partition=1000)
    width = len(churn_model.preprocessing.outputs)
    small = 4096 + 4 * width * 40  # pieces of at most 40 rows
    assert len(batch_scoring.pieces(333, width)) == 1
    tables = {}
    # chunks predicted whole, then in parts, then encoded in pieces predicted in parts
    for name, min_part_rows, threshold in [
        ("whole", 1_000_000, batch_scoring.MMAP_THRESHOLD_BYTES),
        ("parts", 1, batch_scoring.MMAP_THRESHOLD_BYTES),
        ("pieces", 1, small),
    ]:
        monkeypatch.setattr(batch_scoring, "MIN_PART_ROWS", min_part_rows)
        monkeypatch.setattr(batch_scoring, "MMAP_THRESHOLD_BYTES", threshold)
        schema, scored = score_partition(churn_model, reader, reader.partitions[0], chunk_rows=333)
        tables[name] = pa.Table.from_batches(list(scored), schema)
    assert [len(batch_scoring.pieces(333, width))] == [9]  # 333 rows in pieces of 37
    assert tables["parts"].equals(tables["whole"])
    assert tables["pieces"].equals(tables["whole"])
    assert tables["pieces"]["row"].to_pylist() == list(range(ref.rows))
    assert_served(churn_model, storage.read_dataset(ref.uri), tables["pieces"].to_pandas())


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc_trim")
def test_scoring_gives_freed_heap_pages_back_first() -> None:
    assert batch_scoring.trim_heap() is True


@pytest.mark.parametrize(
    "library",
    [
        lambda name: object(),  # musl, macOS: no malloc_trim
        lambda name: (_ for _ in ()).throw(OSError("no C library")),
    ],
)
def test_trimming_the_heap_is_a_no_op_without_glibc(
    monkeypatch: pytest.MonkeyPatch, library: Any
) -> None:
    import ctypes

    monkeypatch.setattr(ctypes, "CDLL", library)
    assert batch_scoring.trim_heap() is False


@pytest.mark.parametrize("threshold", ["whole", "pieces"])
def test_a_booster_threads_failure_ends_the_scoring_with_it(
    churn_model: mlwp_model.Model,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    threshold: str,
) -> None:
    """A prediction that raises in a booster thread raises from the scored chunks (no
    hang, no chunk skipped), and the process's boosters score the next partition."""
    import threading

    _, _, reader = partitioned(tmp_path, rows_per_partition=1000)
    if threshold == "pieces":
        width = len(churn_model.preprocessing.outputs)
        monkeypatch.setattr(batch_scoring, "MIN_PART_ROWS", 1)
        monkeypatch.setattr(batch_scoring, "MMAP_THRESHOLD_BYTES", 4096 + 4 * width * 40)
    real = batch_scoring.raw_scores
    calls: list[int] = []

    def fails_once_in_a_while(model: Any, matrix: Any) -> Any:
        calls.append(len(matrix))
        if len(calls) == 5:
            raise RuntimeError("booster failed")
        return real(model, matrix)

    monkeypatch.setattr(batch_scoring, "raw_scores", fails_once_in_a_while)
    outcome: list[BaseException | int] = []

    def score() -> None:
        try:
            _, scored = score_partition(churn_model, reader, reader.partitions[0], chunk_rows=100)
            outcome.append(sum(batch.num_rows for batch in scored))
        except BaseException as exc:  # reported to the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=score, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "scoring hung after a booster failed"
    assert isinstance(outcome[0], RuntimeError)
    monkeypatch.setattr(batch_scoring, "raw_scores", real)
    _, scored = score_partition(churn_model, reader, reader.partitions[0], chunk_rows=100)
    assert sum(batch.num_rows for batch in scored) == reader.partitions[0].rows


def test_the_switch_interval_is_shortened_while_scoring_then_restored(
    churn_model: mlwp_model.Model, tmp_path: Path
) -> None:
    _, _, reader = partitioned(tmp_path, rows_per_partition=1000)
    before = sys.getswitchinterval()
    _, scored = score_partition(churn_model, reader, reader.partitions[0], chunk_rows=100)
    next(scored)
    assert sys.getswitchinterval() == batch_scoring.SWITCH_SECONDS
    scored.close()  # stopped early: restored too
    assert sys.getswitchinterval() == before


def test_the_booster_threads_start_with_their_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both threads are up (XGBoost configured in each) before the first chunk's parts
    arrive: the second one used to start only when the first chunk's second part did."""
    monkeypatch.setattr(batch_scoring, "_boosters", {})
    pool = batch_scoring.booster_threads()
    try:
        # started by the pool's creation (a barrier holds each until all are up)
        assert len(pool._threads) == batch_scoring.BOOSTERS
        assert all(thread.is_alive() for thread in pool._threads)
        assert pool.submit(lambda: 1).result(timeout=5) == 1
    finally:
        pool.shutdown(wait=True)


def test_the_trees_compiled_to_c_score_partitions_as_xgboost(
    churn_model: mlwp_model.Model, churn_model_path: Path, tmp_path: Path
) -> None:
    """With the trees compiled to C (as serving scores), every chunk's answers are
    XGBoost's, in trials and after the choice; a second load takes them from the cache."""
    from checkers import c_compiler

    c_compiler()  # skipped without one, failed in CI
    _, _, reader = partitioned(tmp_path, rows_per_partition=1000)
    model = mlwp_model.load(churn_model_path)  # its own predictor: the fixture's stays XGBoost
    cache = tmp_path / "native-trees"
    assert batch_scoring.native_trees(model, cache).startswith("trees compiled to C")
    predictor = model.predictor
    assert predictor.native is not None
    assert predictor.chooser.trials == batch_scoring.NATIVE_TRIALS
    native = predictor.native
    calls: list[tuple[int, bool]] = []
    real = native.predict

    def counted(matrix: np.ndarray) -> np.ndarray:
        # the encoder's column-major blocks are read as they are (no row-order copy)
        calls.append((len(matrix), matrix.flags.f_contiguous))
        return real(matrix)

    native.predict = counted  # type: ignore[method-assign]
    for chunk_rows in (100, 37):  # enough chunks for the trials, then the chosen side
        for partition in reader.partitions:
            expected = scored_table(churn_model, reader, partition, chunk_rows)
            assert scored_table(model, reader, partition, chunk_rows).equals(expected)
    assert calls and all(by_columns for _, by_columns in calls)
    assert predictor.chooser.chosen  # decided after NATIVE_TRIALS batches a side
    assert len(list(cache.glob("trees-*.so"))) == 1
    again = mlwp_model.load(churn_model_path)
    assert batch_scoring.native_trees(again, cache).startswith("trees compiled to C")
    assert len(list(cache.glob("trees-*.so"))) == 1  # loaded, not built again


def test_without_a_compiler_xgboost_scores(
    churn_model: mlwp_model.Model,
    churn_model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, _, reader = partitioned(tmp_path, rows_per_partition=1000)
    monkeypatch.setenv("CC", "false")  # a compiler that fails every build
    model = mlwp_model.load(churn_model_path)
    said = batch_scoring.native_trees(model, tmp_path / "native-trees")
    assert said.startswith("XGBoost (building the trees failed")
    assert model.predictor.native is None
    partition = reader.partitions[0]
    expected = scored_table(churn_model, reader, partition, 100)
    assert scored_table(model, reader, partition, 100).equals(expected)


def scored_table(
    model: mlwp_model.Model, reader: PartitionedReader, partition: Any, chunk_rows: int
) -> pa.Table:
    schema, scored = score_partition(model, reader, partition, chunk_rows=chunk_rows)
    return pa.Table.from_batches(list(scored), schema)
