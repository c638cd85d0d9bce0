"""The training entry point: SageMaker script mode, and the local backend's subprocess.

Run as ``python -m mlwp.training.entrypoint``. It reads, with SageMaker's defaults:

- ``$SM_INPUT_CONFIG_DIR/hyperparameters.json`` (``/opt/ml/input/config``): every value may
  be a JSON-encoded string, as SageMaker passes them. ``target`` is required; ``objective``
  (binary, multiclass, regression), ``num_boost_round``, ``early_stopping_rounds``, ``seed``,
  ``threshold``, ``verbose_eval`` and ``params`` (a dict) are mlwp's; any other key is an
  XGBoost parameter;
- ``$SM_CHANNEL_TRAIN`` (``/opt/ml/input/data/train``): the *raw* training rows as one or more
  ``*.parquet`` files, plus ``preprocessing.json`` (the fitted preprocessing of the transform
  task; without it the columns are used as they are). Nothing is fitted here besides the booster;
- ``$SM_CHANNEL_VALIDATION`` (optional): raw validation rows, for early stopping and metrics;
- ``$SM_CHANNEL_TEST`` (optional): raw test rows, for metrics only;
- ``$SM_CHANNEL_PREPROCESSING`` (optional): where ``preprocessing.json`` is when the train
  channel is sharded over several hosts.

The hyperparameter ``data`` (``auto``, ``in_memory``, ``external_memory``) says whether the
splits are read whole or streamed through XGBoost's external memory
(:mod:`mlwp.training.external_memory`); with several hosts (``SM_HOSTS``) the hosts train one
model together (:mod:`mlwp.training.distributed`).

It writes the model directory (``model.ubj``, ``mlwp.json``, ``preprocessing.json``; see
:mod:`mlwp.model`) to ``$SM_MODEL_DIR`` (``/opt/ml/model``), ``metrics.json`` to
``$SM_OUTPUT_DATA_DIR`` (``/opt/ml/output/data``), prints metric lines (see
:mod:`mlwp.training.metrics`) and, on failure, writes the reason to
``$SM_OUTPUT_DIR/failure`` (``/opt/ml/output``, SageMaker's FailureReason) and exits 1.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from mlwp.errors import MlwpError
from mlwp.model import PREPROCESSING_FILE, save
from mlwp.model.features import PreprocessingError
from mlwp.model.preprocessing import Preprocessing
from mlwp.training.core import (
    TrainingConfig,
    TrainingError,
    boost,
    dataset,
    label_classes,
    predict_raw,
    train_booster,
)
from mlwp.training.distributed import (
    Cluster,
    check_same_on_hosts,
    cluster_of,
    collective,
    total_of_hosts,
    union_of_hosts,
)
from mlwp.training.external_memory import (
    cache_folder,
    ext_memory_matrix,
    first_frame,
    parquet_files,
    shape_of,
    streamed_classes,
    streamed_predictions,
    uses_external_memory,
)
from mlwp.training.metrics import compute_metrics, metric_line

if TYPE_CHECKING:
    import pandas as pd
    import xgboost

DEFAULTS = {
    "SM_INPUT_CONFIG_DIR": "/opt/ml/input/config",
    "SM_CHANNEL_TRAIN": "/opt/ml/input/data/train",
    "SM_CHANNEL_VALIDATION": "/opt/ml/input/data/validation",
    "SM_CHANNEL_TEST": "/opt/ml/input/data/test",
    "SM_CHANNEL_PREPROCESSING": "/opt/ml/input/data/preprocessing",
    "SM_MODEL_DIR": "/opt/ml/model",
    "SM_OUTPUT_DATA_DIR": "/opt/ml/output/data",
    "SM_OUTPUT_DIR": "/opt/ml/output",
}
METRICS_FILE = "metrics.json"
# XGBoost's external-memory page cache, a sibling of SM_MODEL_DIR (removed after training).
CACHE_FOLDER = "xgboost-cache"


def _env(name: str, environ: Mapping[str, str]) -> Path:
    return Path(environ.get(name) or DEFAULTS[name])


def decode_hyperparameters(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Undo SageMaker's encoding: each string value that is valid JSON is decoded."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str):
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        else:
            out[key] = value
    return out


def read_channel(path: Path, channel: str) -> pd.DataFrame:
    """All Parquet files of a channel directory (or one file), concatenated in name order."""
    files = parquet_files(path)
    if not files:
        raise TrainingError(f"channel {channel}: no *.parquet file in {path}")
    return _read_files(files)


def _read_files(files: list[Path]) -> pd.DataFrame:
    import pandas as pd

    frames = [pd.read_parquet(file) for file in files]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


@dataclass
class Trained:
    """What either way of holding the data produced."""

    booster: xgboost.Booster
    best_iteration: int
    classes: list[Any] | None
    metrics: dict[str, float]
    rows: dict[str, int]


def run(environ: Mapping[str, str]) -> dict[str, float]:
    """Train once with the SageMaker environment contract; returns the final metrics."""
    started = time.monotonic()
    config_file = _env("SM_INPUT_CONFIG_DIR", environ) / "hyperparameters.json"
    if not config_file.is_file():
        raise TrainingError(f"hyperparameters file not found: {config_file}")
    try:
        hyperparameters = decode_hyperparameters(orjson.loads(config_file.read_bytes()))
    except orjson.JSONDecodeError as exc:
        raise TrainingError(f"{config_file}: not valid JSON: {exc}") from exc
    config = TrainingConfig.from_hyperparameters(hyperparameters)

    train_dir = _env("SM_CHANNEL_TRAIN", environ)
    if not train_dir.exists():
        raise TrainingError(f"channel train: {train_dir} does not exist")
    files = {"train": parquet_files(train_dir)}
    if not files["train"]:
        raise TrainingError(f"channel train: no *.parquet file in {train_dir}")
    for name, variable in (("validation", "SM_CHANNEL_VALIDATION"), ("test", "SM_CHANNEL_TEST")):
        directory = _env(variable, environ)
        if directory.exists() and parquet_files(directory):
            files[name] = parquet_files(directory)
    rows, columns = shape_of(files["train"])
    external = uses_external_memory(config.data, rows, columns)

    # In the train channel, or in a channel of its own when the train channel is sharded
    # over several hosts (mlwp.training.distributed).
    preprocessing_file = (
        _env("SM_CHANNEL_PREPROCESSING", environ)
        if environ.get("SM_CHANNEL_PREPROCESSING")
        else train_dir
        if train_dir.is_dir()
        else train_dir.parent
    ) / PREPROCESSING_FILE
    try:
        preprocessing = (
            Preprocessing.from_json(preprocessing_file.read_bytes())
            if preprocessing_file.is_file()
            # the columns as they are: inferred from the first batch with external memory
            else Preprocessing.identity(
                first_frame(files["train"]) if external else _read_files(files["train"])
            )
        ).with_target(config.target)
    except PreprocessingError as exc:
        raise TrainingError(f"{preprocessing_file.name}: {exc.message}") from exc

    cluster = cluster_of(environ, config_file.parent)
    print(
        f"mlwp: training {config.objective} on {rows} rows, {len(preprocessing.outputs)} "
        f"features, {'external memory' if external else 'in memory'} (data: {config.data})"
        + (f", host {cluster.current} of {len(cluster.hosts)}" if cluster else ""),
        flush=True,
    )
    with collective(cluster):
        check_same_on_hosts(preprocessing.to_json(), "the preprocessing", cluster)
        if external:
            trained = _train_external_memory(config, preprocessing, files, environ, cluster)
        else:
            trained = _train_in_memory(config, preprocessing, files, cluster)
        trained.rows["train"] = total_of_hosts(trained.rows["train"], cluster)
    if cluster is not None and not cluster.is_master:
        # One model per job: the first host's (mlwp.training.distributed).
        print(f"mlwp: host {cluster.current} done; {cluster.master} writes the model", flush=True)
        return trained.metrics
    booster = trained.booster
    metrics = dict(trained.metrics)
    metrics["best_iteration"] = float(trained.best_iteration)
    metrics["training_seconds"] = time.monotonic() - started
    for name, value in metrics.items():
        print(metric_line(name, value), flush=True)

    model_dir = _env("SM_MODEL_DIR", environ)
    save(
        model_dir,
        booster,
        preprocessing,
        objective=config.objective,
        classes=trained.classes,
        extra={
            "threshold": config.threshold,
            "best_iteration": trained.best_iteration,
            "num_boost_round": config.num_boost_round,
            "early_stopping_rounds": config.early_stopping_rounds,
            "seed": config.seed,
            "params": config.xgboost_params(_num_class(config, trained.classes)),
            "metrics": {k: v for k, v in metrics.items() if k != "training_seconds"},
            "rows": trained.rows,
            "data": "external_memory" if external else "in_memory",
        },
    )
    output_dir = _env("SM_OUTPUT_DATA_DIR", environ)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / METRICS_FILE).write_bytes(orjson.dumps(metrics, option=orjson.OPT_INDENT_2))
    return metrics


def _num_class(config: TrainingConfig, classes: list[Any] | None) -> int | None:
    return len(classes) if config.objective == "multiclass" and classes else None


def _split_metrics(
    config: TrainingConfig, split: str, labels: Any, outputs: Any
) -> dict[str, float]:
    values = compute_metrics(config.objective, labels, outputs, config.threshold)
    return {f"{split}:{metric}": value for metric, value in values.items()}


def _agreed(
    preprocessing: Preprocessing, classes: list[Any] | None, cluster: Cluster | None
) -> list[Any] | None:
    """The classes every host uses: the union of the hosts' shards' (unless fitted)."""
    if classes is None or preprocessing.label_classes is not None:
        return classes
    return union_of_hosts(classes, cluster)


def _train_in_memory(
    config: TrainingConfig,
    preprocessing: Preprocessing,
    files: Mapping[str, list[Path]],
    cluster: Cluster | None,
) -> Trained:
    """Every split read whole into one DataFrame and one matrix (the default below
    ``external_memory.AUTO_CELLS``)."""
    splits = {name: _read_files(paths) for name, paths in files.items()}
    classes = _agreed(
        preprocessing, label_classes(preprocessing, splits["train"], config.objective), cluster
    )
    data = {
        name: dataset(preprocessing, frame, config.objective, classes, name)
        for name, frame in splits.items()
    }
    booster, best_iteration = train_booster(
        config,
        data["train"],
        data.get("validation"),
        preprocessing.outputs,
        _num_class(config, classes),
    )
    metrics: dict[str, float] = {}
    for name, split in data.items():
        outputs = predict_raw(booster, split.matrix)
        metrics.update(_split_metrics(config, name, split.labels, outputs))
    rows = {name: len(frame) for name, frame in splits.items()}
    return Trained(booster, best_iteration, classes, metrics, rows)


def _train_external_memory(
    config: TrainingConfig,
    preprocessing: Preprocessing,
    files: Mapping[str, list[Path]],
    environ: Mapping[str, str],
    cluster: Cluster | None,
) -> Trained:
    """The splits streamed batch by batch; XGBoost's pages cached beside the model folder."""
    import gc

    classes = _agreed(
        preprocessing, streamed_classes(preprocessing, files["train"], config.objective), cluster
    )
    num_class = _num_class(config, classes)
    # Beside SM_MODEL_DIR: the local backend's working folder, or SageMaker's ML storage
    # volume (/opt/ml), sized by volume_size_gb; never inside the model or output folders,
    # which are uploaded.
    cache = _env("SM_MODEL_DIR", environ).parent / CACHE_FOLDER
    nthread = config.params.get("nthread")
    with cache_folder(cache):
        dtrain = ext_memory_matrix(
            files["train"],
            preprocessing,
            config.objective,
            classes,
            "train",
            cache_dir=cache,
            nthread=nthread,
        )
        dvalid = None
        if "validation" in files:
            dvalid = ext_memory_matrix(
                files["validation"],
                preprocessing,
                config.objective,
                classes,
                "validation",
                cache_dir=cache,
                ref=dtrain,
                nthread=nthread,
            )
        booster, best_iteration = boost(config, dtrain, dvalid, num_class)
        del dtrain, dvalid
        gc.collect()
    metrics: dict[str, float] = {}
    rows: dict[str, int] = {}
    for name, paths in files.items():
        labels, outputs, rows[name] = streamed_predictions(
            booster, paths, preprocessing, objective=config.objective, classes=classes, split=name
        )
        metrics.update(_split_metrics(config, name, labels, outputs))
        del labels, outputs
    return Trained(booster, best_iteration, classes, metrics, rows)


def _write_failure(environ: Mapping[str, str], message: str) -> None:
    failure = _env("SM_OUTPUT_DIR", environ) / "failure"
    try:
        failure.parent.mkdir(parents=True, exist_ok=True)
        failure.write_text(message[:1000])
    except OSError as exc:  # no writable output folder: stderr still carries the reason
        print(f"mlwp: could not write {failure}: {exc}", file=sys.stderr)


def main() -> None:
    """Console entry: train, or print the reason and exit 1."""
    environ = dict(os.environ)
    try:
        run(environ)
    except MlwpError as exc:
        message = f"{exc.code}: {exc.message}"
        print(f"mlwp: training failed: {message}", file=sys.stderr, flush=True)
        _write_failure(environ, message)
        sys.exit(1)


if __name__ == "__main__":
    main()
