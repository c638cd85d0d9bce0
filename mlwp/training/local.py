"""The local training backend: the SageMaker entry point in a subprocess.

The subprocess gets the same environment contract as a SageMaker training container, with
every ``SM_*`` variable pointed into a working directory::

    <workdir>/input/config/hyperparameters.json
    <workdir>/input/data/{train,validation,test}/data.parquet (+ train/preprocessing.json)
                                 (or part-<n>.parquet: a split left in storage, StoredSplit)
    <workdir>/model/            SM_MODEL_DIR
    <workdir>/output/data/      SM_OUTPUT_DATA_DIR (metrics.json)
    <workdir>/output/failure    written by the entry point when it fails

A split is a DataFrame (written as one file) or a :class:`StoredSplit`: a dataset left in
storage whose files are copied into the channel one by one, each checked against the
dataset's manifest, so training with external memory never holds a split in this process.
The channels are removed when the entry point has finished (they are copies).

Its output is streamed line by line to a callback (the Airflow task log); when it fails, the
raised :class:`~mlwp.training.core.TrainingError` carries the tail of its stderr.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mlwp.model import PREPROCESSING_FILE
from mlwp.training.core import TrainingError
from mlwp.training.metrics import parse_metric_lines

if TYPE_CHECKING:
    import pandas as pd

    from mlwp.data.storage import Storage
    from mlwp.model.preprocessing import Preprocessing

log = logging.getLogger("mlwp.training")
STDERR_TAIL_LINES = 40
ENTRY_MODULE = "mlwp.training.entrypoint"
# Rows of a stored split that the MLflow run sees (input example, plots, drift baseline).
SAMPLE_ROWS = 100_000


@dataclass(frozen=True)
class StoredSplit:
    """A split left in storage (single-file or partitioned), never read whole here."""

    storage: Storage
    uri: str

    def stage(self, channel: Path) -> None:
        """Copy the split's files into ``channel`` as part-<n>.parquet, verifying each."""
        from mlwp.data.partitions import HASH_BLOCK, partition_uri, partitions_of
        from mlwp.data.storage import DatasetIntegrityError

        for index, partition in enumerate(partitions_of(self.storage, self.uri)):
            uri = partition_uri(self.uri, partition)
            fs, path = self.storage._fs(uri)
            digest = hashlib.sha256()
            with (
                fs.open(path, "rb") as source,
                (channel / f"part-{index}.parquet").open("wb") as target,
            ):
                while block := source.read(HASH_BLOCK):
                    digest.update(block)
                    target.write(block)
            if digest.hexdigest() != partition.sha256:
                raise DatasetIntegrityError(
                    f"{uri} is corrupt or was modified: its sha256 is {digest.hexdigest()}, "
                    f"the dataset's manifest says {partition.sha256}"
                )

    def sample(self, rows: int = SAMPLE_ROWS) -> pd.DataFrame:
        """A seeded uniform sample of about ``rows`` rows, read one batch at a time."""
        from mlwp.data.partitions import PartitionedReader
        from mlwp.data.transform_partitions import seeded_sample

        return seeded_sample(PartitionedReader(self.storage, self.uri), rows)


@dataclass
class LocalTrainingResult:
    """Where the trained model landed and what the entry point reported."""

    workdir: Path
    model_dir: Path
    metrics: dict[str, float]
    stdout: str


def encode_hyperparameters(hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """Encode every value as a JSON string, exactly as SageMaker passes them."""
    return {str(k): json.dumps(v) for k, v in hyperparameters.items() if v is not None}


def prepare_workdir(
    workdir: Path,
    splits: Mapping[str, pd.DataFrame | StoredSplit],
    preprocessing: Preprocessing | None,
    hyperparameters: Mapping[str, Any],
) -> dict[str, str]:
    """Write channels and hyperparameters; return the SM_* environment for the entry point."""
    if "train" not in splits:
        raise TrainingError("local training needs a 'train' split")
    config_dir = workdir / "input" / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "hyperparameters.json").write_text(
        json.dumps(encode_hyperparameters(hyperparameters), indent=2)
    )
    environ = {
        "SM_INPUT_CONFIG_DIR": str(config_dir),
        "SM_MODEL_DIR": str(workdir / "model"),
        "SM_OUTPUT_DATA_DIR": str(workdir / "output" / "data"),
        "SM_OUTPUT_DIR": str(workdir / "output"),
    }
    for name, split in splits.items():
        channel = workdir / "input" / "data" / name
        channel.mkdir(parents=True, exist_ok=True)
        if isinstance(split, StoredSplit):
            split.stage(channel)
        else:
            split.to_parquet(channel / "data.parquet", index=False)
        environ[f"SM_CHANNEL_{name.upper()}"] = str(channel)
    if preprocessing is not None:
        channel = workdir / "input" / "data" / "train" / PREPROCESSING_FILE
        channel.write_bytes(preprocessing.to_json())
    return environ


def run_entrypoint(
    environ: Mapping[str, str],
    *,
    on_line: Callable[[str], None] | None = None,
    timeout: float | None = None,
    python: str = sys.executable,
) -> str:
    """Run the entry point in a subprocess with ``environ`` added; returns its stdout."""
    emit = on_line or log.info
    env = {**os.environ, **environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [python, "-m", ENTRY_MODULE],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    stdout: list[str] = []
    stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)

    def pump(stream: IO[str], sink: Callable[[str], None]) -> None:
        for line in stream:
            sink(line.rstrip("\n"))

    def out(line: str) -> None:
        stdout.append(line)
        emit(line)

    def err(line: str) -> None:
        stderr_tail.append(line)
        emit(line)

    if proc.stdout is None or proc.stderr is None:  # pragma: no cover - PIPE was requested
        raise TrainingError("training subprocess has no output pipes")
    threads = [
        threading.Thread(target=pump, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, err), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise TrainingError(
            f"training subprocess did not finish within {timeout} s and was killed; "
            "stderr tail:\n" + "\n".join(stderr_tail),
            code="training_timeout",
        ) from None
    for thread in threads:
        thread.join(timeout=10)
    if code != 0:
        failure = Path(environ.get("SM_OUTPUT_DIR", "")) / "failure"
        reason = failure.read_text() if environ.get("SM_OUTPUT_DIR") and failure.is_file() else ""
        raise TrainingError(
            f"training subprocess exited with code {code}"
            + (f": {reason}" if reason else "")
            + "\nstderr tail:\n"
            + "\n".join(stderr_tail),
            code="training_failed",
        )
    return "\n".join(stdout)


def train_local(
    splits: Mapping[str, pd.DataFrame | StoredSplit],
    preprocessing: Preprocessing | None,
    hyperparameters: Mapping[str, Any],
    *,
    workdir: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    timeout: float | None = None,
) -> LocalTrainingResult:
    """Train with the entry point in a subprocess; the model lands in ``<workdir>/model``."""
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="mlwp-train-"))
    try:
        environ = prepare_workdir(root, splits, preprocessing, hyperparameters)
        stdout = run_entrypoint(environ, on_line=on_line, timeout=timeout)
    finally:
        # copies of the splits; a stored split's may be as large as the dataset
        shutil.rmtree(root / "input" / "data", ignore_errors=True)
    return LocalTrainingResult(root, root / "model", parse_metric_lines(stdout), stdout)
