"""Training on more rows than memory holds: XGBoost's external memory over Parquet files.

The entry point's channels are folders of Parquet files (the transform's split partitions).
In memory, the entry point reads them whole into one DataFrame and one float64 matrix, about
0.7 KiB per row of a churn-like table. With external memory it never holds more than one
batch of rows:

- :class:`ParquetBatches` is an :class:`xgboost.DataIter` that reads the files one record
  batch (at most ``batch_rows`` rows) at a time and turns each into the feature matrix and
  encoded labels with the same :func:`mlwp.training.core.dataset` as the in-memory path;
- the training split becomes an :class:`xgboost.ExtMemQuantileDMatrix`: XGBoost reads the
  batches twice (quantile sketch, then the gradient index) and keeps the quantised pages in
  a cache on disk (``<cache_dir>/train-*.gradient_index.page``, about one byte per cell),
  read back through mmap while trees grow; the validation split becomes one too, quantised
  with the training split's cuts (``ref``), so early stopping and the per-round evaluation
  work as in memory;
- the final metrics are the same :func:`mlwp.training.metrics.compute_metrics` on the
  concatenated labels and predictions, computed batch by batch.

What still grows with rows (XGBoost concatenates everything but the features: labels,
gradients, the prediction cache; and the final metrics need every label and prediction):
about 40 bytes per training row, against about 700 in memory (docs/scale.md).

The cache folder is the caller's; :func:`cache_folder` removes it when training ends, failed
or not. Tuning is refused with external memory (docs/scale.md, "Training beyond memory").
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlwp.training.core import DATA_MODES, TrainingError, dataset, label_classes

if TYPE_CHECKING:
    import pandas as pd
    import xgboost

    from mlwp.model.preprocessing import Preprocessing

AUTO, IN_MEMORY, EXTERNAL_MEMORY = DATA_MODES
# `data: auto` trains with external memory above this many cells (rows x columns) in the
# training split: about 1.5 GB held in memory at the measured 75 bytes per cell, a third of
# a 4 GiB worker (docs/scale.md).
AUTO_CELLS = 20_000_000
# Rows per batch handed to XGBoost: XGBoost prefers few large batches (each batch is a cache
# page it iterates per tree level); this many rows of a narrow table is tens of MB.
BATCH_ROWS = 262_144


def parquet_files(path: Path) -> list[Path]:
    """The Parquet files of a channel (a folder, or one file), in name order."""
    return [path] if path.is_file() else sorted(path.glob("*.parquet"))


def shape_of(files: Sequence[Path]) -> tuple[int, int]:
    """Rows and columns of Parquet files, from their footers (no row is read)."""
    import pyarrow.parquet as pq

    rows, columns = 0, 0
    for file in files:
        metadata = pq.ParquetFile(file).metadata
        rows += metadata.num_rows
        columns = max(columns, metadata.num_columns)
    return rows, columns


def uses_external_memory(mode: str, rows: int, columns: int) -> bool:
    """Whether a training split of this shape trains with external memory under ``mode``."""
    if mode not in DATA_MODES:
        raise TrainingError(
            f"hyperparameters.data: expected one of {', '.join(DATA_MODES)}, got {mode!r}"
        )
    if mode == AUTO:
        return rows * columns > AUTO_CELLS
    return mode == EXTERNAL_MEMORY


def frames(
    files: Sequence[Path], *, batch_rows: int = BATCH_ROWS, columns: list[str] | None = None
) -> Iterator[tuple[Path, pd.DataFrame]]:
    """Each file's rows as DataFrames of at most ``batch_rows`` rows, file by file."""
    import pyarrow.parquet as pq

    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows, columns=columns):
            yield file, batch.to_pandas()


def first_frame(files: Sequence[Path]) -> pd.DataFrame:
    """The first batch of rows (to infer the inputs when there is no preprocessing)."""
    for _, frame in frames(files, batch_rows=1024):
        return frame
    raise TrainingError(f"no rows in {', '.join(map(str, files))}")


def streamed_classes(
    preprocessing: Preprocessing, files: Sequence[Path], objective: str
) -> list[Any] | None:
    """:func:`label_classes` over every row, reading only the target column."""
    import pandas as pd

    target = preprocessing.target
    if objective == "regression" or preprocessing.label_classes is not None or target is None:
        return label_classes(preprocessing, first_frame(files), objective)
    distinct: list[pd.Series] = []
    for _, frame in frames(files, columns=[target]):
        distinct.append(frame[target].drop_duplicates())
    values = pd.concat(distinct, ignore_index=True).drop_duplicates().to_frame()
    return label_classes(preprocessing, values, objective)


@cache
def _iterator_class() -> type:
    import xgboost

    class ParquetBatches(xgboost.DataIter):  # type: ignore[misc]
        """Feed XGBoost one batch of a split's Parquet files at a time."""

        def __init__(
            self,
            files: Sequence[Path],
            encode: Callable[[Path, pd.DataFrame], tuple[Any, Any]],
            *,
            feature_names: list[str],
            cache_prefix: str,
            batch_rows: int,
        ) -> None:
            self.files = list(files)
            self.encode = encode
            self.feature_names = feature_names
            self.batch_rows = batch_rows
            self._batches: Iterator[tuple[Path, pd.DataFrame]] | None = None
            # release_data: a batch's matrix is dropped once XGBoost has copied it.
            super().__init__(cache_prefix=cache_prefix, release_data=True)

        def next(self, input_data: Callable[..., None]) -> bool:
            if self._batches is None:
                self._batches = frames(self.files, batch_rows=self.batch_rows)
            item = next(self._batches, None)
            if item is None:
                return False
            matrix, labels = self.encode(*item)
            input_data(data=matrix, label=labels, feature_names=self.feature_names)
            return True

        def reset(self) -> None:
            self._batches = None

    return ParquetBatches


def ext_memory_matrix(
    files: Sequence[Path],
    preprocessing: Preprocessing,
    objective: str,
    classes: Sequence[Any] | None,
    split: str,
    *,
    cache_dir: Path,
    ref: xgboost.DMatrix | None = None,
    batch_rows: int = BATCH_ROWS,
    nthread: int | None = None,
) -> xgboost.DMatrix:
    """An ExtMemQuantileDMatrix over ``files``, its cache under ``cache_dir``."""
    import xgboost

    def encode(file: Path, frame: pd.DataFrame) -> tuple[Any, Any]:
        try:
            data = dataset(preprocessing, frame, objective, classes, split)
        except TrainingError as exc:
            raise TrainingError(f"{file.name}: {exc.message}") from exc
        return data.matrix, data.labels

    iterator = _iterator_class()(
        files,
        encode,
        feature_names=list(preprocessing.outputs),
        cache_prefix=str(cache_dir / split),
        batch_rows=batch_rows,
    )
    try:
        return xgboost.ExtMemQuantileDMatrix(iterator, ref=ref, nthread=nthread)
    except xgboost.core.XGBoostError as exc:
        raise TrainingError(f"{split}: xgboost: {exc}".splitlines()[0]) from exc


def streamed_predictions(
    booster: xgboost.Booster,
    files: Sequence[Path],
    preprocessing: Preprocessing,
    *,
    objective: str,
    classes: Sequence[Any] | None,
    split: str,
    batch_rows: int = BATCH_ROWS,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], int]:
    """Encoded labels and booster outputs of every row of ``files``, batch by batch."""
    from mlwp.training.core import predict_raw

    labels: list[np.ndarray[Any, Any]] = []
    outputs: list[np.ndarray[Any, Any]] = []
    rows = 0
    for file, frame in frames(files, batch_rows=batch_rows):
        try:
            data = dataset(preprocessing, frame, objective, classes, split)
        except TrainingError as exc:
            raise TrainingError(f"{file.name}: {exc.message}") from exc
        labels.append(data.labels.astype(np.float32))
        outputs.append(predict_raw(booster, data.matrix).astype(np.float32))
        rows += len(frame)
    if not labels:
        return np.empty(0), np.empty(0), 0
    return np.concatenate(labels), np.concatenate(outputs), rows


@contextmanager
def cache_folder(path: Path) -> Iterator[Path]:
    """A fresh folder for XGBoost's page cache, removed when the block ends (even on error)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
