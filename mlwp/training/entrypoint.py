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
- ``$SM_CHANNEL_TEST`` (optional): raw test rows, for metrics only.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from mlwp.errors import MlwpError
from mlwp.model import PREPROCESSING_FILE, save
from mlwp.preprocessing import Preprocessing, PreprocessingError
from mlwp.training.core import (
    TrainingConfig,
    TrainingError,
    dataset,
    label_classes,
    predict_raw,
    train_booster,
)
from mlwp.training.metrics import compute_metrics, metric_line

if TYPE_CHECKING:
    import pandas as pd

DEFAULTS = {
    "SM_INPUT_CONFIG_DIR": "/opt/ml/input/config",
    "SM_CHANNEL_TRAIN": "/opt/ml/input/data/train",
    "SM_CHANNEL_VALIDATION": "/opt/ml/input/data/validation",
    "SM_CHANNEL_TEST": "/opt/ml/input/data/test",
    "SM_MODEL_DIR": "/opt/ml/model",
    "SM_OUTPUT_DATA_DIR": "/opt/ml/output/data",
    "SM_OUTPUT_DIR": "/opt/ml/output",
}
METRICS_FILE = "metrics.json"


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
    import pandas as pd

    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    if not files:
        raise TrainingError(f"channel {channel}: no *.parquet file in {path}")
    frames = [pd.read_parquet(file) for file in files]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


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
    train_frame = read_channel(train_dir, "train")
    splits: dict[str, pd.DataFrame] = {"train": train_frame}
    for name, variable in (("validation", "SM_CHANNEL_VALIDATION"), ("test", "SM_CHANNEL_TEST")):
        directory = _env(variable, environ)
        if directory.exists() and (directory.is_file() or any(directory.glob("*.parquet"))):
            splits[name] = read_channel(directory, name)

    preprocessing_file = (
        train_dir if train_dir.is_dir() else train_dir.parent
    ) / PREPROCESSING_FILE
    try:
        preprocessing = (
            Preprocessing.from_json(preprocessing_file.read_bytes())
            if preprocessing_file.is_file()
            else Preprocessing.identity(train_frame)
        ).with_target(config.target)
    except PreprocessingError as exc:
        raise TrainingError(f"{preprocessing_file.name}: {exc.message}") from exc

    classes = label_classes(preprocessing, train_frame, config.objective)
    data = {
        name: dataset(preprocessing, frame, config.objective, classes, name)
        for name, frame in splits.items()
    }
    num_class = len(classes) if config.objective == "multiclass" and classes else None
    print(
        f"mlwp: training {config.objective} on {len(train_frame)} rows, "
        f"{len(preprocessing.outputs)} features, classes {classes}",
        flush=True,
    )
    booster, best_iteration = train_booster(
        config, data["train"], data.get("validation"), preprocessing.outputs, num_class
    )
    metrics: dict[str, float] = {}
    for name, split in data.items():
        values = compute_metrics(
            config.objective, split.labels, predict_raw(booster, split.matrix), config.threshold
        )
        metrics.update({f"{name}:{metric}": value for metric, value in values.items()})
    metrics["best_iteration"] = float(best_iteration)
    metrics["training_seconds"] = time.monotonic() - started
    for name, value in metrics.items():
        print(metric_line(name, value), flush=True)

    model_dir = _env("SM_MODEL_DIR", environ)
    save(
        model_dir,
        booster,
        preprocessing,
        objective=config.objective,
        classes=classes,
        extra={
            "threshold": config.threshold,
            "best_iteration": best_iteration,
            "num_boost_round": config.num_boost_round,
            "early_stopping_rounds": config.early_stopping_rounds,
            "seed": config.seed,
            "params": config.xgboost_params(num_class),
            "metrics": {k: v for k, v in metrics.items() if k != "training_seconds"},
            "rows": {name: len(frame) for name, frame in splits.items()},
        },
    )
    output_dir = _env("SM_OUTPUT_DATA_DIR", environ)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / METRICS_FILE).write_bytes(orjson.dumps(metrics, option=orjson.OPT_INDENT_2))
    return metrics


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
