"""Training with XGBoost's external memory: same entry point, same model format, same metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlwp import model as mlwp_model
from mlwp.data.transform import run_transform
from mlwp.training import entrypoint, external_memory
from mlwp.training.core import TrainingConfig, TrainingError
from mlwp.training.local import prepare_workdir

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "fixtures" / "data" / "telco_churn_sample.csv"
HYPER = {
    "target": "churn",
    "num_boost_round": 40,
    "early_stopping_rounds": 5,
    "max_depth": 3,
    "nthread": 1,
    "seed": 3,
}


@pytest.fixture(scope="module")
def churn() -> tuple[dict[str, pd.DataFrame], object]:
    definition = yaml.safe_load((ROOT / "dags/projects/churn/workflow.yaml").read_text())
    steps = definition["workflows"]["train"]["tasks"]["features"]["steps"]
    result = run_transform(pd.read_csv(SAMPLE), steps)
    return result.splits, result.preprocessing


def _partitioned(environ: dict[str, str], parts: int) -> None:
    """Cut each channel's data.parquet into ``parts`` files, as a partitioned split is."""
    for name in ("train", "validation", "test"):
        folder = Path(environ[f"SM_CHANNEL_{name.upper()}"])
        frame = pd.read_parquet(folder / "data.parquet")
        (folder / "data.parquet").unlink()
        bounds = np.linspace(0, len(frame), parts + 1).astype(int)
        for index in range(parts):
            piece = frame.iloc[bounds[index] : bounds[index + 1]]
            piece.to_parquet(folder / f"part-{index}.parquet", index=False)


def _train(workdir: Path, churn, data: str, batch_rows: int | None = None, **extra):  # type: ignore[no-untyped-def]
    splits, preprocessing = churn
    environ = prepare_workdir(workdir, splits, preprocessing, {**HYPER, **extra, "data": data})
    _partitioned(environ, 3)
    if batch_rows:
        original = external_memory.BATCH_ROWS
        external_memory.BATCH_ROWS = batch_rows
    try:
        metrics = entrypoint.run(environ)
    finally:
        if batch_rows:
            external_memory.BATCH_ROWS = original
    return metrics, Path(environ["SM_MODEL_DIR"])


def test_external_memory_trains_a_model_serving_loads_with_the_same_metrics(
    churn, tmp_path: Path
) -> None:
    in_memory, memory_dir = _train(tmp_path / "memory", churn, "in_memory")
    external, external_dir = _train(tmp_path / "external", churn, "external_memory")

    # Same model format: serving's loader reads it and answers raw records.
    model = mlwp_model.load(external_dir)
    records = churn[0]["test"].drop(columns=["churn"]).head(10).to_dict("records")
    assert len(model.predict(records).probabilities) == 10
    assert json.loads((external_dir / "mlwp.json").read_text())["data"] == "external_memory"
    # Same metrics on every split, with early stopping on the validation split; the quantile
    # sketch over several batches may place a few cuts differently, nothing more.
    assert set(external) == set(in_memory)
    for name in ("train:roc_auc", "validation:roc_auc", "test:roc_auc"):
        assert external[name] == pytest.approx(in_memory[name], abs=0.02), name
    rows = json.loads((external_dir / "mlwp.json").read_text())["rows"]
    assert rows == {name: len(frame) for name, frame in churn[0].items()}
    # The page cache lived beside the model folder and is gone.
    assert not (external_dir.parent / entrypoint.CACHE_FOLDER).exists()
    assert memory_dir.is_dir()


def test_batches_smaller_than_a_file_give_the_same_rows(churn, tmp_path: Path) -> None:
    metrics, model_dir = _train(tmp_path, churn, "external_memory", batch_rows=97)
    assert metrics["validation:roc_auc"] > 0.7
    rows = json.loads((model_dir / "mlwp.json").read_text())["rows"]
    assert rows["train"] == len(churn[0]["train"])


def test_bad_label_in_a_batch_names_the_file(churn, tmp_path: Path) -> None:
    splits, preprocessing = churn
    broken = dict(splits)
    train = splits["train"].copy()
    train.loc[train.index[-1], "churn"] = None
    broken["train"] = train
    environ = prepare_workdir(tmp_path, broken, preprocessing, {**HYPER, "data": "external_memory"})
    _partitioned(environ, 3)
    with pytest.raises(TrainingError, match=r"part-2\.parquet: train: target 'churn'"):
        entrypoint.run(environ)
    assert not (tmp_path / entrypoint.CACHE_FOLDER).exists()


def test_auto_turns_external_memory_on_above_the_documented_size() -> None:
    cells = external_memory.AUTO_CELLS
    assert not external_memory.uses_external_memory("auto", cells // 10, 10)
    assert external_memory.uses_external_memory("auto", cells // 10 + 1, 10)
    assert external_memory.uses_external_memory("external_memory", 10, 1)
    assert not external_memory.uses_external_memory("in_memory", cells, 10)
    with pytest.raises(TrainingError, match="data: expected one of auto, in_memory"):
        TrainingConfig.from_hyperparameters({"target": "y", "data": "disk"})


def test_definition_refuses_tuning_with_external_memory() -> None:
    from pydantic import ValidationError

    from mlwp.definitions.schema import TrainTask

    tuning = {"ranges": {"max_depth": {"min": 2, "max": 6, "integer": True}}}
    with pytest.raises(ValidationError, match="cannot run with 'data: external_memory'"):
        TrainTask(target="churn", data="external_memory", tuning=tuning)
    assert TrainTask(target="churn", data="auto", tuning=tuning).data == "auto"
    assert TrainTask(target="churn", data="external_memory").data == "external_memory"
