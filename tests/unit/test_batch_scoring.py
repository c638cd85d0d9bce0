"""Chunked scoring of partitions (mlwp.batch_scoring) gives serving's answers, in bounded pieces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlwp import model as mlwp_model
from mlwp.batch_scoring import score_stream
from mlwp.etl import extract_partitioned
from mlwp.partitions import PartitionedReader, commit_staged, copy_dataset, stage_part
from mlwp.storage import Storage
from mlwp.training import entrypoint
from mlwp.training.local import prepare_workdir
from mlwp.transform import run_transform

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "fixtures" / "data" / "telco_churn_sample.csv"


@pytest.fixture(scope="module")
def churn_model(tmp_path_factory: pytest.TempPathFactory) -> mlwp_model.Model:
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
    return mlwp_model.load(workdir / "model")


def test_partitions_scored_in_chunks_match_serving(
    churn_model: mlwp_model.Model, tmp_path: Path
) -> None:
    storage = Storage(str(tmp_path / "store"))
    ref = extract_partitioned(
        DATA.as_uri(), storage=storage, project="churn", name="raw", rows_per_partition=150
    )
    reader = PartitionedReader(storage, ref.uri)
    assert len(reader.partitions) > 2
    staged = []
    for index, partition in enumerate(reader.partitions):
        batches = reader.batches(partition, batch_rows=64)  # several chunks per partition
        head = next(batches)
        schema, scored = score_stream(churn_model, [head, *batches], head.schema)
        part = stage_part(
            storage, schema, scored, project="churn", name="predict", key="r1", index=index
        )
        staged.append(part)
    out = commit_staged(
        storage, list(reversed(staged)), project="churn", name="predict", source=ref.uri
    )
    assert out.rows == ref.rows
    scored = storage.read_dataset(out.uri)
    raw = storage.read_dataset(ref.uri)
    pd.testing.assert_frame_equal(scored[raw.columns.tolist()], raw)  # rows kept, in order
    served = churn_model.predict(raw.to_dict(orient="records"))
    assert scored["prediction"].tolist() == served.predictions
    assert served.probabilities is not None
    labels = churn_model.classes or []
    for index, label in enumerate(labels):
        expected = np.array([row[index] for row in served.probabilities])
        np.testing.assert_allclose(scored[f"probability_{label}"], expected, rtol=1e-6)
    # Staged files were moved into the dataset; copying it out keeps the partition files.
    copy_dataset(storage, out.uri, (tmp_path / "export").as_uri())
    exported = pd.read_parquet(tmp_path / "export")
    assert len(exported) == ref.rows
    assert not list((tmp_path / "store").rglob(".staging-*"))


def test_transform_of_partitions_fits_on_sample_and_splits_each(tmp_path: Path) -> None:
    from mlwp.transform_partitions import transform_partitioned

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
